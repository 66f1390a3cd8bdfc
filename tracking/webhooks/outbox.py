"""The outbox: StatusChange rows become one WebhookDelivery per subscribed
endpoint, exactly once, and the endpoints with deliveries due are named."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core.sql import index_lookups
from emailsvc.models import StatusChange
from emailsvc.selectors import one_or_none
from tracking.models import WebhookDelivery, WebhookEndpoint, WebhookOutboxCursor
from tracking.webhooks.cursor import CURSOR_NAME, cursor_ensure, cursor_skip_ahead
from tracking.webhooks.endpoints import failing_endpoints_disable
from tracking.webhooks.events import change_statuses

logger = logging.getLogger(__name__)

DISPATCH_BATCH = 1000
DISPATCH_MAX_BATCHES = 10

MAX_GAP_RANGES = 10_000


@dataclass
class DispatchResult:
    read: int = 0  # status changes read after the cursor
    late: int = 0  # status changes found in earlier gaps (committed out of id order)
    deliveries: int = 0  # deliveries created
    gaps: int = 0  # id ranges still looked for
    disabled: int = 0  # endpoints disabled for continuous failure
    due_endpoints: list[int] = field(default_factory=list)
    skipped: str = ""


def webhooks_dispatch(*, now: datetime | None = None, batch: int = DISPATCH_BATCH) -> DispatchResult:
    """Turn new StatusChange rows into WebhookDelivery rows and say which endpoints
    have deliveries due.

    One dispatcher at a time (a row lock on the cursor; a second one skips). Each
    batch of up to `batch` changes is read and fanned out in one transaction with
    the cursor's move: a change gets its deliveries exactly once. Also disables
    endpoints that have failed for WEBHOOK_DISABLE_AFTER_HOURS.
    """
    result = DispatchResult()
    result.disabled = failing_endpoints_disable(now=now or timezone.now())
    cursor_ensure()
    if not WebhookEndpoint.objects.filter(disabled_at__isnull=True).exists():
        cursor_skip_ahead()
        return result
    for _ in range(DISPATCH_MAX_BATCHES):
        if not _fan_out_batch(result, batch=batch, now=time.time()):
            break
    if not result.skipped:
        result.due_endpoints = webhook_endpoints_due(now=now or timezone.now())
    return result


def webhook_endpoints_due(*, now: datetime) -> list[int]:
    """Enabled endpoints with a pending delivery whose time has come: one index
    probe per endpoint (a disabled one may keep many pending deliveries)."""
    enabled = WebhookEndpoint.objects.filter(disabled_at__isnull=True).order_by("id").values_list("id", flat=True)
    return [
        endpoint_pk
        for endpoint_pk in enabled
        if WebhookDelivery.objects.filter(
            endpoint_id=endpoint_pk, status=WebhookDelivery.State.PENDING, next_attempt_at__lte=now
        ).exists()
    ]


def _fan_out_batch(result: DispatchResult, *, batch: int, now: float) -> bool:
    """One batch; True if more changes may be waiting."""
    # A look first, without a transaction: most runs find nothing new (and on
    # SQLite a transaction takes the database's write lock).
    seen = one_or_none(WebhookOutboxCursor.objects.filter(name=CURSOR_NAME))
    if seen is None or (not seen.gaps and not StatusChange.objects.filter(id__gt=seen.last_change_id).exists()):
        return False
    with transaction.atomic():
        index_lookups()
        cursor = one_or_none(WebhookOutboxCursor.objects.select_for_update(skip_locked=True).filter(name=CURSOR_NAME))
        if cursor is None:
            result.skipped = "another dispatcher is running"
            return False
        endpoints = list(WebhookEndpoint.objects.filter(disabled_at__isnull=True).only("id", "event_types", "created_at"))
        columns = ("id", "from_status", "to_status", "at")
        gaps = [list(gap) for gap in cursor.gaps if now - gap[2] <= settings.WEBHOOK_OUTBOX_GAP_SECONDS]
        late = []
        if gaps:
            in_gaps = Q()
            for first, last, _seen in gaps[:500]:
                in_gaps |= Q(id__gte=first, id__lte=last)
            late = list(StatusChange.objects.filter(in_gaps).order_by("id").values_list(*columns)[:batch])
            gaps = _gaps_without(gaps, [row[0] for row in late])
        fresh = list(
            StatusChange.objects.filter(id__gt=cursor.last_change_id).order_by("id").values_list(*columns)[:batch]
        )
        expected = cursor.last_change_id + 1
        for change_id, *_ in fresh:
            if change_id > expected:
                gaps.append([expected, change_id - 1, now])
            expected = change_id + 1
        if fresh:
            cursor.last_change_id = fresh[-1][0]
        cursor.gaps = gaps[-MAX_GAP_RANGES:]
        due = timezone.now()
        deliveries = [
            WebhookDelivery(endpoint_id=endpoint.id, change_id=change_id, event_type=to_status, next_attempt_at=due)
            for change_id, from_status, to_status, at in late + fresh
            for statuses in [change_statuses(from_status, to_status)]
            for endpoint in endpoints
            if endpoint.wants(statuses) and at >= endpoint.created_at
        ]
        if deliveries:
            WebhookDelivery.objects.bulk_create(deliveries, ignore_conflicts=True, batch_size=500)
        cursor.save(update_fields=["last_change_id", "gaps", "updated_at"])
    result.read += len(fresh)
    result.late += len(late)
    result.deliveries += len(deliveries)
    result.gaps = len(cursor.gaps)
    if late or fresh:
        logger.info(
            "webhooks dispatched changes=%d late=%d deliveries=%d gaps=%d", len(fresh), len(late), len(deliveries), result.gaps
        )
    return len(fresh) == batch


def _gaps_without(gaps: list[list], found: list[int]) -> list[list]:
    """The gap ranges with the ids that were found taken out (a range may split)."""
    for change_id in found:
        for index, (first, last, seen) in enumerate(gaps):
            if first <= change_id <= last:
                parts = [[first, change_id - 1, seen]] if first < change_id else []
                parts += [[change_id + 1, last, seen]] if change_id < last else []
                gaps[index : index + 1] = parts
                break
    return gaps
