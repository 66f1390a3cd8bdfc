"""Scheduling, cancelling and sweeping (SPEC §5.4, §5.5).

A scheduled message is claimable once its `send_at` has come: a delivery task
published with that ETA takes it. Messages due within SCHEDULED_HORIZON_SECONDS
get their task when they are accepted; later ones when `scheduled_publish`
(beat, every SCHEDULED_RELEASE_INTERVAL_SECONDS) sees them come within the
horizon — no per-second polling, and the task fires on time.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from core.errors import Conflict, NotFound
from core.redisclient import redis_client
from core.sql import index_lookups
from emailsvc import status
from emailsvc.delivery import journal
from emailsvc.delivery.chunks import SendOutcome
from emailsvc.delivery.queueing import deliveries_enqueue, delivery_queue_depths
from emailsvc.delivery.recording import journal_read, outcomes_record
from emailsvc.models import (
    PENDING_STATUSES,
    IdempotencyKey,
    Message,
    Priority,
    Recipient,
    WorkState,
)
from emailsvc.selectors import one_or_none

logger = logging.getLogger(__name__)

PUBLISHED_UNTIL_KEY = "emailsvc:scheduled:published-until"


def scheduled_publish() -> int:
    """Publish ETA delivery tasks for scheduled messages coming due within the
    horizon and not covered by an earlier run; how many messages they cover.

    Beat runs this every SCHEDULED_RELEASE_INTERVAL_SECONDS. Messages accepted
    inside the horizon already got their task (`message_submit`); a task
    published twice is harmless (the claim lets one of them send).
    """
    now = timezone.now()
    horizon = now + timedelta(seconds=settings.SCHEDULED_HORIZON_SECONDS)
    client = redis_client()
    raw = client.get(PUBLISHED_UNTIL_KEY)
    published_until = max(now, datetime.fromtimestamp(float(raw), tz=UTC)) if raw else now
    due = (
        Message.objects.filter(state=WorkState.SCHEDULED, next_attempt_at__gt=published_until, next_attempt_at__lte=horizon)
        .values_list("priority", "next_attempt_at")
        .order_by("next_attempt_at")
    )
    covered = 0
    buckets: dict[tuple[str, int], list] = {}
    for priority, due_at in due.iterator(chunk_size=2000):
        buckets.setdefault((priority, int(due_at.timestamp()) + 1), []).append(due_at)
    for (priority, second), members in buckets.items():
        deliveries_enqueue(priorities=[priority] * len(members), eta=datetime.fromtimestamp(second, tz=UTC))
        covered += len(members)
    client.set(PUBLISHED_UNTIL_KEY, repr(horizon.timestamp()), ex=int(settings.SCHEDULED_HORIZON_SECONDS * 4))
    if covered:
        logger.info("published delivery tasks for %d scheduled emails", covered)
    return covered


def message_cancel(*, email_id: str) -> Message:
    """Cancel an email that is scheduled or still queued (not claimed by a worker).

    Raises NotFound, or Conflict(not_cancellable) once sending began or it ended.
    """
    message = one_or_none(Message.objects.filter(email_id=email_id).only("pk"))
    if message is None:
        raise NotFound(f"No email with email_id '{email_id}'.")
    cancelled = status.message_cancel(message_id=message.pk, at=timezone.now())
    message = Message.objects.get(pk=message.pk)
    if not cancelled:
        raise Conflict(f"The email is {message.status}; only scheduled or queued emails can be cancelled.", code="not_cancellable")
    return message


@dataclass
class SweepResult:
    published: int = 0
    recovered_journal: int = 0  # recorded from the journal entry of the claim's attempt
    recovered_done: int = 0  # nothing left to send: provider events had moved every recipient on
    recovered_requeued: int = 0  # no evidence of a send: queued again (the attempt counts)
    recovered_failed: int = 0  # no evidence, and out of attempts


def messages_sweep(*, limit: int = 1000) -> SweepResult:
    """Make sure no accepted message waits forever (SPEC §5.4).

    - Due work that no task will take: a priority whose broker queue is empty
      while some of its messages have been due longer than
      SWEEP_QUEUED_AFTER_SECONDS (a lost publish, Redis restarted) gets tasks
      again. Work waiting behind a backlog is left alone: the queued tasks
      take it.
    - Claims whose process stopped beating for SWEEP_SENDING_AFTER_SECONDS
      (killed, out of memory, its machine gone): the provider's answer to that
      attempt, journaled before the process died, is recorded. Without one,
      nothing shows that attempt reached the provider: recipients that provider
      events had already moved on keep their facts, and the pending ones are
      queued again (the attempt counts; after DELIVERY_MAX_ATTEMPTS they
      fail). A recipient is never recorded `sent` without its attempt's answer.
    """
    result = SweepResult()
    now = timezone.now()
    result.published = _lost_work_publish(now)
    alive = journal.live_tokens(now=now)
    # A claim whose process never beat (or whose row was forgotten) gets the same lease from its claim time.
    unbeaten_before = now - timedelta(seconds=journal.lease_seconds())
    stale = [
        row for row in Message.objects.filter(state=WorkState.SENDING).values_list(
            "pk", "email_id", "attempts", "sending_started_at", "priority", "claimed_by"
        ).order_by("sending_started_at")[:limit]
        if row[5] not in alive and row[3] is not None and row[3] < unbeaten_before
    ]
    requeued = []
    for pk, email_id, attempts, started, priority, claimed_by in stale:
        outcome = journal_read(message_id=pk, attempt=attempts)
        with transaction.atomic():
            index_lookups()
            locked = status.messages_lock([pk]).get(pk)
            if locked is None or (locked.state, locked.attempts, locked.claimed_by) != (WorkState.SENDING, attempts, claimed_by):
                continue  # its process recorded it meanwhile
            if outcome is not None:
                outcomes_record(message_id=pk, outcome=outcome)
                result.recovered_journal += 1
                continue
            pending = list(Recipient.objects.filter(message_id=pk, status__in=PENDING_STATUSES).values_list("id", flat=True))
            if not pending:
                outcomes_record(message_id=pk, outcome=SendOutcome(reason=""))
                result.recovered_done += 1
            elif attempts >= settings.DELIVERY_MAX_ATTEMPTS:
                reason = f"the worker stopped while sending, {attempts} times"
                outcomes_record(message_id=pk, outcome=SendOutcome(failed=dict.fromkeys(pending, reason), reason=reason))
                result.recovered_failed += 1
            else:
                status.changes_apply(
                    message_ids=[pk],
                    message_fields={pk: {
                        "state": WorkState.QUEUED, "next_attempt_at": now,
                        "last_error": "the worker stopped while sending; sending again",
                    }},
                    at=now,
                )
                requeued.append(priority)
                result.recovered_requeued += 1
    if requeued:
        deliveries_enqueue(priorities=requeued)
    IdempotencyKey.objects.filter(created_at__lt=now - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)).delete()
    journal.processes_forget(now=now)
    if any(vars(result).values()):
        logger.warning("sweeper %s", " ".join(f"{k}={v}" for k, v in vars(result).items()))
    return result


def _lost_work_publish(now) -> int:
    """Publish tasks for priorities with long-due work and an empty broker queue."""
    cutoff = now - timedelta(seconds=settings.SWEEP_QUEUED_AFTER_SECONDS)
    overdue = dict(
        Message.objects.filter(state__in=[WorkState.SCHEDULED, WorkState.QUEUED], next_attempt_at__lte=cutoff)
        .values("priority").annotate(n=Count("pk")).values_list("priority", "n")
        .order_by()
    )
    if not overdue:
        return 0
    try:
        depths = delivery_queue_depths()
    except Exception:  # the broker is down: publishing would fail too; try next run
        logger.warning("sweeper could not read the broker's queue depths", exc_info=True)
        return 0
    lost = [p for p in Priority.values if overdue.get(p) and depths.get(p, 0) == 0]
    return deliveries_enqueue(priorities=[p for p in lost for _ in range(min(overdue[p], 100_000))])
