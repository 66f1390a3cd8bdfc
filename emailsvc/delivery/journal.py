"""What a delivery process keeps in the database so that its death costs at most
its sends in flight (SPEC §5.4): the journal of provider answers, and the lease
on its claims.

**The journal.** A send slot writes the provider's answer before it takes its
next message. The entries of every slot of a process are written together by
one writer thread (group commit: whatever is waiting goes in one statement, and
each slot waits only for the write that carries its entry). The transaction
that records a chunk deletes its entries. A process that dies in between
leaves them for the sweeper, which records them instead of sending again. The
journal lives in the database, not in Redis: a Redis that restarts empty must
not turn every unrecorded send into a second one. When the database cannot
take an entry, the slot says so and its chunk starts no more sends.

**The lease.** Every claim names its process (`Message.claimed_by`, this
module's `process_token()`). While a process holds claims, its writer thread
beats (`DeliveryProcess.beat_at`) every DELIVERY_HEARTBEAT_SECONDS; the sweeper
recovers the claims of a process that has not beaten for
SWEEP_SENDING_AFTER_SECONDS. A process that could not beat for that time less
two heartbeats starts no more sends (`lease_valid`), so a recovered claim is
never sent by its old process afterwards, beyond the sends already in flight.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Q
from django.utils import timezone

from core.outages import outage
from core.sql_engine import commit_asynchronously, journal_upsert
from emailsvc.models import DeliveryJournal, DeliveryProcess

logger = logging.getLogger(__name__)

_outage = outage("the database")
RETRY_SECONDS = 1.0


# --- This process ---------------------------------------------------------------------


@dataclass
class _Process:
    pid: int
    token: str
    started_at: object
    lock: threading.Lock = field(default_factory=threading.Lock)
    held: dict[int, int] = field(default_factory=dict)  # message id → claims of it held (1 normally)
    beaten_at: float | None = None  # time.monotonic() of the last beat the database took
    writer: _Writer | None = None


_process: _Process | None = None
_process_lock = threading.Lock()


def _this_process() -> _Process:
    """This process's state (made anew after a fork: a pool child is a process of its own)."""
    global _process
    current = _process
    if current is not None:
        return current
    with _process_lock:
        if _process is None:
            _process = _Process(pid=os.getpid(), token=uuid.uuid4().hex, started_at=timezone.now())
        return _process


def _forget_parent() -> None:
    global _process
    _process = None


# The child of a fork (a Celery pool process) has its own token, claims and writer thread.
os.register_at_fork(after_in_child=_forget_parent)


def process_token() -> str:
    """The name this process's claims carry."""
    return _this_process().token


def lease_seconds() -> float:
    return float(settings.SWEEP_SENDING_AFTER_SECONDS)


def lease_valid() -> bool:
    """Whether this process may start a send for a claim it holds: its last beat
    is recent enough that the sweeper cannot have taken its claims by the time
    the send reaches the provider."""
    beaten_at = _this_process().beaten_at
    allowed = lease_seconds() - 2 * settings.DELIVERY_HEARTBEAT_SECONDS
    return beaten_at is not None and time.monotonic() - beaten_at < allowed


def claims_hold(message_ids: Iterable[int], *, beat: bool = False) -> None:
    """This process holds claims on these messages until `claims_release`.

    With `beat` (a worker's chunk), the writer thread beats from now on while
    they are held (it sleeps while the process holds none, and is started if
    need be): the chunk's sends may all wait longer for their tokens than the
    lease allows before the first answer is written."""
    process = _this_process()
    with process.lock:
        for message_id in message_ids:
            process.held[message_id] = process.held.get(message_id, 0) + 1
    if beat:
        _writer(process).wake()


def claims_release(message_ids: Iterable[int]) -> None:
    process = _this_process()
    with process.lock:
        for message_id in message_ids:
            left = process.held.get(message_id, 0) - 1
            if left > 0:
                process.held[message_id] = left
            else:
                process.held.pop(message_id, None)


def heartbeat_due() -> bool:
    beaten_at = _this_process().beaten_at
    return beaten_at is None or time.monotonic() - beaten_at >= settings.DELIVERY_HEARTBEAT_SECONDS / 2


def heartbeat_write() -> None:
    """Beat now, in the caller's transaction (the claim's: a claim is never
    taken by a process the sweeper would think dead)."""
    process = _this_process()
    now = timezone.now()
    DeliveryProcess.objects.bulk_create(
        [DeliveryProcess(token=process.token, hostname=socket.gethostname()[:255], pid=process.pid,
                         started_at=process.started_at, beat_at=now)],
        update_conflicts=True, unique_fields=["token"], update_fields=["beat_at"],
    )
    # Taken as beaten now: the caller is the claim's transaction (whose claims
    # fail with it) or the writer thread (which puts the old value back if this fails).
    process.beaten_at = time.monotonic()


def live_tokens(*, now) -> set[str]:
    """The processes that beat within the lease."""
    cutoff = now - timezone.timedelta(seconds=lease_seconds())
    return set(DeliveryProcess.objects.filter(beat_at__gte=cutoff).values_list("token", flat=True))


def processes_forget(*, now) -> int:
    """Remove the rows of processes silent for a day (their claims were recovered long ago)."""
    return DeliveryProcess.objects.filter(beat_at__lt=now - timezone.timedelta(days=1)).delete()[0]


# --- The journal --------------------------------------------------------------------------


@dataclass
class JournalEntry:
    message_id: int
    attempt: int
    outcome: dict


