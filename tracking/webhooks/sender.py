"""Sending an endpoint's due deliveries one at a time, and recording each
attempt: retries after RETRY_DELAYS, an endpoint disabled after continuous failure."""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.exceptions import LockError, RedisError

from core import metrics
from core.redisclient import redis_client
from emailsvc.models import StatusChange
from emailsvc.selectors import one_or_none
from tracking.models import WebhookDelivery, WebhookEndpoint
from tracking.queueing import SEND_LOCK_PREFIX, SEND_QUEUED_PREFIX
from tracking.webhooks.endpoints import (
    endpoint_lock,
    failing_reason,
    webhook_endpoint_disable,
)
from tracking.webhooks.events import iso_timestamp, webhook_payload
from tracking.webhooks.transport import AttemptOutcome, webhook_post

logger = logging.getLogger(__name__)

# Seconds to wait after the 1st, 2nd, … failed attempt (±20 % jitter): 11 attempts
# over about 23.7 hours, then the delivery is `failed`.
RETRY_DELAYS = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800)
RETRY_JITTER = 0.2
# A sender run stops starting new POSTs after this long; the next dispatch starts another.
SEND_MAX_SECONDS = 30
SEND_CHUNK = 50

# Attempts kept in a delivery's attempt_log (there are at most 11 before an operator re-sends).
ATTEMPT_LOG_LENGTH = 20


@dataclass
class SendResult:
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: str = ""


def webhook_deliveries_send(*, endpoint_pk: int, max_seconds: float = SEND_MAX_SECONDS) -> SendResult:
    """POST the endpoint's due deliveries, oldest due first, one at a time.

    One sender per endpoint (a Redis lock, renewed before every POST; if it was
    lost another sender may repeat one — at-least-once). Stops at the first
    failure (the rest stay due: a failing receiver gets one request per run, not
    a burst), when none is due, when the endpoint is disabled, or after
    `max_seconds`. The network call is never inside a transaction.
    """
    result = SendResult()
    try:
        client = redis_client()
        client.delete(f"{SEND_QUEUED_PREFIX}{endpoint_pk}")
        lock = client.lock(f"{SEND_LOCK_PREFIX}{endpoint_pk}", timeout=settings.WEBHOOK_TIMEOUT_SECONDS * 2 + 10)
        if not lock.acquire(blocking=False):
            result.skipped = "another sender is running for this endpoint"
            return result
    except RedisError as error:
        result.skipped = f"Redis unavailable: {error}"
        return result
    try:
        _send(endpoint_pk, time.monotonic() + max_seconds, lock, result)
    finally:
        try:
            lock.release()
        except (LockError, RedisError):
            logger.warning("webhook sender lock expired or unavailable endpoint=%s", endpoint_pk)
    return result


def webhook_next_due_seconds(*, endpoint_pk: int) -> float | None:
    """Seconds until the enabled endpoint's next pending delivery is due (0 if one
    is due now), or None when it has none."""
    if not WebhookEndpoint.objects.filter(pk=endpoint_pk, disabled_at__isnull=True).exists():
        return None
    first = (
        WebhookDelivery.objects.filter(endpoint_id=endpoint_pk, status=WebhookDelivery.State.PENDING)
        .order_by("next_attempt_at")
        .values_list("next_attempt_at", flat=True)
        .first()
    )
    return None if first is None else max((first - timezone.now()).total_seconds(), 0.0)


def _send(endpoint_pk: int, deadline: float, lock, result: SendResult) -> None:
    while time.monotonic() < deadline:
        endpoint = one_or_none(WebhookEndpoint.objects.filter(pk=endpoint_pk, disabled_at__isnull=True))
        if endpoint is None:
            return
        due = list(
            WebhookDelivery.objects.filter(
                endpoint_id=endpoint_pk, status=WebhookDelivery.State.PENDING, next_attempt_at__lte=timezone.now()
            )
            .order_by("next_attempt_at", "id")
            .values_list("id", "webhook_id", "change_id")[:SEND_CHUNK]
        )
        if not due:
            return
        changes = _changes_read([change_id for _, _, change_id in due])
        for delivery_pk, webhook_id, change_id in due:
            if time.monotonic() >= deadline:
                return
            try:
                lock.reacquire()
            except (LockError, RedisError):
                result.skipped = "sender lock lost"
                return
            if change_id not in changes:  # its message was deleted meanwhile
                continue
            body = json.dumps(webhook_payload(changes[change_id]), separators=(",", ":"))
            outcome = webhook_post(url=endpoint.url, secret=endpoint.secret, webhook_id=webhook_id, body=body)
            result.attempted += 1
            if outcome.ok:
                result.succeeded += 1
            else:
                result.failed += 1
            still_enabled = webhook_attempt_record(delivery_pk=delivery_pk, endpoint_pk=endpoint_pk, outcome=outcome)
            if not outcome.ok or not still_enabled:
                return


