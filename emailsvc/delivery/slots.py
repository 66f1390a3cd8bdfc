"""The send slots of a process: each takes the chunk's next message, builds it,
books its moment from the rate limiter, hands it to the provider over the
slot's kept-open connection, and (in a worker) journals the answer before it
takes the next one (emailsvc.delivery.journal)."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.utils import timezone
from redis.exceptions import RedisError

from core.outages import outage
from core.threads import process_pool
from emailsvc import providers
from emailsvc.delivery import journal
from emailsvc.delivery.chunks import Outgoing, SendOutcome
from emailsvc.models import Provider
from emailsvc.providers import (
    AccountStoppedError,
    DeliveryError,
    InternalDeliveryError,
    TransientDeliveryError,
)
from emailsvc.sending_control.ratelimit import RateLimit, rate_limit_reserve
from emailsvc.streams.sending import stream_rate_limits, stream_share_max_wait

# The engine's lines keep one logger name, whichever of its modules writes them.
logger = logging.getLogger("emailsvc.delivery.engine")

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

_limiter_outage = outage("Redis")


def _send_pool() -> ThreadPoolExecutor:
    """The send slots of this process (core.threads: made anew in a forked child)."""
    return process_pool("send", workers=settings.DELIVERY_SEND_CONCURRENCY)


@dataclass
class ChunkContext:
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
    # The buckets of streams limited to a share of the rate (emailsvc.streams.sending).
    stream_limits: dict[str, RateLimit] = field(default_factory=dict)


def send_all(
    outgoing: dict[int, Outgoing], *, limit: RateLimit, journaled: bool = False,
    all_taken: Callable[[], None] | None = None, idle_start: float = 0.0,
    stream_limits: dict[str, RateLimit] | None = None,
) -> tuple[dict[int, SendOutcome], ChunkContext]:
    """Send the chunk in this process's send slots; `all_taken` is called once
    every message is in a slot (the last one taken, not yet sent)."""
    context = ChunkContext(
        limit=limit, deadline=time.monotonic() + settings.DELIVERY_CHUNK_MAX_SECONDS, journaled=journaled,
        idle_start=idle_start, stream_limits=stream_rate_limits(limit) if stream_limits is None else stream_limits,
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


def slots_prepare(provider: str) -> None:
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


def _send_slot(message: Outgoing, context: ChunkContext) -> SendOutcome:
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
    if message.provider == Provider.TEST:
        # A test key's email reaches no provider: it takes no tokens (emailsvc.providers.testmode).
        outcome = _send_one(message, email, context)
        _journal_write(message, outcome, context)
        return outcome
    if context.limit.enabled:
        try:
            providers.provider_prepare(message.provider)
        except DeliveryError as error:  # as if the send failed, without spending tokens on it
            outcome = _provider_failure(message, error, context)
            _journal_write(message, outcome, context)
            return outcome
    if (stream_limit := context.stream_limits.get(message.stream)) is not None:
        refused = _stream_share_wait(message, stream_limit)
        if refused is not None:
            return refused
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


def _stream_share_wait(message: Outgoing, limit: RateLimit) -> SendOutcome | None:
    """Book the email's moment in its stream's bucket and sleep until it comes
    (then the global limiter books as for any email); a released outcome when
    the stream's share is booked too far ahead."""
    asked = time.monotonic()
    try:
        granted, wait = rate_limit_reserve(
            limit=limit, tokens=len(message.recipients), max_wait=stream_share_max_wait()
        )
    except RedisError as error:
        _limiter_outage.failed(error, action="emails wait until it answers")
        return SendOutcome(released_for=settings.DELIVERY_RETRY_BASE_SECONDS, reason=f"rate limiter unavailable: {error}")
    if not granted:
        return SendOutcome(
            released_for=max(wait - stream_share_max_wait() / 2, 0.0), released_at=timezone.now(),
            reason=f"waiting for the {message.stream} stream's share of the send rate",
        )
    if (pause := asked + wait - time.monotonic()) > 0:
        time.sleep(pause)
    return None


def _send_one(message: Outgoing, email, context: ChunkContext) -> SendOutcome:
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


def _provider_failure(message: Outgoing, error: DeliveryError, context: ChunkContext) -> SendOutcome:
    if isinstance(error, InternalDeliveryError):
        logger.error("delivery failed on our side email_id=%s: %s", message.email_id, error.reason, exc_info=error)
    return _outcome_of_error(message, error, context)


def _outcome_of_error(message: Outgoing, error: DeliveryError, context: ChunkContext) -> SendOutcome:
    ids = [recipient.id for recipient in message.recipients]
    if isinstance(error, AccountStoppedError) or (isinstance(error, TransientDeliveryError) and error.wait_seconds):
        # The account, not this message: paused or its daily quota spent. The
        # message waits unattempted (the pause holds every worker back).
        context.account_stop = error
        return SendOutcome(released_for=0.0, reason=error.reason)
    if isinstance(error, TransientDeliveryError):
        return SendOutcome(deferred=dict.fromkeys(ids, error.reason), reason=error.reason)
    return SendOutcome(failed=dict.fromkeys(ids, error.reason), reason=error.reason)


def _journal_write(message: Outgoing, outcome: SendOutcome, context: ChunkContext) -> None:
    """In a worker: keep the provider's answer in the delivery journal before the
    slot takes its next message, where the sweeper finds it if this process dies
    before recording it. If the database cannot take it, the answer waits in
    memory for the recorder and the chunk starts no more sends."""
    if outcome.released_for is not None or not context.journaled:
        return
    if not journal.journal_write(message_id=message.pk, attempt=message.attempts, outcome=outcome.journal()):
        context.stopped = "the delivery journal is unavailable (database)"
