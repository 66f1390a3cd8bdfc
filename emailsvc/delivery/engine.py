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

The steps live in emailsvc.delivery.chunks (a claim's rows), .slots (the
sends) and .recording (the record and the recorder thread); this module ties
them together.

A worker killed between a provider's answer and step 4 leaves the journal: the
sweeper records what it holds once the process's lease runs out. Only the sends
in flight at the moment of the kill (at most DELIVERY_SEND_CONCURRENCY per
process) have no journal entry; those messages are sent again — the one window
for a duplicate. A chunk whose journal entry the database refuses starts no
more sends, so the window stays the same while the database is away.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.sql import index_lookups
from emailsvc import status
from emailsvc.delivery import journal
from emailsvc.delivery.chunks import PRIORITY_ORDER, ChunkResult, chunk_load, due_exists
from emailsvc.delivery.recording import chunk_record, record_in_background
from emailsvc.delivery.slots import IDLE_START_SECONDS, send_all, slots_prepare
from emailsvc.models import Priority
from emailsvc.providers import AccountStoppedError
from emailsvc.sending_control import breaker
from emailsvc.sending_control.ratelimit import RateLimit, rate_limit_backlog, rate_limit_from_settings
from emailsvc.streams.sending import stream_rate_limits, stream_share_chunk_size


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
        if due_exists(priority):
            result.retry_in = backlog - settings.RATE_LIMIT_MAX_WAIT_SECONDS / 2
        return result
    if limit.enabled:
        # What the limiter would refuse would only be claimed and put back.
        bookable = math.floor((settings.RATE_LIMIT_MAX_WAIT_SECONDS - backlog) * limit.per_second) + limit.burst
        size = result.chunk_size = min(size, bookable)
    stream_limits = stream_rate_limits(limit)
    if priority == Priority.LOW and (share_size := stream_share_chunk_size(stream_limits)) is not None:
        # Streams with a share of the rate (broadcast) send at low priority: a chunk of
        # them holds its process only while its share books (emailsvc.streams.sending).
        size = result.chunk_size = min(size, share_size)
    paused = breaker.pauses_active()
    if breaker.ACCOUNT in paused.domains:
        result.paused = True  # the tasks published when it is resumed take the work
        return result
    if limit.enabled:
        slots_prepare(settings.EMAIL_PROVIDER)
    now = timezone.now()
    with transaction.atomic():  # the claim commits with its rows read, before any send
        index_lookups()
        if journal.heartbeat_due():  # a claim is never taken by a process the sweeper would think dead
            journal.heartbeat_write()
        claimed = status.messages_claim(
            priorities=PRIORITY_ORDER[: PRIORITY_ORDER.index(priority) + 1], limit=size, now=now,
            claimed_by=journal.process_token(), paused_domains=paused.domains, paused_streams=paused.streams,
        )
        outgoing = chunk_load(claimed) if claimed else {}
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

    outcomes, context = send_all(
        outgoing, limit=limit, journaled=recorded is not None, all_taken=all_taken,
        idle_start=min(IDLE_START_SECONDS, settings.RATE_LIMIT_MAX_WAIT_SECONDS) if full and len(claimed) > 1 else 0.0,
        stream_limits=stream_limits,
    )
    if context.account_stop is not None:
        # Every worker stops claiming; what this chunk did not send waits, unattempted.
        error = context.account_stop
        if isinstance(error, AccountStoppedError):
            breaker.provider_stopped(reason=error.reason)
        else:
            breaker.quota_spent(reason=error.reason)
    if recorded is None:
        chunk_record(outgoing, outcomes, result, journaled=False)
    else:
        record_in_background(outgoing, outcomes, result, recorded)
    return result
