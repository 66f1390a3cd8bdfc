"""Engagement state changes: apply provider events, drain the SES event queue (SPEC §6)."""

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone
from functools import lru_cache

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.utils import timezone
from redis.exceptions import LockNotOwnedError

from emailsvc.models import Message, Recipient, Status, Suppression
from emailsvc.redisclient import redis_client
from emailsvc.services.suppressions import suppression_add
from emailsvc.status import summarize
from tracking.models import EngagementEvent, EventType
from tracking.normalize import MalformedEvent, NormalizedEvent, ses_body_parse

logger = logging.getLogger(__name__)

DRAIN_LOCK_PREFIX = "emailsvc:lock:drain-ses-events:"


def drain_lock_name(queue_url: str) -> str:
    """One drain at a time per queue (deployments sharing a Redis do not block each other)."""
    return DRAIN_LOCK_PREFIX + hashlib.sha1(queue_url.encode()).hexdigest()[:16]


# --- Applying one event -----------------------------------------------------


@dataclass(frozen=True)
class AppliedEvent:
    """What event_apply did: `applied` (new, tied to a recipient), `unmatched`
    (new, stored, no known message/recipient) or `duplicate` (seen before: no-op)."""

    outcome: str
    event: EngagementEvent | None = None


def event_apply(*, event: NormalizedEvent, source: str) -> AppliedEvent:
    """Record one normalized event once and update the facts it reports.

    Correlates by provider message id, else by the email id in
    X-Emailsvc-Tracking-ID. The event row is unique on (event id, recipient), so
    a replay changes nothing. Recipient facts only accumulate and the status is
    derived from all of them (SPEC §3), so the order events arrive in does not
    matter. A hard bounce, a complaint or an unsubscribe-all suppresses the
    address (an existing suppression is kept as it is). Never raises for
    unknown messages: they are stored with no message and counted `unmatched`.
    """
    # A replay is answered by one indexed lookup, before any lock is taken; the
    # unique constraint below still settles a race between two appliers.
    if EngagementEvent.objects.filter(event_id=event.event_id, recipient_email=event.recipient).exists():
        return AppliedEvent(outcome="duplicate")
    with transaction.atomic():
        message = _correlate(event)
        recipient = None
        if message is not None:
            # Lock order message → recipient, the same as every other writer.
            message = Message.objects.select_for_update().get(pk=message.pk)
            recipient = (
                Recipient.objects.select_for_update().filter(message=message, email=event.recipient).first()
                if event.recipient
                else None
            )
        try:
            with transaction.atomic():
                row = EngagementEvent.objects.create(
                    event_id=event.event_id,
                    recipient_email=event.recipient,
                    event_type=event.event_type,
                    provider_message_id=event.provider_message_id,
                    message=message,
                    recipient=recipient,
                    occurred_at=event.occurred_at,
                    source=source,
                    detail=event.detail,
                    raw=event.raw,
                )
        except IntegrityError:
            if EngagementEvent.objects.filter(event_id=event.event_id, recipient_email=event.recipient).exists():
                return AppliedEvent(outcome="duplicate")
            raise
        _policy_apply(event)
        if recipient is None:
            logger.info("event without a known recipient type=%s event_id=%s", event.event_type, event.event_id)
            return AppliedEvent(outcome="unmatched", event=row)
        _facts_apply(message, recipient, event)
    return AppliedEvent(outcome="applied", event=row)


def events_relink(*, message_id: int, provider_message_id: str) -> int:
    """Apply stored events that arrived before their message's provider id was
    recorded (and carried no readable tracking header); how many were linked.
    Costs one EXISTS query when there are none, which is nearly always."""
    orphans = EngagementEvent.objects.filter(provider_message_id=provider_message_id, message__isnull=True)
    if not provider_message_id or not orphans.exists():
        return 0
    linked = 0
    with transaction.atomic():
        orphans = orphans.select_for_update()
        for row in orphans.order_by("recipient_email", "id"):
            message = Message.objects.select_for_update().get(pk=message_id)
            recipient = Recipient.objects.select_for_update().filter(message=message, email=row.recipient_email).first()
            row.message, row.recipient = message, recipient
            row.save(update_fields=["message", "recipient"])
            if recipient is not None:
                _facts_apply(message, recipient, _normalized_from_row(row))
                linked += 1
    return linked


def _normalized_from_row(row: EngagementEvent) -> NormalizedEvent:
    return NormalizedEvent(
        event_id=row.event_id,
        event_type=row.event_type,
        recipient=row.recipient_email,
        provider_message_id=row.provider_message_id,
        tracking_id="",
        occurred_at=row.occurred_at,
        detail=row.detail,
        raw=row.raw,
    )


