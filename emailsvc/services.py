"""State changes of the sending side: submit, deliver, suppress, API keys.

Every business action is one function here; views, tasks, admin actions and
management commands call these and nothing else writes these tables.
"""

import hashlib
import hmac
import json
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import formataddr

from django.conf import settings
from django.db import DataError, IntegrityError, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from emailsvc import providers
from emailsvc.errors import Conflict, EmailsvcError, NotFound, PayloadTooLarge, ValidationFailed
from emailsvc.models import (
    PRECEDENCE,
    ApiKey,
    Attachment,
    Group,
    IdempotencyKey,
    Message,
    Provider,
    Recipient,
    Status,
    Suppression,
)
from emailsvc.policy import check_sender_policy
from emailsvc.ratelimit import rate_limit_acquire, rate_limit_from_settings
from emailsvc.redaction import redact_address
from emailsvc.selectors import suppressed_addresses
from emailsvc.status import summarize

logger = logging.getLogger(__name__)

API_KEY_PREFIX = "es"


# --- API keys ---------------------------------------------------------------


def _hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_create(
    *, name: str, permission: str = ApiKey.Permission.SENDING, expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create a key; return it with its secret, which is never retrievable again."""
    if permission not in ApiKey.Permission.values:
        raise ValueError(f"permission must be one of {', '.join(ApiKey.Permission.values)}")
    prefix = secrets.token_hex(4)
    raw_key = f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        name=name, prefix=prefix, secret_hash=_hash_key(raw_key), permission=permission, expires_at=expires_at
    )
    return api_key, raw_key


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The active key matching `raw_key`, or None. Compares hashes in constant time."""
    parts = raw_key.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX:
        return None
    api_key = ApiKey.objects.filter(prefix=parts[1]).first()
    if api_key is None or not hmac.compare_digest(api_key.secret_hash, _hash_key(raw_key)):
        return None
    now = timezone.now()
    if api_key.revoked_at is not None or (api_key.expires_at is not None and api_key.expires_at <= now):
        return None
    # Record use at most once a minute per key: no write on every request.
    if api_key.last_used_at is None or api_key.last_used_at < now - timedelta(minutes=1):
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key


# --- Suppressions -----------------------------------------------------------


def suppression_add(
    *,
    email: str,
    reason: str,
    source: str = "",
    note: str = "",
    expires_at: datetime | None = None,
    keep_existing: bool = False,
) -> Suppression:
    """Suppress an address (idempotent: an existing entry is updated).

    With keep_existing (automatic suppressions from events) an active entry is
    left exactly as it is, so support's reason and note are never overwritten.
    """
    address = email.strip().lower()
    defaults = {"reason": reason, "source": source, "note": note, "expires_at": expires_at}
    if keep_existing:
        suppression, created = Suppression.objects.get_or_create(email=address, defaults=defaults)
        if not created and suppression.expires_at is not None and suppression.expires_at <= timezone.now():
            Suppression.objects.filter(pk=suppression.pk).update(**defaults, created_at=timezone.now())
            suppression.refresh_from_db()
        return suppression
    suppression, _ = Suppression.objects.update_or_create(email=address, defaults=defaults)
    return suppression


def suppression_lift(*, email: str) -> bool:
    """Remove a suppression; True if there was one."""
    deleted, _ = Suppression.objects.filter(email=email.strip().lower()).delete()
    return bool(deleted)


# --- Submitting -------------------------------------------------------------


def _estimated_size(data: dict) -> int:
    """An upper bound of the MIME size: base64 grows bytes by 4/3 plus line breaks."""
    body = len((data.get("html") or "").encode()) + len((data.get("text") or "").encode())
    attachments = sum(len(a["content"]) for a in data.get("attachments", []))
    return int(body * 3.1 + attachments * 1.4) + 16 * 1024


@dataclass
class _Submission:
    """One checked send request, ready to store."""

    message: Message
    recipients: list[Recipient]
    attachments: list[Attachment]


def _submission_build(*, api_key: ApiKey | None, data: dict, now: datetime) -> _Submission:
    """Apply policy and size limits and build the unsaved rows of one request."""
    from_name, from_email = data.get("from") or ("", settings.DEFAULT_FROM_EMAIL.lower())
    from_name = data.get("from_name", from_name or settings.DEFAULT_FROM_NAME)
    reply_to = data.get("reply_to", [])
    recipients_by_role = {role: data.get(role, []) for role in Recipient.Role.values}
    check_sender_policy(
        from_email=from_email,
        reply_to=[address for _, address in reply_to],
        recipients={role: [address for _, address in pairs] for role, pairs in recipients_by_role.items() if pairs},
    )
    send_at = data.get("send_at")
    scheduled = send_at is not None and send_at > now
    message = Message(
        from_email=from_email,
        from_name=from_name,
        reply_to=[formataddr(pair) for pair in reply_to],
        subject=data["subject"],
        html=data.get("html", ""),
        text=data.get("text", ""),
        headers=data.get("headers", {}),
        tags=data.get("tags", []),
        metadata=data.get("metadata", {}),
        priority=data.get("priority", "normal"),
        provider=settings.EMAIL_PROVIDER,
        api_key=api_key,
        send_at=send_at,
        next_attempt_at=send_at if scheduled else now,
        status=Status.SCHEDULED if scheduled else Status.QUEUED,
    )
    message.group_id = data.get("group_id") or None
    if data.get("email_id"):
        message.email_id = data["email_id"]
    attachments = [
        Attachment(filename=a["filename"], content_type=a["content_type"], content=a["content"], size=len(a["content"]))
        for a in data.get("attachments", [])
    ]
    recipients, seen = [], set()
    for role, pairs in recipients_by_role.items():
        for name, address in pairs:
            if address not in seen:  # an address listed twice receives one copy
                seen.add(address)
                recipients.append(Recipient(email=address, name=name, role=role, status=message.status))
    _check_size(message, recipients, attachments, data)
    return _Submission(message=message, recipients=recipients, attachments=attachments)


def _submissions_store(submissions: list[_Submission], *, now: datetime) -> None:
    """Store submissions in bulk, in the caller's transaction: a few queries in all,
    whatever their number. Enqueues the queued ones after commit."""
    group_ids = {s.message.group_id for s in submissions if s.message.group_id}
    if group_ids:
        Group.objects.bulk_create([Group(id=group_id) for group_id in group_ids], ignore_conflicts=True)
    suppressed = suppressed_addresses(addresses=list({r.email for s in submissions for r in s.recipients}))
    for submission in submissions:
        for recipient in submission.recipients:
            if recipient.email in suppressed:
                recipient.status = Status.SUPPRESSED
                recipient.failed_reason = f"suppressed ({suppressed[recipient.email]})"
        message = submission.message
        message.status = summarize(r.status for r in submission.recipients)
        if message.status == Status.QUEUED:
            message.queued_at = now
    Message.objects.bulk_create([s.message for s in submissions])
    rows: list[Recipient | Attachment] = []
    for submission in submissions:
        for row in submission.recipients + submission.attachments:
            row.message = submission.message
            rows.append(row)
    Recipient.objects.bulk_create([row for row in rows if isinstance(row, Recipient)])
    Attachment.objects.bulk_create([row for row in rows if isinstance(row, Attachment)])
    queued = [(s.message.pk, s.message.priority) for s in submissions if s.message.status == Status.QUEUED]
    if queued:
        transaction.on_commit(lambda: messages_enqueue(messages=queued))


def _unstorable() -> ValidationFailed:
    return ValidationFailed("A value is too long or holds characters that cannot be stored.", code="invalid_field")


def _duplicate_email_id(email_id: str) -> Conflict:
    return Conflict(f"An email with email_id '{email_id}' already exists.", code="duplicate_email_id")


def message_submit(*, api_key: ApiKey | None, data: dict) -> Message:
    """Store a validated send request and enqueue its delivery after commit.

    `data` is SendEmailInputSerializer.validated_data. Applies the domain policy
    and the size limit; suppressed recipients are marked `suppressed` at once; a
    future `send_at` makes it `scheduled` (released by beat). Raises
    PolicyViolation, PayloadTooLarge, Conflict(duplicate_email_id).
    Never talks to the provider.
    """
    now = timezone.now()
    submission = _submission_build(api_key=api_key, data=data, now=now)
    try:
        with transaction.atomic():
            _submissions_store([submission], now=now)
    except IntegrityError:
        if Message.objects.filter(email_id=submission.message.email_id).exists():
            raise _duplicate_email_id(submission.message.email_id) from None
        raise
    except DataError:
        raise _unstorable() from None
    submission.message.recipients_list = submission.recipients
    return submission.message


def message_submit_batch(*, api_key: ApiKey | None, items: list[dict | EmailsvcError]) -> list[Message | EmailsvcError]:
    """Store many send requests at once; one bad item never fails the others.

    `items` holds each item's validated data, or the EmailsvcError its
    validation raised. Returns, in the same order, the stored Message or the
    item's error. The good items are stored in one transaction with bulk
    inserts; if that meets a conflict (an email_id taken meanwhile), each item
    is stored on its own so only the conflicting ones fail.
    """
    now = timezone.now()
    results: list[Message | EmailsvcError] = []
    for item in items:
        if isinstance(item, EmailsvcError):
            results.append(item)
            continue
        try:
            results.append(_submission_build(api_key=api_key, data=item, now=now))
        except EmailsvcError as error:
            results.append(error)
    wanted = [r.message.email_id for r in results if isinstance(r, _Submission)]
    taken = set(Message.objects.filter(email_id__in=wanted).values_list("email_id", flat=True))
    seen: set[str] = set()
    for index, result in enumerate(results):
        if isinstance(result, _Submission):
            email_id = result.message.email_id
            if email_id in taken or email_id in seen:
                results[index] = _duplicate_email_id(email_id)
            seen.add(email_id)
    submissions = [r for r in results if isinstance(r, _Submission)]
    try:
        with transaction.atomic():
            _submissions_store(submissions, now=now)
    except (IntegrityError, DataError):
        # Some item the checks let through was refused by the database: store
        # them one by one so only that item fails.
        for index, result in enumerate(results):
            if isinstance(result, _Submission):
                result.message.pk = None
                try:
                    with transaction.atomic():
                        _submissions_store([result], now=now)
                except IntegrityError:
                    results[index] = _duplicate_email_id(result.message.email_id)
                except DataError:
                    results[index] = _unstorable()
    for index, result in enumerate(results):
        if isinstance(result, _Submission):
            result.message.recipients_list = result.recipients
            results[index] = result.message
    return results


def _check_size(message: Message, recipients: list[Recipient], attachments: list[Attachment], data: dict) -> None:
    if _estimated_size(data) <= settings.MAX_MESSAGE_BYTES:
        return
    size = len(providers.build_email(message, recipients, attachments).message().as_bytes())
    if size > settings.MAX_MESSAGE_BYTES:
        raise PayloadTooLarge(
            f"The encoded message is {size} bytes; at most {settings.MAX_MESSAGE_BYTES} are allowed."
        )


def message_enqueue(*, message_id: int, priority: str) -> bool:
    """Publish the delivery task. A broker outage is logged, not raised: the
    message is committed and the sweeper re-enqueues it."""
    from emailsvc.tasks import message_deliver_task

    try:
        message_deliver_task.apply_async(
            args=[message_id],
            queue=f"emails.{priority}",
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.5},
        )
        return True
    except Exception:  # any broker failure: the message stays queued for the sweeper
        logger.warning("enqueue failed message_pk=%s; it stays queued", message_id, exc_info=True)
        return False


