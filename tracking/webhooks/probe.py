"""A test event sent to an endpoint now, on request, signed as real events are."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from django.utils import timezone

from tracking.models import WebhookEndpoint, new_webhook_id
from tracking.webhooks.events import iso_timestamp
from tracking.webhooks.transport import AttemptOutcome, webhook_post

logger = logging.getLogger(__name__)

TEST_EVENT_TYPE = "webhook.test"


@dataclass
class WebhookTestSent:
    """A test event and the receiver's answer to it."""

    webhook_id: str
    event: dict
    outcome: AttemptOutcome


def webhook_test_event(*, endpoint: WebhookEndpoint) -> dict:
    """The JSON event of a test: about no email, so receivers can tell it apart by its type."""
    at = iso_timestamp(timezone.now())
    return {
        "type": TEST_EVENT_TYPE,
        "timestamp": at,
        "data": {
            "webhook": endpoint.public_id,
            "at": at,
            "detail": "A test event, sent on request; it is about no email.",
        },
    }


def webhook_test_send(*, endpoint: WebhookEndpoint) -> WebhookTestSent:
    """POST a signed `webhook.test` event to the endpoint now (enabled or not), with
    a fresh `webhook-id`, and return what the receiver answered. The target is
    checked as before every delivery. Nothing is recorded: the endpoint's failure
    run and its deliveries stay as they were."""
    webhook_id = new_webhook_id()
    event = webhook_test_event(endpoint=endpoint)
    body = json.dumps(event, separators=(",", ":"))
    outcome = webhook_post(url=endpoint.url, secret=endpoint.secret, webhook_id=webhook_id, body=body)
    logger.info(
        "webhook test event sent endpoint=%s ok=%s status_code=%s duration_ms=%s",
        endpoint.public_id, outcome.ok, outcome.status_code, outcome.duration_ms,
    )
    return WebhookTestSent(webhook_id=webhook_id, event=event, outcome=outcome)
