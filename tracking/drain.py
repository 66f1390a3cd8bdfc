"""The SQS drain: receive SES events, apply them, delete what was committed (SPEC §6.1)."""

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.db import InterfaceError, OperationalError
from redis.exceptions import LockNotOwnedError, RedisError

from core.redisclient import redis_client
from core.sqs import events_queue_url, sqs_client
from emailsvc.sending_control.breaker import breaker_check
from tracking.apply import events_apply, events_relink, events_stored
from tracking.models import EngagementEvent
from tracking.normalize import MalformedEvent, envelope_event_id, envelope_read, ses_envelope_parse
from tracking.queueing import drain_helper_enqueue

logger = logging.getLogger(__name__)

DRAIN_LOCK_PREFIX = "emailsvc:lock:drain-ses-events:"


def drain_lock_name(queue_url: str, slot: int = 0) -> str:
    """The lock of one of the SES_EVENTS_DRAIN_CONCURRENCY drain slots of a queue
    (deployments sharing a Redis do not block each other)."""
    return f"{DRAIN_LOCK_PREFIX}{hashlib.sha1(queue_url.encode()).hexdigest()[:16]}:{slot}"


OUTCOME_FIELDS = {"applied": "applied", "duplicate": "duplicates", "unmatched": "unmatched"}


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
    batches: int = 0
    relinked: int = 0
    waiting: int | None = None  # events on the queue after the run
    in_flight: int | None = None  # received by a drain, not yet deleted
    lag_seconds: float | None = None  # age of the oldest event this run received
    skipped: str = ""
    errors: list[str] = field(default_factory=list)


