"""Delivering: claim due messages in chunks, send them over kept-open provider
connections with several sends in flight, record the outcomes set-based
(SPEC §5.2-5.4).

One call of `deliver_due` is one chunk:

1. claim up to a chunk of due messages (high priority first, then the caller's
   priority) in one guarded statement, committed before anything is sent;
2. load them (messages, their pending recipients, attachments, suppressions)
   with four queries;
3. send each message in a send slot of a per-process thread pool: build the
   MIME, (with the limiter on) make the slot's provider connection ready and
   book tokens from the global rate limiter, hand it to the provider, and
   (in a worker) write the provider's answer to the delivery journal in the
   database before the slot takes its next message (emailsvc.delivery.journal);
4. record every outcome through `emailsvc.status`, and delete the chunk's
   journal entries, in one transaction. In a worker this runs on the
   process's recorder thread while the task thread claims and sends the next
   chunk (one chunk at most waits to be recorded per process); a record the
   database refuses is tried again until it takes it.

A worker killed between a provider's answer and step 4 leaves the journal: the
sweeper records what it holds once the process's lease runs out. Only the sends
in flight at the moment of the kill (at most DELIVERY_SEND_CONCURRENCY per
process) have no journal entry; those messages are sent again — the one window
for a duplicate. A chunk whose journal entry the database refuses starts no
more sends, so the window stays the same while the database is away.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from emailsvc import providers, status
from core.sql import index_lookups
from emailsvc.models import (
    PENDING_STATUSES,
    Attachment,
    Message,
    Priority,
    Recipient,
    Status,
    WorkState,
)
from emailsvc.providers import (
    AccountStoppedError,
    DeliveryError,
    InternalDeliveryError,
    TransientDeliveryError,
)
from emailsvc.sending_control.ratelimit import (
    RateLimit,
    rate_limit_backlog,
    rate_limit_from_settings,
    rate_limit_reserve,
)
from core.outages import outage
from core.redaction import redact_address
from emailsvc.selectors import suppressed_addresses
from emailsvc.sending_control import breaker
from emailsvc.delivery import journal

logger = logging.getLogger(__name__)

# Claims take the most urgent work first: a task of any queue claims due
# high-priority messages before its own priority's.
PRIORITY_ORDER = [Priority.HIGH, Priority.NORMAL, Priority.LOW]


# --- The rows a chunk works on ---------------------------------------------------


@dataclass
class OutgoingRecipient:
    id: int
    email: str
    name: str
    role: str


@dataclass
class OutgoingAttachment:
    filename: str
    content_type: str
    content: bytes


@dataclass
class Outgoing:
    """One claimed message: what build_email reads, and the claim it belongs to."""

    pk: int
    email_id: str
    group_id: str | None
    attempts: int
    priority: str
    provider: str
    from_email: str
    from_name: str
    reply_to: list
    subject: str
    html: str
    text: str
    headers: dict
    tags: list
    metadata: dict
    sent_at: datetime | None
    recipients: list[OutgoingRecipient] = field(default_factory=list)
    attachments: list[OutgoingAttachment] = field(default_factory=list)
    suppressed: dict[int, str] = field(default_factory=dict)  # recipient id → reason


@dataclass
class SendOutcome:
    """The provider's answer for one message of a chunk (or why it was not sent)."""

    provider_message_id: str = ""
    sent_at: datetime | None = None
    sent: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # permanent, per recipient
    deferred: dict[int, str] = field(default_factory=dict)  # transient, per recipient
    # Not attempted (rate limit, account stop, chunk deadline): due again this
    # many seconds after `released_at` (None: when recorded), and the attempt
    # is not counted.
    released_for: float | None = None
    reason: str = ""
    released_at: datetime | None = None

    def journal(self) -> dict:
        """What the delivery journal keeps of it (JSON)."""
        return {
            "provider_message_id": self.provider_message_id,
            "sent_at": self.sent_at.isoformat() if self.sent_at else None,
            "sent": self.sent,
            "failed": self.failed,
            "deferred": self.deferred,
            "released_for": self.released_for,
            "reason": self.reason,
            "released_at": self.released_at.isoformat() if self.released_at else None,
        }

    @classmethod
    def from_journal(cls, data: dict) -> SendOutcome:
        return cls(
            provider_message_id=data["provider_message_id"],
            sent_at=datetime.fromisoformat(data["sent_at"]) if data["sent_at"] else None,
            sent=list(data["sent"]),
            failed={int(k): v for k, v in data["failed"].items()},
            deferred={int(k): v for k, v in data["deferred"].items()},
            released_for=data["released_for"],
            reason=data["reason"],
            released_at=datetime.fromisoformat(data["released_at"]) if data.get("released_at") else None,
        )


