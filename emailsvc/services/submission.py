"""Submitting: validate policy and size, store messages and recipients, enqueue after commit (SPEC §5.1)."""

import logging
from dataclasses import dataclass
from datetime import datetime
from email.utils import formataddr

from django.conf import settings
from django.db import DataError, IntegrityError, transaction
from django.utils import timezone

from emailsvc import providers
from emailsvc.errors import Conflict, EmailsvcError, PayloadTooLarge, ValidationFailed
from emailsvc.models import (
    ApiKey,
    Attachment,
    Group,
    Message,
    Recipient,
    Status,
)
from emailsvc.policy import check_sender_policy
from emailsvc.selectors import suppressed_addresses
from emailsvc.status import summarize

logger = logging.getLogger(__name__)

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