def events_drain(*, max_seconds: float | None = None) -> DrainResult:
    """Receive SES events from SQS, apply them, then delete what was committed.

    Up to SES_EVENTS_DRAIN_CONCURRENCY drains run at once, on any machines (one
    Redis lock per slot): applying is idempotent and locks rows in one order,
    so they never conflict. A drain gathers up to SES_EVENTS_APPLY_BATCH
    messages (several receives of 10), applies all their events in one
    transaction, set-based, and deletes them (≤ 10 per DeleteMessageBatch, each
    entry checked) only after the commit. A message that cannot be read or
    applied is left on the queue: it comes back after the visibility timeout
    and finally goes to the queue's dead-letter queue, never holding up the
    rest. A drain that finds a backlog starts another, up to the concurrency.
    Runs until the queue is empty or `max_seconds` (default
    SES_EVENTS_DRAIN_MAX_SECONDS) have passed.
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
    lock = _slot_take(queue_url, timeout=max_seconds + settings.SES_EVENTS_WAIT_SECONDS + 5)
    if lock is None:
        result.skipped = f"all {settings.SES_EVENTS_DRAIN_CONCURRENCY} drain slots are taken"
        return result
    client = sqs_client()
    try:
        _drain(client, queue_url, time.monotonic() + max_seconds, result, lock)
    finally:
        try:
            lock.release()
        except LockNotOwnedError:
            logger.warning("the drain lock expired during the run")
    result.relinked = events_relink()
    if result.applied:
        breaker_check()  # bounces and complaints just counted: do the rates cross a line?
    _status_report(client, queue_url, result)
    if result.received or result.failed or result.waiting:  # an idle drain says nothing
        logger.info(
            "drain received=%d applied=%d duplicates=%d unmatched=%d malformed=%d failed=%d deleted=%d receives=%d "
            "batches=%d waiting=%s lag_seconds=%s",
            result.received, result.applied, result.duplicates, result.unmatched, result.malformed, result.failed,
            result.deleted, result.receives, result.batches, result.waiting, result.lag_seconds,
        )
    return result


def _slot_take(queue_url: str, *, timeout: float):
    """The lock of a free drain slot, or None when every slot is taken. A lock
    expires on its own if its drain dies and is renewed after each batch."""
    client = redis_client()
    for slot in range(settings.SES_EVENTS_DRAIN_CONCURRENCY):
        lock = client.lock(drain_lock_name(queue_url, slot), timeout=timeout)
        if lock.acquire(blocking=False):
            return lock
    return None


def _drain(client, queue_url: str, deadline: float, result: DrainResult, lock) -> None:
    helper_started = False
    while True:  # at least one batch, then until the deadline
        try:
            lock.reacquire()
        except LockNotOwnedError:  # expired: another drain may have this slot now
            result.errors.append("drain lock lost")
            return
        messages, full = _receive_batch(client, queue_url, deadline, result)
        if not messages:
            return
        if full and not helper_started and settings.SES_EVENTS_DRAIN_CONCURRENCY > 1:
            # A backlog: another drain may help, if a slot is free when it starts.
            drain_helper_enqueue()
            helper_started = True
        committed, stop = _apply_batch(messages, result)
        _delete(client, queue_url, committed, result)
        if stop or not full or time.monotonic() >= deadline:
            return


def _receive_batch(client, queue_url: str, deadline: float, result: DrainResult) -> tuple[list[dict], bool]:
    """Up to SES_EVENTS_APPLY_BATCH messages: a long-poll receive, then short
    ones while each comes back full. Returns them and whether the last was full
    (more are probably waiting)."""
    messages: list[dict] = []
    while len(messages) < settings.SES_EVENTS_APPLY_BATCH:
        remaining = deadline - time.monotonic()
        if messages and remaining <= 0:
            return messages, True
        wait = 0 if messages else max(0, min(settings.SES_EVENTS_WAIT_SECONDS, int(remaining)))
        try:
            response = client.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=wait,
                VisibilityTimeout=settings.SES_EVENTS_VISIBILITY_TIMEOUT,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            )
        except (ClientError, BotoCoreError) as error:
            # Missing queue, credentials or network: nothing more was received,
            # so nothing is lost; what was received is applied, the rest waits.
            result.errors.append(f"receive failed: {error}")
            logger.error("drain could not receive from SQS: %s", error)
            return messages, False
        result.receives += 1
        received = response.get("Messages", [])
        result.received += len(received)
        messages += received
        now_ms = time.time() * 1000
        for message in received:
            sent = message.get("Attributes", {}).get("SentTimestamp")
            if sent:
                lag = max(0.0, (now_ms - float(sent)) / 1000)
                result.lag_seconds = max(result.lag_seconds or 0.0, round(lag, 3))
        if len(received) < 10:
            return messages, False
    return messages, True


def _apply_batch(messages: list[dict], result: DrainResult) -> tuple[list[dict], bool]:
    """Apply the events of these SQS messages in one transaction; the messages
    that are committed, and whether the drain must stop (database unavailable).

    A message that is not a readable SES event is left for the DLQ. If the
    batch as a whole fails, each message is applied on its own, so one that
    cannot be applied never holds up the others."""
    envelopes: list[tuple[dict, dict]] = []
    for sqs_message in messages:
        try:
            envelopes.append((sqs_message, envelope_read(sqs_message["Body"])))
        except MalformedEvent as error:
            _malformed(sqs_message, error, result)
    # Replays (SNS delivers at least once; a drain may die before its deletes)
    # are known by their SNS MessageId alone: one query, and they are not read further.
    try:
        stored = events_stored({event_id for _, envelope in envelopes if (event_id := envelope_event_id(envelope))})
    except (OperationalError, InterfaceError) as error:
        result.errors.append(f"{type(error).__name__}: {error}")
        logger.error("drain stopped: database unavailable: %s", error)
        return [], True
    replayed: list[dict] = []
    parsed: list[tuple[dict, list]] = []
    for sqs_message, envelope in envelopes:
        event_id = envelope_event_id(envelope)
        if event_id in stored:
            result.duplicates += stored[event_id]
            replayed.append(sqs_message)
            continue
        try:
            parsed.append((sqs_message, ses_envelope_parse(envelope)))
        except MalformedEvent as error:
            _malformed(sqs_message, error, result)
    if not parsed:
        return replayed, False
    result.batches += 1
    try:  # one transaction (events_apply's own)
        outcomes = events_apply(
            events=[e for _, events in parsed for e in events], source=EngagementEvent.Source.SQS, replays_checked=True
        )
    except (OperationalError, InterfaceError) as error:
        # The database is unavailable, not the messages at fault: stop this run;
        # unapplied messages come back after their visibility timeout.
        result.errors.append(f"{type(error).__name__}: {error}")
        logger.error("drain stopped: database unavailable: %s", error)
        return [], True
    except Exception:  # something in the batch cannot be applied: find it, apply the rest
        logger.warning("a batch of %d SQS messages failed to apply; applying them one by one", len(parsed), exc_info=True)
        return _apply_one_by_one(parsed, result, replayed)
    _count(outcomes, result)
    return replayed + [sqs_message for sqs_message, _ in parsed], False


def _malformed(sqs_message: dict, error: MalformedEvent, result: DrainResult) -> None:
    result.malformed += 1
    logger.error(
        "malformed SES event left for the DLQ sqs_message_id=%s receive_count=%s: %s",
        sqs_message.get("MessageId"), _receive_count(sqs_message), error,
    )


def _apply_one_by_one(parsed, result: DrainResult, committed: list[dict]) -> tuple[list[dict], bool]:
    for sqs_message, events in parsed:
        try:
            outcomes = events_apply(events=events, source=EngagementEvent.Source.SQS, replays_checked=True)
        except (OperationalError, InterfaceError) as error:
            result.errors.append(f"{type(error).__name__}: {error}")
            logger.error("drain stopped: database unavailable: %s", error)
            return committed, True
        except Exception as error:  # this message cannot be applied: leave it for the DLQ
            result.failed += 1
            logger.exception(
                "SES event could not be applied, left for the DLQ sqs_message_id=%s receive_count=%s: %s",
                sqs_message.get("MessageId"), _receive_count(sqs_message), error,
            )
            continue
        _count(outcomes, result)
        committed.append(sqs_message)
    return committed, False


def _count(outcomes, result: DrainResult) -> None:
    for applied in outcomes:
        name = OUTCOME_FIELDS[applied.outcome]
        setattr(result, name, getattr(result, name) + 1)


def _receive_count(sqs_message: dict) -> str | None:
    return sqs_message.get("Attributes", {}).get("ApproximateReceiveCount")


def _status_report(client, queue_url: str, result: DrainResult) -> None:
    """How many events wait and how old the oldest seen was: for /readyz and the logs."""
    try:
        attributes = client.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        result.waiting = int(attributes.get("ApproximateNumberOfMessages", 0))
        result.in_flight = int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0))
    except (ClientError, BotoCoreError) as error:
        result.errors.append(f"queue depth unavailable: {error}")
    report = {
        "at": time.time(), "waiting": result.waiting, "in_flight": result.in_flight, "lag_seconds": result.lag_seconds,
        "received": result.received, "applied": result.applied, "failed": result.failed,
        "malformed": result.malformed, "errors": result.errors[:5],
    }
    try:
        drain_report_save(report)
    except RedisError:
        logger.warning("drain report not recorded: Redis unavailable")


def _delete_chunks(messages: list[dict]) -> list[list[dict]]:
    return [messages[start : start + 10] for start in range(0, len(messages), 10)]


def _delete(client, queue_url: str, messages: list[dict], result: DrainResult) -> None:
    """DeleteMessageBatch per 10 messages, checking each entry's result."""
    for chunk in _delete_chunks(messages):
        _delete_ten(client, queue_url, chunk, result)


def _delete_ten(client, queue_url: str, messages: list[dict], result: DrainResult) -> None:
    entries = [{"Id": str(index), "ReceiptHandle": m["ReceiptHandle"]} for index, m in enumerate(messages)]
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


# The last SES event drain's report (queue depth, lag, counts), kept in Redis by
# tracking's drain so that /readyz and operators can see whether events keep up.
DRAIN_REPORT_KEY = "emailsvc:drain:last"
DRAIN_REPORT_TTL_SECONDS = 24 * 3600


def drain_report_save(report: dict) -> None:
    redis_client().set(DRAIN_REPORT_KEY, json.dumps(report), ex=DRAIN_REPORT_TTL_SECONDS)


def drain_report() -> dict | None:
    """The last drain's report with its age in seconds, or None if no drain ran in a day."""
    raw = redis_client().get(DRAIN_REPORT_KEY)
    if raw is None:
        return None
    report = json.loads(raw)
    report["age_seconds"] = round(time.time() - report.pop("at", time.time()), 1)
    return report