@dataclass
class ChunkResult:
    """What one `deliver_due` call did."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    suppressed: int = 0
    released: int = 0
    internal: int = 0  # of `failed`: our own code failed (a bug), not the provider
    chunk_size: int = 0
    # The limiter is booked further ahead than a worker should wait: nothing
    # was claimed; try again in this many seconds.
    retry_in: float | None = None
    paused: bool = False  # the whole account is paused: nothing was claimed
    # The task of the next chunk was published while this one's last sends
    # waited for their moments (`deliver_due(next_chunk=...)`).
    next_published: bool = False
    # Messages put back for later, as (priority, seconds from now).
    due_later: list[tuple[str, float]] = field(default_factory=list)


# --- The chunk -------------------------------------------------------------------


def chunk_size(limit: RateLimit) -> int:
    """Messages per claim: DELIVERY_CHUNK_SIZE, and with the limiter on about one
    second's worth of its rate, so a chunk never waits long for its tokens."""
    size = settings.DELIVERY_CHUNK_SIZE
    if limit.enabled:
        size = min(size, max(1, math.ceil(limit.per_second * settings.DELIVERY_CHUNK_SECONDS)))
    return size


def deliver_due(
    *,
    priority: str = Priority.NORMAL,
    recorded: Callable[[ChunkResult], None] | None = None,
    next_chunk: Callable[[], None] | None = None,
) -> ChunkResult:
    """Deliver one chunk of due messages; safe to call any number of times anywhere.

    Claims due messages of priority `high` first, then down to `priority`
    (oldest due first), sends them with DELIVERY_SEND_CONCURRENCY sends in
    flight, records each recipient's outcome: `sent` + provider id, `failed` +
    reason, `suppressed`, or still pending for a retry (transient errors back
    off with jitter until DELIVERY_MAX_ATTEMPTS; account-level stops and the
    daily quota wait without using up attempts).

    With `recorded` (the delivery task), the chunk is recorded by this
    process's recorder thread while the caller goes on to its next chunk, and
    `recorded(result)` is called there once it is; the returned result then
    carries the claim only. Every answer is in the journal by then, so a
    process that dies first loses nothing: the sweeper records it. Without
    `recorded`, the chunk is recorded before this returns.

    With `next_chunk` and the limiter on, a full chunk calls `next_chunk()`
    (from a send slot, once) as soon as each of its messages is in a send
    slot, and sets `next_published`: the caller publishes the next chunk's
    task then, so that it claims and books while this chunk's last sends
    wait for their moments, and the limiter does not run dry between chunks.
    With the limiter on, a chunk claims no more than the limiter can book
    within RATE_LIMIT_MAX_WAIT_SECONDS, and a full one that finds it idle
    books its first moment IDLE_START_SECONDS ahead.
    """
    limit = rate_limit_from_settings()
    size = chunk_size(limit)
    result = ChunkResult(chunk_size=size)
    backlog = rate_limit_backlog(limit=limit)
    if backlog > settings.RATE_LIMIT_MAX_WAIT_SECONDS:
        if _due_exists(priority):
            result.retry_in = backlog - settings.RATE_LIMIT_MAX_WAIT_SECONDS / 2
        return result
    if limit.enabled:
        # What the limiter would refuse would only be claimed and put back.
        bookable = math.floor((settings.RATE_LIMIT_MAX_WAIT_SECONDS - backlog) * limit.per_second) + limit.burst
        size = result.chunk_size = min(size, bookable)
    paused = breaker.paused_domains()
    if breaker.ACCOUNT in paused:
        result.paused = True  # the tasks published when it is resumed take the work
        return result
    if limit.enabled:
        _slots_prepare(settings.EMAIL_PROVIDER)
    now = timezone.now()
    with transaction.atomic():  # the claim commits with its rows read, before any send
        index_lookups()
        if journal.heartbeat_due():  # a claim is never taken by a process the sweeper would think dead
            journal.heartbeat_write()
        claimed = status.messages_claim(
            priorities=PRIORITY_ORDER[: PRIORITY_ORDER.index(priority) + 1], limit=size, now=now,
            claimed_by=journal.process_token(), paused_domains=paused,
        )
        outgoing = _load(claimed) if claimed else {}
    result.claimed = len(claimed)
    if not claimed:
        return result
    journal.claims_hold(claimed, beat=recorded is not None)
    full = limit.enabled and len(claimed) >= size
    all_taken = None
    if next_chunk is not None and full:

        def all_taken() -> None:
            result.next_published = True
            next_chunk()

    outcomes, context = _send_all(
        outgoing, limit=limit, journaled=recorded is not None, all_taken=all_taken,
        idle_start=min(IDLE_START_SECONDS, settings.RATE_LIMIT_MAX_WAIT_SECONDS) if full and len(claimed) > 1 else 0.0,
    )
    if context.account_stop is not None:
        # Every worker stops claiming; what this chunk did not send waits, unattempted.
        error = context.account_stop
        if isinstance(error, AccountStoppedError):
            breaker.provider_stopped(reason=error.reason)
        else:
            breaker.quota_spent(reason=error.reason)
    if recorded is None:
        _chunk_record(outgoing, outcomes, result, journaled=False)
    else:
        _record_in_background(outgoing, outcomes, result, recorded)
    return result


