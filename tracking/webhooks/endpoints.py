"""Subscriptions: creating, reading, enabling and disabling webhook endpoints."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.errors import NotFound, ValidationFailed
from emailsvc.selectors import one_or_none
from tracking.models import WebhookDelivery, WebhookEndpoint
from tracking.queueing import webhook_send_enqueue
from tracking.webhooks.cursor import cursor_ensure
from tracking.webhooks.events import ALL_EVENTS, EVENT_TYPES
from tracking.webhooks.signing import webhook_secret_new
from tracking.webhooks.targets import webhook_url_check

logger = logging.getLogger(__name__)


def event_types_normalize(event_types: list[str]) -> list[str]:
    """The event types as stored: de-duplicated in the given order; `*` alone stands for all."""
    unknown = [t for t in event_types if t != ALL_EVENTS and t not in EVENT_TYPES]
    if unknown or not event_types:
        detail = f"event_types: unknown type {unknown[0]!r}." if unknown else "event_types: at least one is required."
        raise ValidationFailed(detail, fields={"event_types": [detail]})
    if ALL_EVENTS in event_types:
        return [ALL_EVENTS]
    return list(dict.fromkeys(event_types))


def webhook_endpoint_create(*, url: str, event_types: list[str], description: str = "") -> tuple[WebhookEndpoint, str]:
    """Subscribe `url` to status changes of `event_types`; the endpoint and its
    signing secret, which is shown this once. ValidationFailed (invalid_webhook_url,
    webhook_target_not_allowed, webhook_host_unresolvable) when the URL may not be used.
    Only changes made from now on are sent to it."""
    webhook_url_check(url)
    cursor_ensure()  # before the endpoint: the dispatcher reads every change made after it
    secret = webhook_secret_new()
    endpoint = WebhookEndpoint.objects.create(
        url=url, event_types=event_types_normalize(event_types), description=description, secret=secret
    )
    logger.info("webhook endpoint created endpoint=%s", endpoint.public_id)
    return endpoint, secret


def webhook_endpoint_get(*, endpoint_id: str) -> WebhookEndpoint:
    endpoint = one_or_none(WebhookEndpoint.objects.filter(public_id=endpoint_id))
    if endpoint is None:
        raise NotFound(f"There is no webhook {endpoint_id!r}.", code="webhook_not_found")
    return endpoint


def webhook_endpoints():
    return WebhookEndpoint.objects.all()


def endpoint_lock(endpoint_pk: int) -> WebhookEndpoint | None:
    # Every writer locks the endpoint row before its deliveries: one lock order.
    return one_or_none(WebhookEndpoint.objects.select_for_update().filter(pk=endpoint_pk))


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """Delete the subscription and its deliveries; nothing more is sent to it."""
    with transaction.atomic():
        locked = endpoint_lock(endpoint.pk)
        if locked is not None:
            locked.delete()
    logger.info("webhook endpoint deleted endpoint=%s", endpoint.public_id)


def webhook_endpoint_enable(*, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """Enable a disabled endpoint: its pending deliveries are due at once and
    new changes are sent to it again (changes made while it was disabled are not)."""
    now = timezone.now()
    with transaction.atomic():
        locked = endpoint_lock(endpoint.pk)
        if locked is None:
            raise NotFound(f"There is no webhook {endpoint.public_id!r}.", code="webhook_not_found")
        if locked.disabled_at is not None:
            WebhookEndpoint.objects.filter(pk=locked.pk).update(
                disabled_at=None, disabled_reason="", first_failure_at=None
            )
            WebhookDelivery.objects.filter(endpoint_id=locked.pk, status=WebhookDelivery.State.PENDING).update(
                next_attempt_at=now
            )
            logger.info("webhook endpoint enabled endpoint=%s", locked.public_id)
    transaction.on_commit(lambda: webhook_send_enqueue(endpoint_pk=endpoint.pk))
    endpoint.refresh_from_db()
    return endpoint


def webhook_endpoint_disable(*, endpoint: WebhookEndpoint, reason: str, now: datetime | None = None) -> bool:
    """Disable an endpoint (an operator, continuous failure, 410 Gone): nothing is
    sent to it until it is enabled. False if it was already disabled."""
    now = now or timezone.now()
    with transaction.atomic():
        disabled = WebhookEndpoint.objects.filter(pk=endpoint.pk, disabled_at__isnull=True).update(
            disabled_at=now, disabled_reason=reason[:2000]
        )
    if disabled:
        logger.warning("webhook endpoint disabled endpoint=%s reason=%s", endpoint.public_id, reason)
    return bool(disabled)


def failing_endpoints_disable(*, now: datetime) -> int:
    since = now - timedelta(hours=settings.WEBHOOK_DISABLE_AFTER_HOURS)
    failing = WebhookEndpoint.objects.filter(disabled_at__isnull=True, first_failure_at__lte=since)
    return sum(
        webhook_endpoint_disable(endpoint=endpoint, reason=failing_reason(endpoint.first_failure_at), now=now)
        for endpoint in failing
    )


def failing_reason(first_failure_at: datetime) -> str:
    return (
        f"every attempt failed since {first_failure_at:%Y-%m-%d %H:%M:%S} UTC "
        f"(WEBHOOK_DISABLE_AFTER_HOURS={settings.WEBHOOK_DISABLE_AFTER_HOURS:g})"
    )
