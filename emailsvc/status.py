"""The one owner of recipient and message status transitions (SPEC §3).

Every write of `Recipient.status`, `Message.status` and `Message.state` goes
through this module, set-based, and each recipient transition appends one
`StatusChange` row in the same transaction. Callers decide *what* should happen
(the delivery engine, event apply, cancel, the sweeper); this module holds the
rules (the status provider facts show, the soft-bounce rule, a message's
summary), writes the columns and records the changes.

What reads the changes — the Prometheus counters, the safety breaker's
hourly counts, and the receivers of `changes_committed` (the webhook
dispatcher's wake-up) — is handed the StatusChange rows once their transaction
commits (`status_changes_committed`), never called from inside the writer.

Lock order, the same for every writer: message rows by id, then their
recipients. PostgreSQL gets `FOR UPDATE`; SQLite serialises writers anyway
(IMMEDIATE transactions).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import NamedTuple

from django.db import transaction
from django.dispatch import Signal

from core import metrics
from core.sql import index_lookups, rows_update
from core.sql_engine import rows_claim, rows_lock, status_changes_insert
from emailsvc.models import (
    CANCELLABLE_STATES,
    CLAIMABLE_STATES,
    NOT_SENT_STATUSES,
    PENDING_STATUSES,
    PRECEDENCE,
    Message,
    Provider,
    Recipient,
    Status,
    StatusChange,
    WorkState,
)
from emailsvc.sending_control.counts import sending_counts_add

# Sent after a transaction that wrote StatusChange rows commits, with `changes` (the rows).
changes_committed = Signal()

# --- Pure rules ---------------------------------------------------------------


def status_from_facts(facts: Recipient) -> str | None:
    """The status a recipient's provider facts show (SPEC §3 precedence), or
    None when there are none.

    The facts only accumulate (tracking.apply folds each event in once), so
    the status derived from all of them never goes back: a late `Send` after a
    `Delivery` still reads `delivered`, a `Delivery` after a hard bounce still
    reads `bounced`, whatever order the events come in. A rejection outranks
    only the states before delivery.
    """
    if facts.complained_at:
        return Status.COMPLAINED
    if facts.bounce and facts.bounce.get("type") == "Permanent":
        return Status.BOUNCED
    if facts.click_count:
        return Status.CLICKED
    if facts.open_count:
        return Status.OPENED
    if facts.delivered_at:
        return Status.DELIVERED
    if facts.rejected_at:
        return Status.FAILED
    if facts.bounce:
        return Status.SOFT_BOUNCED
    if facts.delayed:
        return Status.DELAYED
    if facts.sent_at:
        return Status.SENT
    return None


def status_after_event(facts: Recipient, *, is_retry: bool) -> tuple[str | None, dict]:
    """The status a recipient moves to once an event is folded into its facts,
    and the other columns written with that change.

    A soft bounce earns an email one re-send (SPEC §6.4); the re-send
    (`is_retry`: its message is a `retry_of` another) bouncing softly too is
    `failed`, with the bounce's subtype as its reason, and is not sent again.
    """
    derived = status_from_facts(facts)
    if derived == Status.SOFT_BOUNCED and is_retry:
        subtype = (facts.bounce or {}).get("subtype", "")
        return Status.FAILED, {"failed_reason": f"soft-bounced again: {subtype}".strip()}
    return derived, {}


def summarize(statuses: Iterable[str]) -> str:
    """A message's status from its recipients'.

    The most advanced status among the recipients that were handed to the
    provider; when none was, failed before cancelled before suppressed (an
    email the caller cancelled reads `cancelled` even if one of its addresses
    was suppressed).
    """
    statuses = list(statuses)
    progressed = [s for s in statuses if s not in NOT_SENT_STATUSES]
    if progressed:
        return max(progressed, key=lambda s: PRECEDENCE.get(s, 0))
    for terminal in (Status.FAILED, Status.CANCELLED, Status.SUPPRESSED):
        if terminal in statuses:
            return terminal
    return Status.QUEUED


def displayed_status(statuses: Iterable[str], state: str) -> str:
    """What a message shows: its recipients' summary, and `sending` while a
    worker holds a claim on a message none of whose recipients has moved on."""
    summary = summarize(statuses)
    if summary in (Status.QUEUED, Status.SCHEDULED):
        if state == WorkState.SENDING:
            return Status.SENDING
        if state == WorkState.SCHEDULED:
            return Status.SCHEDULED
    return summary


# --- Transitions --------------------------------------------------------------


@dataclass(frozen=True)
class RecipientChange:
    """Move one recipient to `to`, if its current status is in `only_from`
    (None: from any status other than `to` — statuses derived from provider
    facts). `fields` are other Recipient columns written with the change, and
    only when the change happens."""

    recipient_id: int
    to: str
    cause: str
    only_from: frozenset[str] | None = PENDING_STATUSES
    fields: dict = field(default_factory=dict)
    detail: dict = field(default_factory=dict)


@dataclass
class Applied:
    """What `changes_apply` wrote."""

    changes: list[StatusChange] = field(default_factory=list)
    message_status: dict[int, str] = field(default_factory=dict)
    message_state: dict[int, str] = field(default_factory=dict)


def changes_apply(
    *,
    message_ids: Iterable[int],
    recipient_changes: Sequence[RecipientChange] = (),
    message_fields: dict[int, dict] | None = None,
    recipient_fields: dict[int, dict] | None = None,
    locked: dict[int, LockedMessage] | None = None,
    recipients_read: Iterable[tuple[int, int, str, str]] | None = None,
    at: datetime,
) -> Applied:
    """Apply recipient transitions and message updates for `message_ids`, set-based.

    `message_fields` maps a message id to Message columns to write (`state`,
    `next_attempt_at`, `provider_message_id`, …); each message's `status` is
    then derived from its recipients and its (new) state. Runs in one
    transaction (the caller's, if any): locks the messages, reads their
    recipients, writes the changed recipients, the StatusChange rows and the
    messages — five statements whatever the number of rows.

    `recipient_fields` maps a recipient id to other Recipient columns to write
    in the same statement (an event's facts), status change or not; a change's
    own `fields` come after them. `locked`: what `messages_lock` returned for
    these messages earlier in this transaction (they are not locked again, and
    no savepoint is taken: a failure here fails that transaction as a whole).
    `recipients_read`: (id, message id, address, status) of every recipient of
    these messages, read after that lock in this transaction (not read again).
    """
    message_fields = message_fields or {}
    ids = sorted(set(message_ids) | set(message_fields))
    if not ids:
        return Applied()
    with transaction.atomic(savepoint=locked is None):
        index_lookups()
        messages = locked if locked is not None and locked.keys() >= set(ids) else messages_lock(ids)
        if locked is not None and recipients_read is not None:
            wanted = set(ids)
            recipients = sorted(row for row in recipients_read if row[1] in wanted)
        else:
            recipients = list(
                Recipient.objects.filter(message_id__in=ids).order_by("id").values_list("id", "message_id", "email", "status")
            )
        current = {rid: (mid, email, status) for rid, mid, email, status in recipients}
        changed_rows: dict[int, dict] = {
            rid: dict(fields) for rid, fields in (recipient_fields or {}).items() if rid in current and fields
        }
        changes: list[StatusChange] = []
        for change in recipient_changes:
            if change.recipient_id not in current:
                continue
            message_id, email, status = current[change.recipient_id]
            if status == change.to or (change.only_from is not None and status not in change.only_from):
                continue
            current[change.recipient_id] = (message_id, email, change.to)
            row = changed_rows.setdefault(change.recipient_id, {})
            row.update(change.fields)
            row["status"] = change.to
            changes.append(
                StatusChange(
                    message_id=message_id,
                    recipient_id=change.recipient_id,
                    email=email,
                    from_status=status,
                    to_status=change.to,
                    at=at,
                    cause=change.cause,
                    detail=change.detail,
                    test=message_id in messages and messages[message_id].provider == Provider.TEST,
                )
            )
        if changed_rows:
            rows_update(Recipient, dict(sorted(changed_rows.items())), at=at)  # in id order, as every writer
        if changes:
            _changes_record(changes, messages={mid: messages[mid].facts for mid in ids if mid in messages})

        by_message: dict[int, list[str]] = {mid: [] for mid in ids}
        for message_id, _email, status in current.values():
            by_message[message_id].append(status)
        applied = Applied(changes=changes)
        message_rows: dict[int, dict] = {}
        for message_id in ids:
            if message_id not in messages:
                continue
            old_status, old_state = messages[message_id].status, messages[message_id].state
            row = dict(message_fields.get(message_id, {}))
            state = row.get("state", old_state)
            status = displayed_status(by_message[message_id], state)
            if status != old_status:
                row["status"] = status
            if row:
                message_rows[message_id] = row
            applied.message_status[message_id] = status
            applied.message_state[message_id] = state
        if message_rows:
            rows_update(Message, message_rows, at=at)
    return applied


def _changes_record(changes: list[StatusChange], *, messages: dict[int, MessageFacts]) -> None:
    """Append the StatusChange rows of this transaction's transitions, and have
    them read once it commits (`status_changes_committed`): every writer of a
    recipient status goes through here, so what the readers count is exactly
    what the table holds.

    One INSERT whatever the number of rows (core.sql_engine).
    """
    status_changes_insert(StatusChange, changes)
    # robust: the changes are committed by then; a reader that fails is logged,
    # and must not turn the writer's committed work into an error for its caller.
    transaction.on_commit(partial(status_changes_committed, changes, messages=messages), robust=True)


def status_changes_committed(changes: Sequence[StatusChange], *, messages: dict[int, MessageFacts]) -> None:
    """Hand committed StatusChange rows to the readers that count them: the
    Prometheus counters and the safety breaker's hourly counts. Runs after the
    writer's transaction commits (a rolled-back change is never counted), never
    from inside it. `messages`: {message id: its sending domain and stream},
    as the writer read them."""
    # A test key's emails never reach the provider: they count in neither the
    # metrics nor the breaker (webhooks still hear of them).
    live = [change for change in changes if not change.test]
    metrics.status_changes_observe(
        (change.to_status, messages[change.message_id].stream) for change in live if change.message_id in messages
    )
    sending_counts_add(changes=live, messages=messages)
    changes_committed.send(sender=StatusChange, changes=changes)


class MessageFacts(NamedTuple):
    """What the readers of a message's status changes count it by."""

    sending_domain: str
    stream: str


class LockedMessage(NamedTuple):
    """A message row as `messages_lock` read it."""

    status: str
    state: str
    sending_domain: str
    attempts: int
    claimed_by: str
    provider: str
    stream: str

    @property
    def facts(self) -> MessageFacts:
        return MessageFacts(self.sending_domain, self.stream)


def messages_lock(ids: list[int]) -> dict[int, LockedMessage]:
    """Lock the messages (in id order, as every writer does) and read
    {id: (status, state, sending domain, attempts, claimed_by, provider, stream)}."""
    return {row[0]: LockedMessage(*row[1:]) for row in rows_lock(Message, ids, LockedMessage._fields)}


# --- The delivery engine's claims ------------------------------------------------


# The statuses a claim shows as `sending`: those of a message none of whose
# recipients has moved on.
_SHOWN_SENDING = (Status.QUEUED, Status.SCHEDULED)


def messages_claim(
    *, priorities: Sequence[str], limit: int, now: datetime, claimed_by: str = "", paused_domains: Sequence[str] = (),
    paused_streams: Sequence[tuple[str, str]] = (),
) -> list[int]:
    """Claim up to `limit` due messages, of the first priority first, then the
    next (oldest due first within each).

    One guarded statement on PostgreSQL (`FOR UPDATE SKIP LOCKED`, so workers
    never wait for each other nor claim the same row); SQLite serialises its
    statements. A claimed message is `sending`, its attempt counted, names the
    process holding it (`claimed_by`), and shows `sending` unless a recipient
    has already moved on. Messages of
    `paused_domains`, and of the (domain, stream) pairs of `paused_streams`,
    are left (they are normally `held`; this also covers one put back by a
    chunk that ran while its domain was being paused). Commits before any send.
    """
    with transaction.atomic():
        claimed = rows_claim(
            Message, waiting=CLAIMABLE_STATES, claimed=WorkState.SENDING, shown=_SHOWN_SENDING, showing=Status.SENDING,
            priorities=priorities, limit=limit, now=now, claimed_by=claimed_by, paused_domains=paused_domains,
            paused_streams=paused_streams,
        )
    return sorted(claimed)


# --- Other transitions ------------------------------------------------------------------


def message_cancel(*, message_id: int, at: datetime) -> bool:
    """Cancel a message the engine has not claimed (scheduled or queued): its
    pending recipients become `cancelled`. False when it was claimed or is done."""
    with transaction.atomic():
        locked = messages_lock([message_id])
        if message_id not in locked or locked[message_id].state not in CANCELLABLE_STATES:
            return False
        pending = (
            Recipient.objects.filter(message_id=message_id, status__in=PENDING_STATUSES).order_by("id").values_list("id", flat=True)
        )
        changes_apply(
            message_ids=[message_id],
            recipient_changes=[RecipientChange(rid, Status.CANCELLED, "cancel") for rid in pending],
            message_fields={message_id: {"state": WorkState.DONE}},
            at=at,
        )
    return True


def _messages_lock_where(*, excluded_streams: Sequence[str] = (), **conditions) -> list[int]:
    """Lock the messages matching `conditions` (and of none of `excluded_streams`)
    in id order (PostgreSQL: ORDER BY id … FOR UPDATE, the order every writer
    takes) and return their ids, sorted."""
    rows = Message.objects.select_for_update().filter(**conditions)
    if excluded_streams:
        rows = rows.exclude(stream__in=excluded_streams)
    return list(rows.order_by("id").values_list("id", flat=True))


def domain_hold(*, domain: str, stream: str | None = None, at: datetime) -> int:
    """A paused domain's waiting messages (scheduled or queued; only those of
    `stream` when given) become `held`: no claim looks at them. How many.
    Their statuses do not change."""
    conditions = {"sending_domain": domain, "state__in": CLAIMABLE_STATES}
    if stream is not None:
        conditions["stream"] = stream
    with transaction.atomic():
        ids = _messages_lock_where(**conditions)
        if not ids:
            return 0
        return Message.objects.filter(pk__in=ids, state__in=CLAIMABLE_STATES).update(state=WorkState.HELD, updated_at=at)


def domain_release(
    *, domain: str | None, stream: str | None = None, still_paused_streams: Sequence[str] = (), at: datetime
) -> list[str]:
    """`held` messages of a resumed domain (all domains when None; only those
    of `stream` when given, none of `still_paused_streams`) are `queued`
    again, each still due at its own next_attempt_at. Their priorities, one
    entry per message, so the caller can publish tasks for them."""
    conditions = {"state": WorkState.HELD} if domain is None else {"state": WorkState.HELD, "sending_domain": domain}
    if stream is not None:
        conditions["stream"] = stream
    with transaction.atomic():
        ids = _messages_lock_where(excluded_streams=still_paused_streams, **conditions)
        if not ids:
            return []
        held = Message.objects.filter(pk__in=ids, state=WorkState.HELD)
        # Those not due yet are scheduled again, so scheduled_publish gives them their ETA task.
        held.filter(next_attempt_at__gt=at).update(state=WorkState.SCHEDULED, updated_at=at)
        priorities = list(held.values_list("priority", flat=True))
        held.update(state=WorkState.QUEUED, updated_at=at)
    return priorities


def submission_statuses(
    *, message: Message, recipients: list[Recipient], suppressed: dict[str, str], scheduled: bool, held: bool = False
) -> None:
    """Set the initial statuses of a message about to be stored (unsaved rows):
    suppressed addresses `suppressed` at once; the rest `scheduled` or `queued`;
    a message with nothing left to send is `done`; one whose sending domain is
    paused is `held` until it is resumed."""
    initial = Status.SCHEDULED if scheduled else Status.QUEUED
    for recipient in recipients:
        if recipient.email in suppressed:
            recipient.status = Status.SUPPRESSED
            recipient.failed_reason = f"suppressed ({suppressed[recipient.email]})"
        else:
            recipient.status = initial
    if all(r.status == Status.SUPPRESSED for r in recipients):
        message.state = WorkState.DONE
    elif held:
        message.state = WorkState.HELD
    else:
        message.state = WorkState.SCHEDULED if scheduled else WorkState.QUEUED
    message.status = displayed_status([r.status for r in recipients], message.state)


def submission_changes_record(*, recipients: Iterable[Recipient], at: datetime) -> int:
    """Record the transitions of stored new recipients that did not stay pending
    (suppressed at the door) — accepted as queued, then suppressed — through
    the one recorder, so they are counted like any other change once the
    submission commits. How many."""
    rows, messages = [], {}
    for recipient in sorted(recipients, key=lambda r: r.pk):
        if recipient.status in PENDING_STATUSES:
            continue
        rows.append(
            StatusChange(
                message_id=recipient.message_id, recipient_id=recipient.pk, email=recipient.email,
                from_status=Status.QUEUED, to_status=recipient.status, at=at, cause="suppressed",
                detail={"reason": recipient.failed_reason}, test=recipient.message.provider == Provider.TEST,
            )
        )
        messages[recipient.message_id] = MessageFacts(recipient.message.sending_domain, recipient.message.stream)
    if rows:
        _changes_record(rows, messages=messages)
    return len(rows)


# Not a recipient status (a recipient keeps the one it has): the change a
# one-click unsubscribe records so that webhooks tell the caller (emailsvc.streams).
UNSUBSCRIBED = "unsubscribed"


def unsubscribe_change_record(*, recipient: Recipient, stream: str, at: datetime) -> None:
    """Record that `recipient` unsubscribed from `stream` (a StatusChange from
    and to its own status, to_status `unsubscribed`), in the caller's transaction."""
    message = recipient.message
    change = StatusChange(
        message_id=recipient.message_id, recipient_id=recipient.pk, email=recipient.email,
        from_status=recipient.status, to_status=UNSUBSCRIBED, at=at, cause="unsubscribe",
        detail={"stream": stream}, test=message.provider == Provider.TEST,
    )
    _changes_record([change], messages={message.pk: MessageFacts(message.sending_domain, message.stream)})