def _facts_apply(message: Message, recipient: Recipient, event: NormalizedEvent) -> None:
    """Fold the event into the recipient's facts, derive its status, summarise the message."""
    _recipient_apply(recipient, event)
    recipient.status = _status_from_facts(recipient) or recipient.status
    recipient.save()
    if message.status != Status.SENDING:  # the worker summarises when it finishes
        status = summarize(message.recipients.values_list("status", flat=True))
        if status != message.status:
            Message.objects.filter(pk=message.pk).update(status=status, updated_at=timezone.now())


def _correlate(event: NormalizedEvent) -> Message | None:
    if event.provider_message_id:
        message = Message.objects.filter(provider_message_id=event.provider_message_id).only("pk").first()
        if message is not None:
            return message
    if event.email_id:
        return Message.objects.filter(email_id=event.email_id).only("pk").first()
    return None


def _recipient_apply(recipient: Recipient, event: NormalizedEvent) -> None:
    """Fold one event into the recipient's facts. Every branch gives the same
    facts whatever order the events come in: earliest/latest by event time,
    lists sorted by time, counts of distinct events."""
    at, kind = event.occurred_at.astimezone(dt_timezone.utc), event.event_type
    if kind == EventType.SEND:
        recipient.sent_at = _earliest(recipient.sent_at, at)
    elif kind == EventType.DELIVERY:
        recipient.delivered_at = _earliest(recipient.delivered_at, at)
    elif kind == EventType.DELIVERY_DELAY:
        recipient.delayed += 1
    elif kind == EventType.BOUNCE:
        bounce = {
            "type": event.detail.get("bounce_type", "Undetermined"),
            "subtype": event.detail.get("bounce_subtype", ""),
            "diagnostic": event.detail.get("diagnostic", ""),
            "at": at.isoformat(),
            "event_id": event.event_id,
        }
        recipient.bounce = _worse_bounce(recipient.bounce, bounce)
    elif kind == EventType.COMPLAINT:
        feedback = event.detail.get("feedback_type", "")
        # "not-spam" is a mailbox provider saying the opposite of a complaint.
        if feedback != "not-spam" and (recipient.complained_at is None or at < recipient.complained_at):
            recipient.complained_at, recipient.complaint_feedback_type = at, feedback
    elif kind == EventType.OPEN:
        recipient.opens = _add_once(recipient.opens, {"event_id": event.event_id, "opened_at": at.isoformat()}, "opened_at")
        recipient.open_count = len(recipient.opens)
        recipient.last_opened_at = max(filter(None, [recipient.last_opened_at, at]))
    elif kind == EventType.CLICK:
        click = {"event_id": event.event_id, "url": event.detail.get("url", ""), "clicked_at": at.isoformat()}
        recipient.clicks = _add_once(recipient.clicks, click, "clicked_at")
        recipient.click_count = len(recipient.clicks)
    elif kind in (EventType.REJECT, EventType.RENDERING_FAILURE):
        # SES refused the message after accepting the call: nothing was delivered.
        if recipient.rejected_at is None or at < recipient.rejected_at:
            recipient.rejected_at = at
            recipient.failed_reason = f"{kind}: {event.detail.get('reason', '')}".strip()


def _status_from_facts(recipient: Recipient) -> str | None:
    """The status the recipient's provider facts show (SPEC §3 precedence), or
    None when there are none. A rejection outranks only the states before delivery."""
    if recipient.complained_at:
        return Status.COMPLAINED
    if recipient.bounce and _is_hard(recipient.bounce):
        return Status.BOUNCED
    if recipient.click_count:
        return Status.CLICKED
    if recipient.open_count:
        return Status.OPENED
    if recipient.delivered_at:
        return Status.DELIVERED
    if recipient.rejected_at:
        return Status.FAILED
    if recipient.bounce:
        return Status.SOFT_BOUNCED
    if recipient.delayed:
        return Status.DELAYED
    if recipient.sent_at:
        return Status.SENT
    return None