class _Batch:
    """The entries one write carries, and the write's result."""

    def __init__(self) -> None:
        self.entries: list[JournalEntry] = []
        self.done = threading.Event()
        self.ok = False


class _Writer:
    """The writer thread of one process: journal entries and heartbeats."""

    def __init__(self, process: _Process):
        self.process = process
        self.cond = threading.Condition()
        self.batch = _Batch()
        self.stopping = False
        self.retry_at = 0.0  # after a failed write, no beat is tried before this (time.monotonic())
        self.session = None  # the driver connection set up by _commit_asynchronously
        self.thread = threading.Thread(target=self._run, name="journal", daemon=True)
        self.thread.start()

    def write(self, entry: JournalEntry) -> bool:
        with self.cond:
            if self.stopping:
                return False
            batch = self.batch
            batch.entries.append(entry)
            self.cond.notify()
        batch.done.wait()
        return batch.ok

    def wake(self) -> None:
        """Look again at when the next beat is due (claims were taken)."""
        with self.cond:
            self.cond.notify()

    def stop(self, timeout: float) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout)

    def _beat_due(self) -> float | None:
        """Seconds until the next beat is due while claims are held (0: now); None without claims."""
        if not self.process.held:
            return None
        now = time.monotonic()
        beaten_at = self.process.beaten_at
        due = now if beaten_at is None else beaten_at + settings.DELIVERY_HEARTBEAT_SECONDS
        return max(0.0, due - now, self.retry_at - now)

    def _run(self) -> None:
        while True:
            with self.cond:
                while True:
                    due = self._beat_due()
                    if self.batch.entries or due == 0.0 or self.stopping:
                        break
                    self.cond.wait(timeout=due)
                batch, self.batch = self.batch, _Batch()
                stopping = self.stopping and not batch.entries
            if stopping:
                batch.done.set()
                connection.close()
                return
            beat = self._beat_due() == 0.0
            batch.ok = self._flush(batch.entries, beat=beat)
            batch.done.set()

    def _flush(self, entries: list[JournalEntry], *, beat: bool) -> bool:
        beaten_at = self.process.beaten_at
        try:
            # Each its own statement in autocommit: one round trip and one commit
            # for the entries of every slot waiting now.
            if connection.connection is None or connection.connection is not self.session:
                _commit_asynchronously()
                self.session = connection.connection
            if entries:
                _entries_insert(entries)
            if beat:
                heartbeat_write()
        except DatabaseError as error:
            self.process.beaten_at = beaten_at
            self.retry_at = time.monotonic() + RETRY_SECONDS  # then a beat every second until it answers
            _outage.failed(error, action="delivery starts no new sends until it answers; each chunk's answers wait to be recorded")
            connection.close()  # a broken connection is not used again
            return False
        _outage.succeeded()
        return True


def _entries_insert(entries: list[JournalEntry]) -> None:
    """Upsert the entries in one statement (core.sql_engine.journal_upsert)."""
    journal_upsert(DeliveryJournal, [(e.message_id, e.attempt, e.outcome) for e in entries])


def _commit_asynchronously() -> None:
    """This thread's PostgreSQL session commits without waiting for its WAL to
    reach the disk (synchronous_commit = off): the journal writer's. A commit it
    reported can then be lost only if the PostgreSQL server itself crashes
    within about three wal_writer_delay (600 ms by default) — and an answer is
    only needed from the journal if its worker dies too, before recording it.
    Waiting for the disk at every write would hold every send slot back."""
    commit_asynchronously()


def journal_write(*, message_id: int, attempt: int, outcome: dict) -> bool:
    """Keep this answer until its chunk is recorded; True once the database has
    it. Blocks for one group write of this process's writer thread. False when
    the database could not take it (the caller starts no more sends)."""
    return _writer(_this_process()).write(JournalEntry(message_id, attempt, outcome))


def _writer(process: _Process) -> _Writer:
    writer = process.writer
    if writer is None:
        with process.lock:
            if process.writer is None:
                process.writer = _Writer(process)
            writer = process.writer
    return writer


def journal_entries(*, message_ids: list[int]) -> dict[int, tuple[int, dict]]:
    """{message id: (attempt, outcome)} of the entries kept for these messages."""
    return {
        message_id: (attempt, outcome)
        for message_id, attempt, outcome in DeliveryJournal.objects.filter(message_id__in=message_ids).values_list(
            "message_id", "attempt", "outcome"
        )
    }


def journal_delete(*, attempts: dict[int, int]) -> None:
    """Delete the entries of these (message id → attempt) and of their earlier
    attempts, in the caller's transaction: the one that records them. An entry
    of a later attempt (another process's, after the sweeper took the claim) stays."""
    if not attempts:
        return
    by_attempt: dict[int, list[int]] = {}
    for message_id, attempt in attempts.items():
        by_attempt.setdefault(attempt, []).append(message_id)
    condition = Q()
    for attempt, message_ids in by_attempt.items():
        condition |= Q(message_id__in=message_ids, attempt__lte=attempt)
    DeliveryJournal.objects.filter(condition).delete()


def shutdown(*, timeout: float = 10) -> None:
    """The process is exiting: write what waits, stop the writer thread, and,
    holding no claims, say so (its row goes: nothing of it is left to recover)."""
    process = _process
    if process is None or process.pid != os.getpid():
        return
    if process.writer is not None:
        process.writer.stop(timeout)
        process.writer = None
    if not process.held and process.beaten_at is not None:
        try:
            DeliveryProcess.objects.filter(token=process.token).delete()
        except DatabaseError:
            pass  # the row expires with its lease
        finally:
            connection.close()