def messages_enqueue(*, messages: list[tuple[int, str]]) -> int:
    """Publish the delivery tasks of (message pk, priority) pairs; how many went out.
    Stops at the first broker failure: the rest stay queued for the sweeper."""
    for count, (message_id, priority) in enumerate(messages):
        if not message_enqueue(message_id=message_id, priority=priority):
            return count
    return len(messages)


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


# --- Idempotency ---------------------------------------------------------------


def idempotency_request_hash(*, method: str, path: str, data) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def _idempotency_answer(*, api_key: ApiKey, key: str, request_hash: str) -> tuple[int, dict] | None:
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    record = IdempotencyKey.objects.filter(api_key=api_key, key=key, created_at__gte=cutoff).first()
    if record is None:
        return None
    if not hmac.compare_digest(record.request_hash, request_hash):
        raise Conflict(
            "This Idempotency-Key was used with a different request; use a new key for a new request.",
            code="idempotency_key_reused",
        )
    return record.response_status, record.response_body


def idempotent_call(
    *, api_key: ApiKey, key: str | None, request_hash: str, call: Callable[[], tuple[int, dict]]
) -> tuple[int, dict]:
    """Run `call` once per (API key, Idempotency-Key) (SPEC §4).

    A repeat with the same key and request gets the first answer again; the
    same key with another request raises Conflict(idempotency_key_reused).
    The answer is stored in the same transaction as what `call` writes, so a
    crash cannot leave one without the other. Only successful answers are
    kept: a request that failed may be retried with the same key.
    """
    if not key:
        return call()
    if len(key) > 255 or not key.isprintable():
        raise ValidationFailed("Idempotency-Key must be 1-255 printable characters.", code="invalid_idempotency_key")
    answer = _idempotency_answer(api_key=api_key, key=key, request_hash=request_hash)
    if answer is not None:
        return answer
    try:
        with transaction.atomic():
            status, body = call()
            cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
            IdempotencyKey.objects.filter(api_key=api_key, key=key, created_at__lt=cutoff).delete()
            IdempotencyKey.objects.create(
                api_key=api_key, key=key, request_hash=request_hash, response_status=status, response_body=body
            )
    except IntegrityError:
        # The same key raced us and won: answer as it did.
        answer = _idempotency_answer(api_key=api_key, key=key, request_hash=request_hash)
        if answer is None:
            raise
        return answer
    return status, body
