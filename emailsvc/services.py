"""State changes of the sending side: submit, deliver, suppress, API keys.

Every business action is one function here; views, tasks, admin actions and
management commands call these and nothing else writes these tables.
"""

import hashlib
import hmac
import logging
import random
import secrets
from datetime import datetime, timedelta
from email.utils import formataddr

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from emailsvc import providers
from emailsvc.errors import Conflict, PayloadTooLarge
from emailsvc.models import ApiKey, Attachment, Group, Message, Provider, Recipient, Status, Suppression
from emailsvc.policy import check_sender_policy
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
    *, email: str, reason: str, source: str = "", note: str = "", expires_at: datetime | None = None
) -> Suppression:
    """Suppress an address (idempotent: an existing entry is updated)."""
    suppression, _ = Suppression.objects.update_or_create(
        email=email.strip().lower(),
        defaults={"reason": reason, "source": source, "note": note, "expires_at": expires_at},
    )
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


def message_submit(*, api_key: ApiKey | None, data: dict) -> Message:
    """Store a validated send request and enqueue its delivery after commit.

    `data` is SendEmailInputSerializer.validated_data. Applies the domain policy
    and the size limit; suppressed recipients are marked `suppressed` at once.
    Raises PolicyViolation, PayloadTooLarge, Conflict(duplicate_email_id).
    Never talks to the provider.
    """
    from_name, from_email = data.get("from") or ("", settings.DEFAULT_FROM_EMAIL.lower())
    from_name = data.get("from_name", from_name or settings.DEFAULT_FROM_NAME)
    reply_to = data.get("reply_to", [])
    recipients_by_role = {role: data.get(role, []) for role in Recipient.Role.values}
    check_sender_policy(
        from_email=from_email,
        reply_to=[address for _, address in reply_to],
        recipients={role: [address for _, address in pairs] for role, pairs in recipients_by_role.items() if pairs},
    )

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
    )
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
                recipients.append(Recipient(email=address, name=name, role=role))
    _check_size(message, recipients, attachments, data)

    with transaction.atomic():
        if data.get("group_id"):
            message.group, _ = Group.objects.get_or_create(id=data["group_id"])
        suppressed = suppressed_addresses(addresses=[r.email for r in recipients])
        for recipient in recipients:
            if recipient.email in suppressed:
                recipient.status = Status.SUPPRESSED
                recipient.failed_reason = f"suppressed ({suppressed[recipient.email]})"
        message.status = summarize(r.status for r in recipients)
        if message.status == Status.QUEUED:
            message.queued_at = timezone.now()
        try:
            with transaction.atomic():
                message.save()
        except IntegrityError:
            if Message.objects.filter(email_id=message.email_id).exists():
                raise Conflict(
                    f"An email with email_id '{message.email_id}' already exists.", code="duplicate_email_id"
                ) from None
            raise
        for row in recipients + attachments:
            row.message = message
        Recipient.objects.bulk_create(recipients)
        Attachment.objects.bulk_create(attachments)
        if message.status == Status.QUEUED:
            transaction.on_commit(lambda: message_enqueue(message_id=message.pk, priority=message.priority))
    message.recipients_list = recipients
    return message


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


def message_deliver(*, message_id: int) -> Message | None:
    """Deliver one queued message; safe to call any number of times.

    Claims the message (queued → sending) in one guarded UPDATE so only one
    caller hands it to the provider; re-checks suppressions; sends; records
    `sent` + provider id, or `failed` + reason. Transient failures put it back
    to `queued` and raise DeliveryDeferred until DELIVERY_MAX_ATTEMPTS.
    Returns None when there was nothing to claim.
    """
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
                Recipient.objects.filter(pk=recipient.pk).update(
                    status=Status.SUPPRESSED, failed_reason=f"suppressed ({suppressed[recipient.email]})", updated_at=now
                )
    sendable = [r for r in pending if r.email not in suppressed]
    if not sendable:
        return _finish(message)

    try:
        provider_message_id = providers.provider_send(message, sendable, list(message.attachments.all()))
    except providers.TransientDeliveryError as error:
        account_stopped = isinstance(error, providers.AccountStoppedError)
        if account_stopped:
            # The account, not this message, is at fault: keep waiting, never fail it.
            logger.error("ALERT provider account stopped sending: %s", error.reason)
        elif message.attempts >= settings.DELIVERY_MAX_ATTEMPTS:
            return _fail(message, sendable, f"gave up after {message.attempts} attempts: {error.reason}")
        Message.objects.filter(pk=message.pk, status=Status.SENDING).update(
            status=Status.QUEUED, last_error=error.reason, updated_at=timezone.now()
        )
        countdown = settings.DELIVERY_RETRY_MAX_SECONDS if account_stopped else _retry_delay(message.attempts, error.wait_seconds)
        logger.warning("delivery deferred email_id=%s attempt=%d in=%.1fs: %s", message.email_id, message.attempts, countdown, error.reason)
        raise DeliveryDeferred(countdown=countdown, reason=error.reason) from error
    except providers.PermanentDeliveryError as error:
        return _fail(message, sendable, error.reason)

    sent_at = timezone.now()
    sendable_pks = [r.pk for r in sendable]
    with transaction.atomic():
        Message.objects.select_for_update().filter(pk=message.pk).update(
            provider_message_id=provider_message_id, sent_at=sent_at, last_error=""
        )
        Recipient.objects.filter(pk__in=sendable_pks).update(sent_at=sent_at, updated_at=sent_at)
        # An event applied meanwhile may already have moved a recipient past `sent`.
        Recipient.objects.filter(pk__in=sendable_pks, status__in=[Status.QUEUED, Status.SENDING]).update(status=Status.SENT)
        message = _finish(message)
    logger.info("delivered email_id=%s provider=%s recipients=%d", message.email_id, message.provider, len(sendable))
    if message.provider == Provider.SANDBOX:
        _sandbox_events_publish(message, sendable)
    return message


def _sandbox_events_publish(message: Message, recipients: list[Recipient]) -> None:
    """Sandbox only: queue the SES events a real account would publish (SPEC §8)."""
    from tracking.sandbox import sandbox_events_publish

    try:
        sandbox_events_publish(message=message, recipients=recipients)
    except Exception:  # the send is recorded; a sandbox event failure must not undo it
        logger.warning("sandbox events not published email_id=%s", message.email_id, exc_info=True)


def _fail(message: Message, recipients: list[Recipient], reason: str) -> Message:
    now = timezone.now()
    Recipient.objects.filter(pk__in=[r.pk for r in recipients]).update(status=Status.FAILED, failed_reason=reason, updated_at=now)
    Message.objects.filter(pk=message.pk).update(last_error=reason, updated_at=now)
    logger.warning("delivery failed email_id=%s: %s", message.email_id, redact_address(reason))
    return _finish(message)


def _finish(message: Message) -> Message:
    """Set the message status from its recipients' statuses.

    Holds the message row lock, as event_apply does, so a status derived from
    recipients is never overwritten by one derived from an older snapshot.
    """
    with transaction.atomic():
        Message.objects.select_for_update().filter(pk=message.pk).first()
        status = summarize(message.recipients.values_list("status", flat=True))
        Message.objects.filter(pk=message.pk).update(status=status, updated_at=timezone.now())
    message.refresh_from_db()
    return message
