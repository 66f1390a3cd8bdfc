"""Recording a chunk: every outcome written through `emailsvc.status` and the
chunk's journal entries deleted, in one transaction — in a worker on the
process's recorder thread, while the task thread claims and sends the next
chunk (one chunk at most waits to be recorded per process); a record the
database refuses is tried again until it takes it. The sweeper records what a
dead worker's journal holds the same way (`outcomes_record`)."""

from __future__ import annotations

import contextvars
import logging
import os
import random
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.utils import timezone

from core.outages import outage
from core.redaction import redact_address
from core.threads import process_pool
from emailsvc import status
from emailsvc.delivery import journal
from emailsvc.delivery.chunks import ChunkResult, Outgoing, SendOutcome, chunk_load
from emailsvc.models import Provider, Status, WorkState
from emailsvc.providers.testmode import simulated_sends_publish

# The engine's lines keep one logger name, whichever of its modules writes them.
logger = logging.getLogger("emailsvc.delivery.engine")


def chunk_record(
    outgoing: dict[int, Outgoing], outcomes: dict[int, SendOutcome], result: ChunkResult, *, journaled: bool
) -> None:
    """Record a chunk this process claimed and delete its journal entries, in one transaction."""
    with transaction.atomic():
        _record(outgoing, outcomes, result, claimed_by=journal.process_token(), journaled=journaled)
    journal.claims_release(outgoing)
    logger.info(
        "delivery chunk claimed=%d sent=%d failed=%d deferred=%d suppressed=%d released=%d",
        result.claimed, result.sent, result.failed, result.deferred, result.suppressed, result.released,
    )


# --- Recording while the next chunk is sent ------------------------------------------

# The chunk this process's recorder thread is recording, if any, and the
# process it was handed over in (a forked child has no recorder thread yet and
# nothing of its parent's to wait for).
_recording: Future | None = None
_recording_pid = 0


def record_in_background(
    outgoing: dict[int, Outgoing], outcomes: dict[int, SendOutcome], result: ChunkResult,
    recorded: Callable[[ChunkResult], None],
) -> None:
    """Hand the chunk to this process's recorder thread, after the previous
    chunk's record is done: at most one chunk per process waits to be recorded."""
    global _recording, _recording_pid
    recordings_wait()
    recorder = process_pool("record", workers=1)
    _recording = recorder.submit(contextvars.copy_context().run, _record_job, outgoing, outcomes, result, recorded)
    _recording_pid = os.getpid()


_record_outage = outage("the database")
RECORD_RETRY_MAX_SECONDS = 5.0
_recordings_stopping = threading.Event()


def _record_job(
    outgoing: dict[int, Outgoing], outcomes: dict[int, SendOutcome], result: ChunkResult,
    recorded: Callable[[ChunkResult], None],
) -> None:
    """Record the chunk, trying again while the database is away: its answers
    are in memory (and in the journal when the database took them), and the
    chunk shows `sending` until this succeeds. The task thread waits for it
    before handing over its next chunk."""
    delay = 0.25
    while True:
        close_old_connections()  # this thread's own connection, kept across chunks; a broken one is replaced
        counted = ChunkResult(claimed=result.claimed, chunk_size=result.chunk_size)  # a failed try counts nothing
        try:
            chunk_record(outgoing, outcomes, counted, journaled=True)
            vars(result).update(vars(counted))
            break
        except DatabaseError as error:
            _record_outage.failed(error, action=f"a chunk of {result.claimed} waits to be recorded, tried again")
            connection.close()
            if _recordings_stopping.wait(delay):  # the process is exiting: the journal covers what it took
                logger.warning("delivery chunk not recorded before the process exit (claimed=%d); the sweeper records it", result.claimed)
                return
            delay = min(delay * 2, RECORD_RETRY_MAX_SECONDS)
        except Exception:  # our bug: the answers stay in the journal for the sweeper
            logger.exception("delivery chunk not recorded (claimed=%d); the sweeper records it", result.claimed)
            return
    _record_outage.succeeded()
    try:
        recorded(result)
    except Exception:
        logger.exception("after recording a delivery chunk")