def _chunk_record(
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

_recorder: ThreadPoolExecutor | None = None
_recorder_pid = 0
_recording: Future | None = None


def _record_in_background(
    outgoing: dict[int, Outgoing], outcomes: dict[int, SendOutcome], result: ChunkResult,
    recorded: Callable[[ChunkResult], None],
) -> None:
    """Hand the chunk to this process's recorder thread, after the previous
    chunk's record is done: at most one chunk per process waits to be recorded."""
    global _recorder, _recorder_pid, _recording
    with _executor_lock:
        if _recorder is None or _recorder_pid != os.getpid():
            _recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="record")
            _recorder_pid, _recording = os.getpid(), None
    recordings_wait()
    _recording = _recorder.submit(contextvars.copy_context().run, _record_job, outgoing, outcomes, result, recorded)


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
            _chunk_record(outgoing, outcomes, counted, journaled=True)
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
    pending = _recording if _recorder_pid == os.getpid() else None
    if pending is not None:
        try:
            pending.result(timeout=timeout)
        except FutureTimeout:
            logger.warning("a delivery chunk is still being recorded; the sweeper records it if this process ends")


def _due_exists(priority: str) -> bool:
    levels = PRIORITY_ORDER[: PRIORITY_ORDER.index(priority) + 1]
    return Message.objects.filter(
        state__in=[WorkState.SCHEDULED, WorkState.QUEUED], priority__in=levels, next_attempt_at__lte=timezone.now()
    ).exists()


_OUTGOING_COLUMNS = (
    "id", "email_id", "group_id", "attempts", "priority", "provider", "from_email", "from_name", "reply_to",
    "subject", "html", "text", "headers", "tags", "metadata", "sent_at",
)
_OUTGOING_JSON = tuple(_OUTGOING_COLUMNS.index(name) for name in ("reply_to", "headers", "tags", "metadata"))


def _load(message_ids: list[int]) -> dict[int, Outgoing]:
    """The claimed messages with their pending recipients, attachments and
    suppressed addresses. On PostgreSQL three plain statements read straight
    into the engine's rows (no model layer per row); elsewhere the ORM."""
    if connection.vendor == "postgresql":
        outgoing = _load_rows(message_ids)
    else:
        rows = Message.objects.filter(pk__in=message_ids).values_list(*_OUTGOING_COLUMNS)
        outgoing = {row[0]: Outgoing(*row) for row in rows}
        pending = Recipient.objects.filter(message_id__in=message_ids, status__in=PENDING_STATUSES).values_list(
            "id", "message_id", "email", "name", "role"
        )
        for recipient_id, message_id, email, name, role in pending.order_by("id"):
            outgoing[message_id].recipients.append(OutgoingRecipient(recipient_id, email, name, role))
        for message_id, filename, content_type, content in Attachment.objects.filter(
            message_id__in=message_ids
        ).values_list("message_id", "filename", "content_type", "content").order_by("id"):
            outgoing[message_id].attachments.append(OutgoingAttachment(filename, content_type, bytes(content)))
    suppressed = suppressed_addresses(addresses=list({r.email for o in outgoing.values() for r in o.recipients}))
    if suppressed:
        for message in outgoing.values():
            keep = []
            for recipient in message.recipients:
                if recipient.email in suppressed:
                    message.suppressed[recipient.id] = f"suppressed ({suppressed[recipient.email]})"
                else:
                    keep.append(recipient)
            message.recipients = keep
    return outgoing