def _changes_read(change_ids: list[int]) -> dict[int, dict]:
    rows = StatusChange.objects.filter(id__in=change_ids).values(
        "id", "email", "from_status", "to_status", "at", "cause", "detail",
        "message__email_id", "message__group_id", "message__tags", "message__metadata",
    )
    return {
        row["id"]: {
            **row,
            "email_id": row["message__email_id"],
            "group_id": row["message__group_id"],
            "tags": row["message__tags"],
            "metadata": row["message__metadata"],
        }
        for row in rows
    }


def webhook_attempt_record(*, delivery_pk: int, endpoint_pk: int, outcome: AttemptOutcome, now: datetime | None = None) -> bool:
    """Record one attempt's outcome on the delivery and its endpoint; whether the
    endpoint is still enabled.

    2xx: succeeded, and the endpoint's failure run ends. Otherwise the next
    attempt is due after RETRY_DELAYS[attempts - 1] (±20 %), or the delivery is
    `failed` once they are used up; the endpoint's failure run starts (if it had
    not) and, once it is WEBHOOK_DISABLE_AFTER_HOURS long, the endpoint is
    disabled. 410 Gone fails the delivery and disables the endpoint at once.
    """
    now = now or timezone.now()
    with transaction.atomic():
        endpoint = endpoint_lock(endpoint_pk)
        delivery = one_or_none(WebhookDelivery.objects.select_for_update().filter(pk=delivery_pk))
        if endpoint is None or delivery is None:
            return False
        attempts = delivery.attempts + 1
        entry = {"at": iso_timestamp(now), "status_code": outcome.status_code, "error": outcome.error, "duration_ms": outcome.duration_ms}
        metrics.webhook_delivery_observed(ok=outcome.ok)
        fields = {
            "attempts": attempts,
            "last_attempt_at": now,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
            "attempt_log": [*delivery.attempt_log, entry][-ATTEMPT_LOG_LENGTH:],
        }
        if outcome.ok:
            fields.update(status=WebhookDelivery.State.SUCCEEDED, next_attempt_at=None, delivered_at=now)
        elif outcome.gone or attempts > len(RETRY_DELAYS):
            fields.update(status=WebhookDelivery.State.FAILED, next_attempt_at=None)
        else:
            fields.update(status=WebhookDelivery.State.PENDING, next_attempt_at=now + retry_delay(attempts))
        WebhookDelivery.objects.filter(pk=delivery_pk).update(**fields)
        if outcome.ok:
            if endpoint.first_failure_at is not None or endpoint.last_success_at is None or (
                endpoint.last_success_at < now - timedelta(minutes=1)
            ):
                WebhookEndpoint.objects.filter(pk=endpoint_pk).update(first_failure_at=None, last_success_at=now)
            return endpoint.disabled_at is None
        failing_since = endpoint.first_failure_at or now
        WebhookEndpoint.objects.filter(pk=endpoint_pk).update(first_failure_at=failing_since, last_failure_at=now)
    if endpoint.disabled_at is not None:
        return False
    if outcome.gone:
        return not webhook_endpoint_disable(endpoint=endpoint, reason="the endpoint answered 410 Gone", now=now)
    if failing_since <= now - timedelta(hours=settings.WEBHOOK_DISABLE_AFTER_HOURS):
        return not webhook_endpoint_disable(endpoint=endpoint, reason=failing_reason(failing_since), now=now)
    return True


def retry_delay(attempts: int) -> timedelta:
    """How long after the `attempts`-th failed attempt the next one is due."""
    base = RETRY_DELAYS[min(attempts, len(RETRY_DELAYS)) - 1]
    return timedelta(seconds=base * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER))