def recordings_stop(*, timeout: float) -> None:
    """The process is exiting: wait up to `timeout` for the chunk being
    recorded, then stop trying (the journal and the sweeper cover it), and
    stop the journal's writer thread."""
    recordings_wait(timeout=timeout)
    _recordings_stopping.set()
    recordings_wait(timeout=RECORD_RETRY_MAX_SECONDS)
    journal.shutdown(timeout=5)


def recordings_wait(timeout: float | None = None) -> None:
    """Wait until this process's recorder has recorded every chunk handed to it
    (before the next chunk is handed over, and when the process exits)."""
    pending = _recording if _recording_pid == os.getpid() else None
    if pending is not None:
        try:
            pending.result(timeout=timeout)
        except FutureTimeout:
            logger.warning("a delivery chunk is still being recorded; the sweeper records it if this process ends")


def journal_read(*, message_id: int, attempt: int) -> SendOutcome | None:
    """The journaled answer of this attempt of a message, if one was written."""
    entry = journal.journal_entries(message_ids=[message_id]).get(message_id)
    if entry is None or entry[0] != attempt:
        return None
    return SendOutcome.from_journal(entry[1])


def _retry_delay(attempt: int) -> float:
    """Exponential backoff with full jitter, capped."""
    ceiling = min(settings.DELIVERY_RETRY_MAX_SECONDS, settings.DELIVERY_RETRY_BASE_SECONDS * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def _record(
    outgoing: dict[int, Outgoing], outcomes: dict[int, SendOutcome], result: ChunkResult, *, claimed_by: str | None,
    journaled: bool = True,
) -> None:
    """Write every outcome of a chunk through the status module and delete its
    journal entries, in the caller's transaction.

    `claimed_by`: the process whose claims these are. A message whose claim is
    no longer that process's at that attempt (the sweeper gave it to another
    after this process's lease ran out) keeps its engine state; only what the
    provider answered about its recipients (sent, refused for good) is
    recorded, as facts. None (the sweeper, which holds the claim it records):
    every outcome is recorded as the claim's.
    """
    now = timezone.now()
    locked = status.messages_lock(sorted(outcomes))
    changes: list[status.RecipientChange] = []
    message_fields: dict[int, dict] = {}
    recorded: dict[int, int] = {}
    lost: list[str] = []
    for pk, outcome in outcomes.items():
        message = outgoing[pk]
        row = locked.get(pk)
        if row is None:
            continue
        if claimed_by is not None and (row.state != WorkState.SENDING or row.attempts != message.attempts or row.claimed_by != claimed_by):
            lost.append(message.email_id)
            _facts_of_lost_claim(message, outcome, now, changes, message_fields)
            continue
        recorded[pk] = message.attempts
        changes += [
            status.RecipientChange(rid, Status.SUPPRESSED, "suppressed", fields={"failed_reason": reason}, detail={"reason": reason})
            for rid, reason in message.suppressed.items()
        ]
        result.suppressed += len(message.suppressed)
        fields = message_fields[pk] = _message_fields(message, outcome, now, changes, result)
        if fields["state"] == WorkState.QUEUED:
            result.due_later.append((message.priority, max((fields["next_attempt_at"] - now).total_seconds(), 0.0)))
    status.changes_apply(
        message_ids=list(locked), recipient_changes=changes, message_fields=message_fields, locked=locked, at=now
    )
    simulated = [
        (outgoing[pk], outcome) for pk, outcome in outcomes.items()
        if outgoing[pk].provider == Provider.TEST and outcome.sent and pk in locked
    ]
    if simulated:
        # Their simulated events are applied in the record's own transaction (in a
        # savepoint): a test email is never left `sent` for want of its outcome (a
        # database that drops between two commits). Whatever fails in them alone is
        # logged and the record of the chunk stands, live emails with it; a
        # connection that is gone fails the record's next statement, which the
        # recorder tries again.
        try:
            with transaction.atomic():
                simulated_sends_publish(simulated)
        except Exception:
            logger.exception("the simulated events of %d test emails were not applied", len(simulated))
    if journaled:
        journal.journal_delete(attempts=recorded)
    if lost:
        logger.warning(
            "%d emails of a chunk were recovered by the sweeper before this process recorded them "
            "(its lease ran out); their provider answers are recorded as facts: %s",
            len(lost), ", ".join(lost[:5]),
        )


def _facts_of_lost_claim(
    message: Outgoing, outcome: SendOutcome, now: datetime, changes: list, message_fields: dict[int, dict]
) -> None:
    """What the provider said about the recipients of a claim this process no
    longer holds: they were sent, or refused for good, whatever happens to the
    message now. Deferred recipients are left to the claim's new holder."""
    if outcome.released_for is not None:
        return
    if outcome.sent:
        detail = {"provider_message_id": outcome.provider_message_id}
        changes += [
            status.RecipientChange(rid, Status.SENT, "delivery", fields={"sent_at": outcome.sent_at}, detail=detail)
            for rid in outcome.sent
        ]
        message_fields[message.pk] = {"provider_message_id": outcome.provider_message_id}
    changes += [
        status.RecipientChange(rid, Status.FAILED, "delivery_failed", fields={"failed_reason": reason}, detail={"reason": reason})
        for rid, reason in outcome.failed.items()
    ]


def _message_fields(
    message: Outgoing, outcome: SendOutcome, now: datetime, changes: list, result: ChunkResult
) -> dict:
    """The recipient changes (appended to `changes`) and message columns of one outcome."""
    if outcome.released_for is not None:
        # Not attempted: the claim's attempt is given back.
        result.released += 1
        return {
            "state": WorkState.QUEUED,
            "attempts": message.attempts - 1,
            "next_attempt_at": (outcome.released_at or now) + timedelta(seconds=outcome.released_for),
            "last_error": outcome.reason,
        }
    fields: dict = {"last_error": outcome.reason}
    if outcome.sent:
        fields["provider_message_id"] = outcome.provider_message_id
        if message.sent_at is None:
            fields["sent_at"] = outcome.sent_at
        detail = {"provider_message_id": outcome.provider_message_id}
        changes += [
            status.RecipientChange(rid, Status.SENT, "delivery", fields={"sent_at": outcome.sent_at}, detail=detail)
            for rid in outcome.sent
        ]
        result.sent += len(outcome.sent)
    failed = dict(outcome.failed)
    deferred = dict(outcome.deferred)
    if deferred and message.attempts >= settings.DELIVERY_MAX_ATTEMPTS:
        failed.update({rid: f"gave up after {message.attempts} attempts: {reason}" for rid, reason in deferred.items()})
        deferred = {}
    if failed:
        changes += [
            status.RecipientChange(rid, Status.FAILED, "delivery_failed", fields={"failed_reason": reason}, detail={"reason": reason})
            for rid, reason in failed.items()
        ]
        result.failed += len(failed)
        result.internal += sum(1 for reason in failed.values() if reason.startswith("internal error"))
        for reason in set(failed.values()):
            logger.warning("delivery failed email_id=%s: %s", message.email_id, redact_address(reason))
    if deferred:
        result.deferred += len(deferred)
        delay = _retry_delay(message.attempts)
        logger.warning(
            "delivery deferred email_id=%s attempt=%d in=%.1fs: %s",
            message.email_id, message.attempts, delay, redact_address(outcome.reason),
        )
        fields.update(state=WorkState.QUEUED, next_attempt_at=now + timedelta(seconds=delay))
    else:
        fields["state"] = WorkState.DONE
    return fields


def outcomes_record(*, message_id: int, outcome: SendOutcome) -> None:
    """Record an outcome of a message a dead worker left `sending` (the sweeper,
    in its transaction, holding the message's lock)."""
    message = chunk_load([message_id]).get(message_id)
    if message is None:
        return
    message.suppressed = {}  # what was sent was sent, whatever was suppressed since
    _record({message_id: message}, {message_id: outcome}, ChunkResult(), claimed_by=None)