def _load_rows(message_ids: list[int]) -> dict[int, Outgoing]:
    outgoing: dict[int, Outgoing] = {}
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(_OUTGOING_COLUMNS)} FROM {Message._meta.db_table} WHERE id = ANY(%s)", [message_ids]
        )
        for row in cursor.fetchall():
            row = list(row)
            for index in _OUTGOING_JSON:  # jsonb arrives as its text (Django's loader)
                if isinstance(row[index], str | bytes):
                    row[index] = orjson.loads(row[index])
            outgoing[row[0]] = Outgoing(*row)
        cursor.execute(
            f"SELECT id, message_id, email, name, role FROM {Recipient._meta.db_table} "
            "WHERE message_id = ANY(%s) AND status = ANY(%s) ORDER BY id",
            [message_ids, sorted(PENDING_STATUSES)],
        )
        for recipient_id, message_id, email, name, role in cursor.fetchall():
            outgoing[message_id].recipients.append(OutgoingRecipient(recipient_id, email, name, role))
        cursor.execute(
            f"SELECT message_id, filename, content_type, content FROM {Attachment._meta.db_table} "
            "WHERE message_id = ANY(%s) ORDER BY id",
            [message_ids],
        )
        for message_id, filename, content_type, content in cursor.fetchall():
            outgoing[message_id].attachments.append(OutgoingAttachment(filename, content_type, bytes(content)))
    return outgoing


# --- Sending ---------------------------------------------------------------------------

# A rate-limited slot that wakes more than half an emission interval after its
# booked moment books a new one: sent late, it would reach the provider bunched
# with the sends booked after it, above the rate in that second. Never less
# than LATE_WAKE_MIN_SECONDS, the jitter of a busy process: at high rates
# re-booking that often would cost more of the rate than the bunching does.
LATE_WAKE_INTERVALS = 0.5
LATE_WAKE_MIN_SECONDS = 0.005
# A full chunk that finds the limiter idle books its first moment this far
# ahead: the other chunks of its batch, published with it, claim and start
# their slots meanwhile. Done while the first sends go out, that work (CPU,
# database) would delay them, and they would reach the provider bunched in
# the first second. Smaller chunks (a single email) start at once.
IDLE_START_SECONDS = 0.1

_executor: ThreadPoolExecutor | None = None
_executor_pid = 0
_executor_lock = threading.Lock()


def _send_pool() -> ThreadPoolExecutor:
    """The send slots of this process (made after fork: threads do not survive one)."""
    global _executor, _executor_pid
    with _executor_lock:
        if _executor is None or _executor_pid != os.getpid():
            _executor = ThreadPoolExecutor(max_workers=settings.DELIVERY_SEND_CONCURRENCY, thread_name_prefix="send")
            _executor_pid = os.getpid()
        return _executor


@dataclass
class _ChunkContext:
    limit: RateLimit
    deadline: float
    # Whether each answer is written to the delivery journal before the slot
    # goes on (in a worker; a chunk run in place is recorded before it returns).
    journaled: bool = False
    # Set when the provider says the whole account cannot send (paused, daily
    # quota): the rest of the chunk is put back without trying, and the account
    # is paused for every worker.
    account_stop: DeliveryError | None = None
    # Why the rest of the chunk starts no sends: the journal could not keep an
    # answer, or this process's lease on its claims is running out.
    stopped: str = ""
    # With the limiter idle, the first moment is booked this far ahead.
    idle_start: float = 0.0


