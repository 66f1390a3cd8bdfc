"""Delivering: claim, send through the provider, record the outcome (SPEC §5.2-5.4)."""

import logging
import random
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from emailsvc import providers
from emailsvc.models import (
    Message,
    Provider,
    Recipient,
    Status,
)
from emailsvc.ratelimit import rate_limit_acquire, rate_limit_from_settings
from emailsvc.redaction import redact_address
from emailsvc.selectors import suppressed_addresses
from emailsvc.status import summarize

logger = logging.getLogger(__name__)

# --- Delivering -------------------------------------------------------------


class DeliveryDeferred(Exception):
    """The message went back to `queued`; try again in `countdown` seconds."""

    def __init__(self, *, countdown: float, reason: str):
        super().__init__(reason)
        self.countdown = countdown
        self.reason = reason


def _retry_delay(attempt: int, wait_seconds: float | None) -> float:
    """Exponential backoff with full jitter, capped; or the provider's own wait."""
    if wait_seconds:
        return wait_seconds
    ceiling = min(settings.DELIVERY_RETRY_MAX_SECONDS, settings.DELIVERY_RETRY_BASE_SECONDS * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def _rate_limit_wait(message_id: int) -> None:
    """Take one token per recipient from the global limiter before claiming.

    Waits in-process up to RATE_LIMIT_MAX_WAIT_SECONDS; a longer wait raises
    DeliveryDeferred without claiming, so the task is re-scheduled and the worker
    is free meanwhile. Messages that are not queued take no tokens.
    """
    limit = rate_limit_from_settings()
    if limit.per_second <= 0:
        return
    tokens = Recipient.objects.filter(
        message_id=message_id, message__status=Status.QUEUED, status__in=[Status.QUEUED, Status.SENDING]
    ).count()
    if not tokens:
        return
    wait = rate_limit_acquire(limit=limit, tokens=tokens, max_wait=settings.RATE_LIMIT_MAX_WAIT_SECONDS)
    if wait > 0:
        now = timezone.now()
        Message.objects.filter(pk=message_id, status=Status.QUEUED).update(next_attempt_at=now + timedelta(seconds=wait))
        raise DeliveryDeferred(countdown=wait, reason="waiting for the send rate limit")


def message_deliver(*, message_id: int) -> Message | None:
    """Deliver one queued message; safe to call any number of times.

    Claims the message (queued → sending) in one guarded UPDATE so only one
    caller hands it to the provider; re-checks suppressions; sends; records
    `sent` + provider id, or `failed` + reason. Transient failures put it back
    to `queued` and raise DeliveryDeferred until DELIVERY_MAX_ATTEMPTS.
    Returns None when there was nothing to claim.
    """
    _rate_limit_wait(message_id)
    now = timezone.now()
    claimed = Message.objects.filter(pk=message_id, status=Status.QUEUED).update(
        status=Status.SENDING, sending_started_at=now, attempts=F("attempts") + 1, updated_at=now
    )
    if not claimed:
        logger.info("delivery skipped message_pk=%s: not queued (already claimed or finished)", message_id)
        return None
    message = Message.objects.get(pk=message_id)
    pending = list(message.recipients.filter(status__in=[Status.QUEUED, Status.SENDING]))
    suppressed = suppressed_addresses(addresses=[r.email for r in pending])
    if suppressed:
        for recipient in pending:
            if recipient.email in suppressed:
                Recipient.objects.filter(pk=recipient.pk, status__in=[Status.QUEUED, Status.SENDING]).update(
                    status=Status.SUPPRESSED, failed_reason=f"suppressed ({suppressed[recipient.email]})", updated_at=now
                )
    sendable = [r for r in pending if r.email not in suppressed]
    if not sendable:
        return _finish(message)

    try:
        provider_message_id = providers.provider_send(message, sendable, list(message.attachments.all()))
    except providers.TransientDeliveryError as error:
        account_stopped = isinstance(error, providers.AccountStoppedError)
        # The account, not this message, is at fault (paused, daily quota spent):
        # the message waits and the attempt is not counted, so it is never burned.
        account_wait = account_stopped or error.wait_seconds is not None
        if account_stopped:
            logger.error("ALERT provider account stopped sending: %s", error.reason)
        elif not account_wait and message.attempts >= settings.DELIVERY_MAX_ATTEMPTS:
            return _fail(message, sendable, f"gave up after {message.attempts} attempts: {error.reason}")
        countdown = settings.DELIVERY_RETRY_MAX_SECONDS if account_stopped else _retry_delay(message.attempts, error.wait_seconds)
        now = timezone.now()
        Message.objects.filter(pk=message.pk, status=Status.SENDING).update(
            status=Status.QUEUED,
            last_error=error.reason,
            updated_at=now,
            next_attempt_at=now + timedelta(seconds=countdown),
            attempts=F("attempts") - 1 if account_wait else F("attempts"),
        )
        logger.warning("delivery deferred email_id=%s attempt=%d in=%.1fs: %s", message.email_id, message.attempts, countdown, error.reason)
        raise DeliveryDeferred(countdown=countdown, reason=error.reason) from error
    except providers.PermanentDeliveryError as error:
        return _fail(message, sendable, error.reason)

    sent_at = timezone.now()
    with transaction.atomic():
        Message.objects.filter(pk=message.pk).update(provider_message_id=provider_message_id, sent_at=sent_at, last_error="")
        message.provider_message_id, message.sent_at, message.last_error = provider_message_id, sent_at, ""
        Recipient.objects.filter(pk__in=[r.pk for r in sendable]).update(
            sent_at=sent_at,
            updated_at=sent_at,
            # An event applied meanwhile may already have moved a recipient past `sent`.
            status=Case(
                When(status__in=[Status.QUEUED, Status.SENDING], then=Value(Status.SENT)), default=F("status")
            ),
        )
        message = _finish(message)
    logger.info("delivered email_id=%s provider=%s recipients=%d", message.email_id, message.provider, len(sendable))
    _early_events_link(message)
    if message.provider == Provider.SANDBOX:
        _sandbox_events_publish(message, sendable)
    return message


def _early_events_link(message: Message) -> None:
    """Events that beat this worker's commit and could not be matched by their
    tracking header are applied now that the provider id is known."""
    from tracking.services import events_relink

    if events_relink(message_id=message.pk, provider_message_id=message.provider_message_id):
        message.refresh_from_db()


def _sandbox_events_publish(message: Message, recipients: list[Recipient]) -> None:
    """Sandbox only: queue the SES events a real account would publish (SPEC §8)."""
    from tracking.sandbox import sandbox_events_publish

    try:
        sandbox_events_publish(message=message, recipients=recipients)
    except Exception:  # the send is recorded; a sandbox event failure must not undo it
        logger.warning("sandbox events not published email_id=%s", message.email_id, exc_info=True)


def _fail(message: Message, recipients: list[Recipient], reason: str) -> Message:
    now = timezone.now()
    # Guarded: events of an earlier attempt the provider did accept may have moved a recipient on.
    Recipient.objects.filter(pk__in=[r.pk for r in recipients], status__in=[Status.QUEUED, Status.SENDING]).update(
        status=Status.FAILED, failed_reason=reason, updated_at=now
    )
    Message.objects.filter(pk=message.pk).update(last_error=reason, updated_at=now)
    message.last_error = reason
    logger.warning("delivery failed email_id=%s: %s", message.email_id, redact_address(reason))
    return _finish(message)


def _finish(message: Message) -> Message:
    """Set the message status from its recipients' statuses.

    Holds the message row lock, as event_apply does, so a status derived from
    recipients is never overwritten by one derived from an older snapshot.
    """
    with transaction.atomic():
        list(Message.objects.select_for_update().filter(pk=message.pk).values_list("pk"))
        status = summarize(Recipient.objects.filter(message_id=message.pk).order_by().values_list("status", flat=True))
        message.updated_at = timezone.now()
        Message.objects.filter(pk=message.pk).update(status=status, updated_at=message.updated_at)
    message.status = status
    return message