def _policy_apply(event: NormalizedEvent) -> None:
    """Hard bounces, complaints and unsubscribe-all suppress the address (SPEC §6.4)."""
    if not event.recipient:
        return
    source = f"ses:{event.event_type}:{event.event_id}"
    if event.event_type == EventType.BOUNCE and event.detail.get("bounce_type") == "Permanent":
        reason, note = Suppression.Reason.HARD_BOUNCE, f"{event.detail.get('bounce_subtype', '')} {event.detail.get('diagnostic', '')}"
    elif event.event_type == EventType.COMPLAINT and event.detail.get("feedback_type") != "not-spam":
        reason, note = Suppression.Reason.COMPLAINT, event.detail.get("feedback_type", "")
    elif event.event_type == EventType.SUBSCRIPTION and event.detail.get("unsubscribe_all"):
        reason, note = Suppression.Reason.UNSUBSCRIBE, event.detail.get("contact_list", "")
    else:
        return
    suppression_add(email=event.recipient, reason=reason, source=source[:255], note=note.strip(), keep_existing=True)


def _earliest(current: datetime | None, candidate: datetime) -> datetime:
    return min(current, candidate) if current else candidate


def _is_hard(bounce: dict) -> bool:
    return bounce.get("type") == "Permanent"


def _worse_bounce(current: dict | None, candidate: dict) -> dict:
    """A permanent bounce outranks a transient one; between equals the later wins."""
    if not current:
        return candidate
    rank = lambda b: (_is_hard(b), b.get("at", ""), b.get("event_id", ""))  # noqa: E731
    return max(current, candidate, key=rank)


def _add_once(entries: list[dict], entry: dict, time_key: str) -> list[dict]:
    if any(existing.get("event_id") == entry["event_id"] for existing in entries):
        return entries
    return sorted([*entries, entry], key=lambda e: (e.get(time_key, ""), e.get("event_id", "")))


# --- Draining the SQS queue --------------------------------------------------


@dataclass
class DrainResult:
    received: int = 0
    deleted: int = 0
    applied: int = 0
    duplicates: int = 0
    unmatched: int = 0
    malformed: int = 0
    failed: int = 0
    receives: int = 0
    skipped: str = ""
    errors: list[str] = field(default_factory=list)


def sqs_client():
    return boto3.client("sqs", region_name=settings.AWS_REGION, endpoint_url=settings.AWS_ENDPOINT_URL or None)


@lru_cache(maxsize=4)
def _sandbox_queue_url(endpoint: str, name: str) -> str:
    return sqs_client().create_queue(QueueName=name)["QueueUrl"]


def events_queue_url() -> str:
    """The SQS queue to drain: SES_EVENTS_QUEUE_URL, or the sandbox queue."""
    if settings.SES_EVENTS_QUEUE_URL:
        return settings.SES_EVENTS_QUEUE_URL
    if settings.EMAIL_PROVIDER == "sandbox":
        return _sandbox_queue_url(settings.AWS_ENDPOINT_URL, settings.SANDBOX_EVENTS_QUEUE_NAME)
    return ""


def events_drain(*, max_seconds: float | None = None) -> DrainResult:
    """Receive SES events from SQS, apply them, then delete what was committed.

    Only one drain runs at a time (a Redis lock shared by every worker). Each
    SQS message is applied in its own transaction and deleted only after that
    transaction committed; a message that cannot be read or applied is left on
    the queue, so it comes back after the visibility timeout and finally goes
    to the queue's dead-letter queue. Receives until the queue is empty or
    `max_seconds` (default SES_EVENTS_DRAIN_MAX_SECONDS) have passed.
    """
    result = DrainResult()
    try:
        queue_url = events_queue_url()
    except (ClientError, BotoCoreError) as error:  # the sandbox emulator is down
        result.errors.append(f"queue not available: {error}")
        return result
    if not queue_url:
        result.skipped = "no SES_EVENTS_QUEUE_URL"
        return result
    max_seconds = max_seconds or settings.SES_EVENTS_DRAIN_MAX_SECONDS
    # The lock expires on its own if this process dies, and is renewed after each
    # batch, so a killed drain blocks the next one for at most about this long.
    lock = redis_client().lock(drain_lock_name(queue_url), timeout=max_seconds + settings.SES_EVENTS_WAIT_SECONDS + 5)
    if not lock.acquire(blocking=False):
        result.skipped = "another drain is running"
        return result
    try:
        _drain(queue_url, time.monotonic() + max_seconds, result, lock)
    finally:
        try:
            lock.release()
        except LockNotOwnedError:
            logger.warning("the drain lock expired during the run")
    logger.info(
        "drain received=%d applied=%d duplicates=%d unmatched=%d malformed=%d deleted=%d receives=%d",
        result.received, result.applied, result.duplicates, result.unmatched, result.malformed, result.deleted, result.receives,
    )
    return result