def _send_all(
    outgoing: dict[int, Outgoing], *, limit: RateLimit, journaled: bool = False,
    all_taken: Callable[[], None] | None = None, idle_start: float = 0.0,
) -> tuple[dict[int, SendOutcome], _ChunkContext]:
    """Send the chunk in this process's send slots; `all_taken` is called once
    every message is in a slot (the last one taken, not yet sent)."""
    context = _ChunkContext(
        limit=limit, deadline=time.monotonic() + settings.DELIVERY_CHUNK_MAX_SECONDS, journaled=journaled,
        idle_start=idle_start,
    )
    outcomes = {pk: SendOutcome() for pk, message in outgoing.items() if not message.recipients}
    sendable = [message for message in outgoing.values() if message.recipients]
    if len(sendable) == 1:  # a single email: no hop through the pool
        if all_taken is not None:
            all_taken()
        outcomes[sendable[0].pk] = _send_slot(sendable[0], context)
    elif sendable:
        # Each slot takes the chunk's next message until none is left: one hand-off
        # per slot, not per message. deque.popleft is atomic under threads.
        waiting, last = deque(sendable), sendable[-1]

        def slot() -> list[tuple[int, SendOutcome]]:
            done = []
            while True:
                try:
                    message = waiting.popleft()
                except IndexError:
                    return done
                if message is last and all_taken is not None:  # one slot takes the last message
                    all_taken()
                done.append((message.pk, _send_slot(message, context)))

        pool = _send_pool()
        # Each slot runs in a copy of this thread's context: its log lines carry the task's id.
        slots = [
            pool.submit(contextvars.copy_context().run, slot)
            for _ in range(min(settings.DELIVERY_SEND_CONCURRENCY, len(sendable)))
        ]
        for future in slots:
            outcomes.update(future.result())
    return outcomes, context


def _slots_prepare(provider: str) -> None:
    """Make the connection of every send slot of this process ready (see
    `_send_slot`), before a chunk is claimed: opening connections is the
    costliest part of a send, and done while other slots (of this process or
    another) send, it holds their sends back from their booked moments, at the
    provider and for the CPU (the GIL)."""
    count = settings.DELIVERY_SEND_CONCURRENCY
    ready = threading.Barrier(count)  # holds each job until all run: one per slot thread

    def prepare() -> None:
        with contextlib.suppress(DeliveryError):  # the slot's send reports it
            providers.provider_prepare(provider)
        with contextlib.suppress(threading.BrokenBarrierError):
            ready.wait(timeout=settings.RATE_LIMIT_MAX_WAIT_SECONDS)

    pool = _send_pool()
    for future in [pool.submit(prepare) for _ in range(count)]:
        future.result()


def _send_slot(message: Outgoing, context: _ChunkContext) -> SendOutcome:
    """Send one message and journal the answer before taking the next one.

    With the limiter on, everything but the provider call happens before the
    tokens are booked: the email is built, and the provider connection made
    ready (opened, or checked after idling). From the booked moment on only
    the send remains, so sends reach the provider as evenly spaced as the
    limiter books them. A slot that wakes late for its moment (its process was
    busy) books a new one rather than reach the provider bunched with the sends
    booked after it."""
    if context.account_stop is not None:
        return SendOutcome(released_for=0.0, reason=f"sending paused: {context.account_stop.reason}")
    if context.stopped:
        return SendOutcome(released_for=settings.DELIVERY_RETRY_BASE_SECONDS, reason=context.stopped)
    if time.monotonic() > context.deadline:
        return SendOutcome(released_for=0.0, reason="the chunk ran out of time")
    try:
        email = providers.build_email(message, message.recipients, message.attachments)
    except Exception as error:  # building the message failed: our bug, not the provider's
        failure = providers.classify(error)
        logger.error("delivery failed on our side email_id=%s: %s", message.email_id, failure.reason, exc_info=error)
        outcome = _outcome_of_error(message, failure, context)
        _journal_write(message, outcome, context)
        return outcome
    if context.limit.enabled:
        try:
            providers.provider_prepare(message.provider)
        except DeliveryError as error:  # as if the send failed, without spending tokens on it
            outcome = _provider_failure(message, error, context)
            _journal_write(message, outcome, context)
            return outcome
    for booking in range(2):
        asked = time.monotonic()
        try:
            granted, wait = rate_limit_reserve(
                limit=context.limit, tokens=len(message.recipients), max_wait=settings.RATE_LIMIT_MAX_WAIT_SECONDS,
                idle_start=context.idle_start,
            )
        except RedisError as error:
            # No limiter, no send: sending blind could exceed the account's rate.
            _limiter_outage.failed(error, action="emails wait until it answers")
            return SendOutcome(released_for=settings.DELIVERY_RETRY_BASE_SECONDS, reason=f"rate limiter unavailable: {error}")
        _limiter_outage.succeeded()
        if not granted:
            # Due again while the limiter still has work booked (as a task's retry_in):
            # a task then claims it and books right behind, leaving no gap.
            return SendOutcome(
                released_for=max(wait - settings.RATE_LIMIT_MAX_WAIT_SECONDS / 2, 0.0), released_at=timezone.now(),
                reason="waiting for the send rate limit",
            )
        if not context.limit.enabled:
            break
        # The limiter's clock gave the wait between `asked` and the moment this
        # thread read the answer: an answer read late (a busy process) must not
        # make the send late as well.
        moment = asked + wait
        if (pause := moment - time.monotonic()) > 0:
            time.sleep(pause)
        late = time.monotonic() - moment
        if booking or late <= max(LATE_WAKE_INTERVALS / context.limit.per_second, LATE_WAKE_MIN_SECONDS):
            break
        # The token's moment has passed unused (a gap, never a bunch); once.
    if not journal.lease_valid():
        # The database has not taken this process's heartbeat for most of the
        # lease: the sweeper may soon give these claims to another process.
        context.stopped = "this process could not renew its claims (no heartbeat reached the database)"
        return SendOutcome(released_for=settings.DELIVERY_RETRY_BASE_SECONDS, reason=context.stopped)
    outcome = _send_one(message, email, context)
    _journal_write(message, outcome, context)
    return outcome


