"""Deliveries as the API and the admin show them, and the operator's re-send."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from core.errors import Conflict, NotFound
from emailsvc.selectors import one_or_none
from tracking.models import WebhookDelivery, WebhookEndpoint
from tracking.queueing import webhook_send_enqueue
from tracking.webhooks.endpoints import endpoint_lock

logger = logging.getLogger(__name__)


def _deliveries_shown():
    """Deliveries with what the API shows of their change: the address and email id, no message bodies."""
    own = [f.name for f in WebhookDelivery._meta.concrete_fields if f.name not in ("endpoint", "change")]
    return WebhookDelivery.objects.select_related("endpoint", "change", "change__message").only(
        *own, "endpoint__public_id", "change__email", "change__message__email_id"
    )


def webhook_deliveries(*, endpoint: WebhookEndpoint, status: str | None = None):
    """The endpoint's deliveries (optionally of one state); the caller orders and pages them."""
    rows = _deliveries_shown().filter(endpoint=endpoint)
    return rows.filter(status=status) if status else rows


def webhook_delivery_get(*, delivery_id: str) -> WebhookDelivery:
    delivery = one_or_none(_deliveries_shown().filter(webhook_id=delivery_id))
    if delivery is None:
        raise NotFound(f"There is no webhook delivery {delivery_id!r}.", code="webhook_delivery_not_found")
    return delivery


def webhook_delivery_resend(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery again now, whatever its state, with the same `webhook-id`
    (an operator's re-send). Conflict(webhook_disabled) while its endpoint is disabled."""
    with transaction.atomic():
        endpoint = endpoint_lock(delivery.endpoint_id)
        if endpoint is None:
            raise NotFound(f"There is no webhook delivery {delivery.webhook_id!r}.", code="webhook_delivery_not_found")
        if endpoint.disabled_at is not None:
            raise Conflict(
                f"The webhook {endpoint.public_id} is disabled; enable it first "
                f"(POST /api/v1/webhooks/{endpoint.public_id}/enable).",
                code="webhook_disabled",
            )
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.State.PENDING, next_attempt_at=timezone.now()
        )
    transaction.on_commit(lambda: webhook_send_enqueue(endpoint_pk=delivery.endpoint_id))
    logger.info("webhook delivery re-sent by an operator delivery=%s", delivery.webhook_id)
    return webhook_delivery_get(delivery_id=delivery.webhook_id)