def _drain(queue_url: str, deadline: float, result: DrainResult, lock) -> None:
    client = sqs_client()
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            lock.reacquire()
        except LockNotOwnedError:  # expired: another drain may be running now
            result.errors.append("drain lock lost")
            return
        try:
            response = client.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=max(0, min(settings.SES_EVENTS_WAIT_SECONDS, int(remaining))),
                VisibilityTimeout=settings.SES_EVENTS_VISIBILITY_TIMEOUT,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        except (ClientError, BotoCoreError) as error:
            # Missing queue, credentials or network: nothing was received, so
            # nothing is lost; the next run tries again.
            result.errors.append(f"receive failed: {error}")
            logger.error("drain could not receive from SQS: %s", error)
            return
        result.receives += 1
        messages = response.get("Messages", [])
        if not messages:
            return
        result.received += len(messages)
        committed = []
        try:
            for sqs_message in messages:
                receive_count = sqs_message.get("Attributes", {}).get("ApproximateReceiveCount")
                try:
                    outcomes = _apply_body(sqs_message["Body"])
                except MalformedEvent as error:
                    result.malformed += 1
                    logger.error(
                        "malformed SES event left for the DLQ sqs_message_id=%s receive_count=%s: %s",
                        sqs_message.get("MessageId"), receive_count, error,
                    )
                    continue
                except (OperationalError, InterfaceError) as error:
                    # The database is unavailable, not the message at fault: stop
                    # this run; unapplied messages come back after their timeout.
                    result.errors.append(f"{type(error).__name__}: {error}")
                    logger.error("drain stopped: database unavailable: %s", error)
                    return
                except Exception as error:  # one message that cannot be applied must not stall the rest
                    result.failed += 1
                    logger.exception(
                        "SES event could not be applied, left for the DLQ sqs_message_id=%s receive_count=%s: %s",
                        sqs_message.get("MessageId"), receive_count, error,
                    )
                    continue
                for outcome in outcomes:
                    setattr(result, outcome, getattr(result, outcome) + 1)
                committed.append(sqs_message)
        finally:
            _delete(client, queue_url, committed, result)


def _apply_body(body: str) -> list[str]:
    """Apply all events of one SQS message in one transaction; their outcomes."""
    # Sorted by address so concurrent appliers lock suppressions in one order.
    events = sorted(ses_body_parse(body), key=lambda e: e.recipient)
    with transaction.atomic():
        outcomes = [event_apply(event=event, source=EngagementEvent.Source.SQS).outcome for event in events]
    return [{"applied": "applied", "duplicate": "duplicates", "unmatched": "unmatched"}[o] for o in outcomes]


def _delete(client, queue_url: str, messages: list[dict], result: DrainResult) -> None:
    """DeleteMessageBatch (≤ 10 distinct entries), checking each entry's result."""
    if not messages:
        return
    entries = [{"Id": str(index), "ReceiptHandle": m["ReceiptHandle"]} for index, m in enumerate(messages[:10])]
    try:
        response = client.delete_message_batch(QueueUrl=queue_url, Entries=entries)
    except (ClientError, BotoCoreError) as error:
        # The events are committed; when the messages come back their replay is a no-op.
        result.errors.append(f"delete failed: {error}")
        logger.warning("could not delete %d applied SQS messages: %s", len(entries), error)
        return
    result.deleted += len(response.get("Successful", []))
    for failure in response.get("Failed", []):
        # The events are committed; if the message comes back its replay is a no-op.
        result.errors.append(f"delete failed: {failure.get('Code')}")
        logger.warning("could not delete an applied SQS message entry=%s code=%s", failure.get("Id"), failure.get("Code"))


# --- SNS HTTPS endpoint -------------------------------------------------------


def sns_notification_apply(*, message: dict) -> list[AppliedEvent]:
    """Apply the SES events of one verified SNS Notification, in one transaction."""
    events = sorted(ses_body_parse(message), key=lambda e: e.recipient)
    with transaction.atomic():
        return [event_apply(event=event, source=EngagementEvent.Source.SNS) for event in events]


def sns_subscription_confirm(*, topic_arn: str, token: str) -> None:
    """Confirm a subscription through the SNS API in the topic's own region.

    Uses ConfirmSubscription (signed AWS call) rather than fetching SubscribeURL,
    so nothing but the AWS endpoint is ever contacted.
    """
    parts = topic_arn.split(":")
    region = parts[3] if len(parts) == 6 and parts[3] else settings.AWS_REGION
    client = boto3.client("sns", region_name=region, endpoint_url=settings.AWS_ENDPOINT_URL or None)
    client.confirm_subscription(TopicArn=topic_arn, Token=token, AuthenticateOnUnsubscribe="true")
    logger.info("SNS subscription confirmed topic=%s", topic_arn)