def _send_one(message: Outgoing, email, context: _ChunkContext) -> SendOutcome:
    recipients = message.recipients
    try:
        answer = providers.provider_send(message.provider, email)
    except DeliveryError as error:
        return _provider_failure(message, error, context)
    outcome = SendOutcome(provider_message_id=answer.provider_message_id, sent_at=timezone.now())
    for recipient in recipients:
        refusal = answer.refused.get(recipient.email)
        if refusal is None:
            outcome.sent.append(recipient.id)
        elif isinstance(refusal, TransientDeliveryError):
            outcome.deferred[recipient.id] = refusal.reason
        else:
            outcome.failed[recipient.id] = refusal.reason
    if answer.refused:
        outcome.reason = "; ".join(error.reason for error in answer.refused.values())
    return outcome


def _provider_failure(message: Outgoing, error: DeliveryError, context: _ChunkContext) -> SendOutcome:
    if isinstance(error, InternalDeliveryError):
        logger.error("delivery failed on our side email_id=%s: %s", message.email_id, error.reason, exc_info=error)
    return _outcome_of_error(message, error, context)


def _outcome_of_error(message: Outgoing, error: DeliveryError, context: _ChunkContext) -> SendOutcome:
    ids = [recipient.id for recipient in message.recipients]
    if isinstance(error, AccountStoppedError) or (isinstance(error, TransientDeliveryError) and error.wait_seconds):
        # The account, not this message: paused or its daily quota spent. The
        # message waits unattempted (the pause holds every worker back).
        context.account_stop = error
        return SendOutcome(released_for=0.0, reason=error.reason)
    if isinstance(error, TransientDeliveryError):
        return SendOutcome(deferred=dict.fromkeys(ids, error.reason), reason=error.reason)
    return SendOutcome(failed=dict.fromkeys(ids, error.reason), reason=error.reason)


# --- The journal -------------------------------------------------------------------------

_limiter_outage = outage("Redis")


def _journal_write(message: Outgoing, outcome: SendOutcome, context: _ChunkContext) -> None:
    """In a worker: keep the provider's answer in the delivery journal before the
    slot takes its next message, where the sweeper finds it if this process dies
    before recording it. If the database cannot take it, the answer waits in
    memory for the recorder and the chunk starts no more sends."""
    if outcome.released_for is not None or not context.journaled:
        return
    if not journal.journal_write(message_id=message.pk, attempt=message.attempts, outcome=outcome.journal()):
        context.stopped = "the delivery journal is unavailable (database)"


def journal_read(*, message_id: int, attempt: int) -> SendOutcome | None:
    """The journaled answer of this attempt of a message, if one was written."""
    entry = journal.journal_entries(message_ids=[message_id]).get(message_id)
    if entry is None or entry[0] != attempt:
        return None
    return SendOutcome.from_journal(entry[1])


# --- Recording ---------------------------------------------------------------------------


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
    message = _load([message_id]).get(message_id)
    if message is None:
        return
    message.suppressed = {}  # what was sent was sent, whatever was suppressed since
    _record({message_id: message}, {message_id: outcome}, ChunkResult(), claimed_by=None)
