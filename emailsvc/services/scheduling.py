"""Scheduling, cancelling and sweeping (SPEC §5.4, §5.5)."""

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from emailsvc.errors import Conflict, NotFound
from emailsvc.models import (
    PRECEDENCE,
    IdempotencyKey,
    Message,
    Recipient,
    Status,
)
from emailsvc.services.delivery import _finish
from emailsvc.services.submission import messages_enqueue

logger = logging.getLogger(__name__)

# --- Scheduling, cancelling, sweeping -----------------------------------------------

SEND_EVIDENCE_STATUSES = [status for status, rank in PRECEDENCE.items() if rank >= PRECEDENCE[Status.SENT]]


def scheduled_release(*, limit: int = 1000) -> int:
    """Move scheduled messages whose `send_at` has come to `queued` and enqueue them.

    Beat runs this every SCHEDULED_RELEASE_INTERVAL_SECONDS. The guarded UPDATE
    (status still `scheduled`) makes a concurrent cancel and a second release
    harmless. Returns how many were released.
    """
    now = timezone.now()
    due = list(
        Message.objects.filter(status=Status.SCHEDULED, send_at__lte=now)
        .order_by("send_at")
        .values_list("pk", "priority")[:limit]
    )
    released = []
    with transaction.atomic():
        for pk, priority in due:
            if Message.objects.filter(pk=pk, status=Status.SCHEDULED).update(
                status=Status.QUEUED, queued_at=now, next_attempt_at=now, updated_at=now
            ):
                Recipient.objects.filter(message_id=pk, status=Status.SCHEDULED).update(status=Status.QUEUED, updated_at=now)
                released.append((pk, priority))
        if released:
            transaction.on_commit(lambda: messages_enqueue(messages=released))
    if released:
        logger.info("released %d scheduled emails", len(released))
    return len(released)


def message_cancel(*, email_id: str) -> Message:
    """Cancel an email that is scheduled or still queued (not yet claimed by a worker).

    Raises NotFound, or Conflict(not_cancellable) once sending began or it ended.
    """
    message = Message.objects.filter(email_id=email_id).only("pk", "status").first()
    if message is None:
        raise NotFound(f"No email with email_id '{email_id}'.")
    now = timezone.now()
    with transaction.atomic():
        cancelled = Message.objects.filter(pk=message.pk, status__in=[Status.SCHEDULED, Status.QUEUED]).update(
            status=Status.CANCELLED, next_attempt_at=None, updated_at=now
        )
        if cancelled:
            Recipient.objects.filter(message_id=message.pk, status__in=[Status.SCHEDULED, Status.QUEUED]).update(
                status=Status.CANCELLED, updated_at=now
            )
    message = Message.objects.get(pk=message.pk)
    if not cancelled:
        raise Conflict(f"The email is {message.status}; only scheduled or queued emails can be cancelled.", code="not_cancellable")
    return message


@dataclass
class SweepResult:
    requeued: int = 0
    recovered_sent: int = 0
    recovered_requeued: int = 0


def messages_sweep(*, limit: int = 1000) -> SweepResult:
    """Make sure no accepted message waits forever (SPEC §5.4).

    - `queued` longer than SWEEP_QUEUED_AFTER_SECONDS past its due time (its
      enqueue after commit, or a retry's re-publish, was lost, or Redis lost its
      data): enqueue it again. A task that does still exist is harmless: the
      claim lets only one of them send.
    - `sending` longer than SWEEP_SENDING_AFTER_SECONDS: the worker died between
      claiming and recording. If provider events show the provider accepted it
      (a Send/Delivery event matched through X-Emailsvc-Tracking-ID), it is
      recorded as sent; otherwise it goes back to `queued` and is sent again.
      That is the one window where a message can reach a recipient twice: the
      provider accepted it, the worker died before recording it, and no event
      arrived within SWEEP_SENDING_AFTER_SECONDS (SMTP has no events).
    """
    from tracking.selectors import provider_message_id_from_events

    result = SweepResult()
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.SWEEP_QUEUED_AFTER_SECONDS)
    stale_queued = list(
        Message.objects.filter(status=Status.QUEUED)
        # A row from before next_attempt_at existed (NULL) is due since it was queued.
        .filter(Q(next_attempt_at__lt=cutoff) | Q(next_attempt_at__isnull=True, created_at__lt=cutoff))
        .values_list("pk", "priority", "next_attempt_at")[:limit]
    )
    requeue = []
    for pk, priority, due in stale_queued:
        # Guarded on the value read, so two sweepers do not both enqueue it.
        if Message.objects.filter(pk=pk, status=Status.QUEUED, next_attempt_at=due).update(next_attempt_at=now):
            requeue.append((pk, priority))
    result.requeued = len(requeue)

    stale_sending = Message.objects.filter(
        status=Status.SENDING, sending_started_at__lt=now - timedelta(seconds=settings.SWEEP_SENDING_AFTER_SECONDS)
    ).values_list("pk", "priority", "sending_started_at")[:limit]
    for pk, priority, started in list(stale_sending):
        accepted = Recipient.objects.filter(message_id=pk, status__in=SEND_EVIDENCE_STATUSES).exists()
        with transaction.atomic():
            if accepted:
                provider_message_id = provider_message_id_from_events(message_id=pk)
                if not Message.objects.filter(pk=pk, status=Status.SENDING, sending_started_at=started).update(
                    provider_message_id=provider_message_id, sent_at=started, last_error="", updated_at=now
                ):
                    continue
                Recipient.objects.filter(message_id=pk, status__in=[Status.QUEUED, Status.SENDING]).update(
                    status=Status.SENT, sent_at=started, updated_at=now
                )
                _finish(Message.objects.get(pk=pk))
                result.recovered_sent += 1
            elif Message.objects.filter(pk=pk, status=Status.SENDING, sending_started_at=started).update(
                status=Status.QUEUED, next_attempt_at=now, updated_at=now,
                last_error="the worker stopped while sending; sending again",
            ):
                requeue.append((pk, priority))
                result.recovered_requeued += 1
    if requeue:
        messages_enqueue(messages=requeue)
    IdempotencyKey.objects.filter(created_at__lt=now - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)).delete()
    if result.requeued or result.recovered_sent or result.recovered_requeued:
        logger.warning(
            "sweeper requeued=%d recovered_sent=%d recovered_requeued=%d",
            result.requeued, result.recovered_sent, result.recovered_requeued,
        )
    return result
