"""Applying provider events: record each once, fold it into the recipient's facts,
derive the status through emailsvc.status, apply the suppression policy (SPEC §6.3, §6.4)."""

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from core.sql import index_lookups, rows_update
from core.sql_engine import EventRow, counts_among, events_insert, events_unlinked
from emailsvc import status
from emailsvc.models import Message, Recipient, Status, Suppression
from emailsvc.selectors import one_or_none
from emailsvc.submission.submit import message_retries_submit
from emailsvc.suppressions.services import SuppressionRequest, suppressions_ensure
from tracking.models import EngagementEvent, EventType
from tracking.normalize import NormalizedEvent, ses_body_parse, ses_envelope_parse

logger = logging.getLogger(__name__)

# --- Applying one event -----------------------------------------------------


@dataclass(frozen=True)
class AppliedEvent:
    """What applying an event did: `applied` (new, tied to a recipient),
    `unmatched` (new, stored, no known message/recipient) or `duplicate` (seen
    before: no-op)."""

    outcome: str


FACT_FIELDS = [
    "sent_at", "delivered_at", "delayed", "opens", "open_count", "last_opened_at", "clicks", "click_count",
    "bounce", "complained_at", "complaint_feedback_type", "rejected_at", "failed_reason",
]
ORPHAN_RELINK_WINDOW = timedelta(days=1)


def event_apply(*, event: NormalizedEvent, source: str) -> AppliedEvent:
    """Apply one event: `events_apply` with a batch of one."""
    return events_apply(events=[event], source=source)[0]


def events_apply(*, events: Sequence[NormalizedEvent], source: str, replays_checked: bool = False) -> list[AppliedEvent]:
    """Record a batch of normalized events once each and fold them into the facts
    they report, set-based, in one transaction (the caller's, if any).

    Correlates by provider message id, else by the email id in
    X-Emailsvc-Tracking-ID. An event is unique on (event id, recipient): a
    replay, in this batch or any earlier one, changes nothing. Recipient facts
    only accumulate and each status is derived from all of them (SPEC §3), so
    neither the order of events nor how they are batched changes the result.
    Statuses change through emailsvc.status (with their StatusChange rows). A
    hard bounce, a complaint or an unsubscribe-all suppresses the address (an
    existing suppression is kept as it is). Unknown messages are stored with no
    message and counted `unmatched`, never raised. Returns one outcome per
    event, in order. About a dozen statements whatever the batch size (twice
    that with bounces: suppressions, soft-bounce re-sends).

    `replays_checked`: the caller has just left out the events already stored
    (the drain, by `events_stored`), so the look-up for replays is skipped; a
    replay that gets through anyway is still stored once and counted a duplicate.
    """
    keys = [(event.event_id, event.recipient) for event in events]
    first: dict[tuple[str, str], NormalizedEvent] = {}
    for key, event in zip(keys, events):
        first.setdefault(key, event)
    outcome: dict[tuple[str, str], str] = {}
    with transaction.atomic():
        index_lookups()
        seen = set()
        if not replays_checked:
            # A replay is answered by one indexed lookup, before any lock is taken.
            seen = set(
                EngagementEvent.objects.filter(event_id__in={event_id for event_id, _ in first}).values_list(
                    "event_id", "recipient_email"
                )
            )
        fresh = {key: event for key, event in first.items() if key not in seen}
        if fresh:
            outcome = _fresh_apply(fresh, source)
    results, reported = [], set()
    for key in keys:
        # The first of a key gets its outcome; a repeat within the batch is a duplicate.
        results.append(AppliedEvent(outcome=outcome.get(key, "duplicate") if key not in reported else "duplicate"))
        reported.add(key)
    return results


def events_stored(event_ids: set[str]) -> dict[str, int]:
    """How many per-recipient events are stored under each of these event ids
    (an id with none is left out). The events of one provider event are stored
    together, in one transaction, so an id found here was applied whole: what
    carries it again is a replay, and need not even be read."""
    return counts_among(EngagementEvent, "event_id", event_ids)


def _fresh_apply(fresh: dict[tuple[str, str], NormalizedEvent], source: str) -> dict[tuple[str, str], str]:
    now = timezone.now()
    message_of, by_header = _correlate(fresh.values())
    message_ids = sorted(set(message_of.values()))
    # Lock order message → recipient, the same as every other writer.
    locked = status.messages_lock(message_ids)
    recipients = {
        (r.message_id, r.email): r
        for r in Recipient.objects.filter(message_id__in=message_ids).only(
            "id", "message_id", "email", "status", *FACT_FIELDS
        )
    }
    recipient_of = {
        key: recipients.get((message_of[key], event.recipient))
        for key, event in fresh.items()
        if key in message_of and event.recipient
    }
    inserted = _events_insert(fresh, message_of, recipient_of, source, now)
    touched: dict[int, Recipient] = {}
    last_event: dict[int, NormalizedEvent] = {}
    outcome = {}
    for key, event in fresh.items():
        if key not in inserted:
            continue  # another applier stored it first: a duplicate
        recipient = recipient_of.get(key)
        if recipient is None:
            outcome[key] = "unmatched"
            logger.info("event without a known recipient type=%s event_id=%s", event.event_type, event.event_id)
            continue
        outcome[key] = "applied"
        _recipient_apply(recipient, event)
        touched[recipient.pk] = recipient
        previous = last_event.get(recipient.pk)
        if previous is None or (event.occurred_at, event.event_id) >= (previous.occurred_at, previous.event_id):
            last_event[recipient.pk] = event
    retries: set[int] = set()
    if touched:
        facts = {pk: {name: getattr(r, name) for name in FACT_FIELDS} for pk, r in touched.items()}
        derived = {pk: status.status_from_facts(recipient) for pk, recipient in touched.items()}
        if Status.SOFT_BOUNCED in derived.values():  # the soft-bounce rule asks whether the message is a re-send
            retries = {
                pk
                for pk, retry_of in Message.objects.filter(pk__in={r.message_id for r in touched.values()}).values_list(
                    "pk", "retry_of_id"
                )
                if retry_of is not None  # checked here, not in SQL: the lookup stays on the primary key
            }
        changes = []
        for pk, recipient in sorted(touched.items()):
            if derived[pk] is None:
                continue
            event = last_event[pk]
            to, fields = status.status_after_event(recipient, is_retry=recipient.message_id in retries)
            changes.append(
                status.RecipientChange(
                    pk, to, "event", only_from=None, fields=fields,
                    detail={"event_type": event.event_type, "event_id": event.event_id},
                )
            )
        # The facts and the status changes: one UPDATE of the recipients.
        status.changes_apply(
            message_ids={r.message_id for r in touched.values()}, recipient_changes=changes, recipient_fields=facts,
            locked=locked, recipients_read=[(r.pk, r.message_id, r.email, r.status) for r in recipients.values()],
            at=now,
        )
    _provider_ids_learn({key: fresh[key] for key in by_header}, message_of)
    applied = [(key, event) for key, event in fresh.items() if key in inserted]
    suppressions = [request for _, event in applied if (request := _policy_request(event)) is not None]
    soft = [(event, message_of.get(key) if recipient_of.get(key) else None) for key, event in applied if _is_soft_bounce(event)]
    suppressions += _soft_bounces_apply(soft, retries, now)
    suppressions_ensure(requests=suppressions)
    return outcome


SOFT_BOUNCE_SUBTYPES = frozenset({"General", "MailboxFull", "MessageTooLarge", "ContentRejected", "AttachmentRejected"})


def _is_soft_bounce(event: NormalizedEvent) -> bool:
    return (
        event.event_type == EventType.BOUNCE
        and event.detail.get("bounce_type") == "Transient"
        and event.detail.get("bounce_subtype") in SOFT_BOUNCE_SUBTYPES
    )


def _soft_bounces_apply(
    soft: list[tuple[NormalizedEvent, int | None]], retries: set[int], now
) -> list[SuppressionRequest]:
    """Each soft bounce earns its recipient one re-send after
    SOFT_BOUNCE_RETRY_SECONDS (a new email linked to this one); an address
    with SOFT_BOUNCE_LIMIT soft bounces within SOFT_BOUNCE_WINDOW_DAYS is to be
    suppressed (`soft_bounce_limit`): the requests for that are returned. A
    batch's soft bounces together: one retry store, one count query."""
    if not soft:
        return []
    message_retries_submit(
        retries=[(message_id, event.recipient) for event, message_id in soft if message_id is not None and message_id not in retries],
        at=now + timedelta(seconds=settings.SOFT_BOUNCE_RETRY_SECONDS),
    )
    since = now - timedelta(days=settings.SOFT_BOUNCE_WINDOW_DAYS)
    last = {event.recipient: event for event, _ in soft if event.recipient}  # the latest of the batch names the cause
    counts = dict(
        EngagementEvent.objects.filter(
            recipient_email__in=list(last), occurred_at__gte=since, event_type=EventType.BOUNCE,
            detail__bounce_type="Transient",
        ).order_by().values("recipient_email").annotate(count=Count("id")).values_list("recipient_email", "count")
    )
    return [
        SuppressionRequest(
            email=address, reason=Suppression.Reason.SOFT_BOUNCE_LIMIT, source=f"ses:bounce:{event.event_id}",
            note=f"{counts[address]} soft bounces in {settings.SOFT_BOUNCE_WINDOW_DAYS:g} days",
        )
        for address, event in last.items()
        if counts.get(address, 0) >= settings.SOFT_BOUNCE_LIMIT
    ]


def _correlate(events) -> tuple[dict[tuple[str, str], int], set[tuple[str, str]]]:
    """{(event id, recipient): message pk} by provider message id, else by the
    email id of the tracking header; and the keys matched by that header. One
    or two indexed queries (no ORDER BY … LIMIT 1, which a planner with stale
    statistics can turn into a full scan)."""
    events = list(events)
    provider_ids = {e.provider_message_id for e in events if e.provider_message_id}
    by_provider = dict(
        Message.objects.filter(provider_message_id__in=provider_ids).values_list("provider_message_id", "pk")
    ) if provider_ids else {}
    email_ids = {e.email_id for e in events if e.email_id and e.provider_message_id not in by_provider}
    by_email_id = dict(Message.objects.filter(email_id__in=email_ids).values_list("email_id", "pk")) if email_ids else {}
    found, by_header = {}, set()
    for event in events:
        key = (event.event_id, event.recipient)
        pk = by_provider.get(event.provider_message_id)
        if pk is None and (pk := by_email_id.get(event.email_id)) is not None:
            by_header.add(key)
        if pk is not None:
            found[key] = pk
    return found, by_header


def _events_insert(fresh, message_of, recipient_of, source: str, now) -> set[tuple[str, str]]:
    """INSERT the events, skipping any another applier stored meanwhile; the
    keys inserted. One statement whatever the batch (core.sql_engine)."""
    rows = []
    for key, event in fresh.items():
        recipient = recipient_of.get(key)
        rows.append(
            EventRow(
                event.event_id, event.recipient, event.event_type, event.provider_message_id, message_of.get(key),
                recipient.pk if recipient is not None else None, event.occurred_at, event.detail,
                event.raw_text or json.dumps(event.raw),  # the raw event as the JSON text it came in
            )
        )
    return events_insert(EngagementEvent, rows, received_at=now, source=source)


def _provider_ids_learn(fresh, message_of) -> None:
    """A message matched by its tracking header before its worker recorded the
    provider's id keeps the id the event reports: a sweeper finding the claim
    of a dead worker then knows the provider accepted the message."""
    learned = {message_of[key]: e.provider_message_id for key, e in fresh.items() if key in message_of and e.provider_message_id}
    if learned:
        # By key only, the rest checked here: `provider_message_id = ''` would
        # lead the planner to that index, where every unsent message sits.
        stored = Message.objects.filter(pk__in=learned).values_list("pk", "provider_message_id")
        for pk in [pk for pk, provider_message_id in stored if not provider_message_id]:
            Message.objects.filter(pk=pk, provider_message_id="").update(provider_message_id=learned[pk])


def events_relink(*, limit: int = 1000) -> int:
    """Apply stored events that arrived before their message's provider id was
    recorded (and carried no readable tracking header); how many were linked.

    The drain calls this after each run. Only events received within the last
    day are looked at; one indexed query finds none, which is nearly always.
    """
    since = timezone.now() - ORPHAN_RELINK_WINDOW
    with transaction.atomic():
        index_lookups()  # event_orphan_received: the recent orphans only, whatever the statistics say
        orphans = events_unlinked(EngagementEvent, since=since, limit=limit)
    if not orphans:
        return 0
    messages = dict(
        Message.objects.filter(provider_message_id__in={pmid for _, pmid in orphans}).values_list("provider_message_id", "pk")
    )
    linked = 0
    for event_pk, provider_message_id in orphans:
        message_id = messages.get(provider_message_id)
        if message_id is None:
            continue
        with transaction.atomic():
            status.messages_lock([message_id])
            row = one_or_none(EngagementEvent.objects.select_for_update().filter(pk=event_pk, message__isnull=True))
            if row is None:
                continue
            recipient = one_or_none(Recipient.objects.filter(message_id=message_id, email=row.recipient_email))
            EngagementEvent.objects.filter(pk=row.pk).update(message_id=message_id, recipient=recipient)
            if recipient is not None:
                _recipient_apply(recipient, _normalized_from_row(row))
                now = timezone.now()
                rows_update(Recipient, {recipient.pk: {name: getattr(recipient, name) for name in FACT_FIELDS}}, at=now)
                derived = status.status_from_facts(recipient)
                if derived is not None:
                    status.changes_apply(
                        message_ids=[message_id],
                        recipient_changes=[status.RecipientChange(
                            recipient.pk, derived, "event", only_from=None,
                            detail={"event_type": row.event_type, "event_id": row.event_id},
                        )],
                        at=now,
                    )
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
        entry = {"event_id": event.event_id, "opened_at": at.isoformat()}
        if event.detail.get("machine"):
            entry["machine"] = True  # a privacy proxy's fetch (tracking.hits): kept, not counted by default
        recipient.opens = _add_once(recipient.opens, entry, "opened_at")
        counted = [o for o in recipient.opens if settings.TRACKING_COUNT_MACHINE_OPENS or not o.get("machine")]
        recipient.open_count = len(counted)
        if counted:
            recipient.last_opened_at = max(filter(None, [recipient.last_opened_at, *(_parsed(o["opened_at"]) for o in counted)]))
    elif kind == EventType.CLICK:
        click = {"event_id": event.event_id, "url": event.detail.get("url", ""), "clicked_at": at.isoformat()}
        recipient.clicks = _add_once(recipient.clicks, click, "clicked_at")
        recipient.click_count = len(recipient.clicks)
    elif kind in (EventType.REJECT, EventType.RENDERING_FAILURE):
        # SES refused the message after accepting the call: nothing was delivered.
        if recipient.rejected_at is None or at < recipient.rejected_at:
            recipient.rejected_at = at
            recipient.failed_reason = f"{kind}: {event.detail.get('reason', '')}".strip()


def _policy_request(event: NormalizedEvent) -> SuppressionRequest | None:
    """Hard bounces, complaints and unsubscribe-all suppress the address (SPEC §6.4)."""
    if not event.recipient:
        return None
    source = f"ses:{event.event_type}:{event.event_id}"
    if event.event_type == EventType.BOUNCE and event.detail.get("bounce_type") == "Permanent":
        reason, note = Suppression.Reason.HARD_BOUNCE, f"{event.detail.get('bounce_subtype', '')} {event.detail.get('diagnostic', '')}"
    elif event.event_type == EventType.COMPLAINT and event.detail.get("feedback_type") != "not-spam":
        reason, note = Suppression.Reason.COMPLAINT, event.detail.get("feedback_type", "")
    elif event.event_type == EventType.SUBSCRIPTION and event.detail.get("unsubscribe_all"):
        reason, note = Suppression.Reason.UNSUBSCRIBE, event.detail.get("contact_list", "")
    else:
        return None
    return SuppressionRequest(email=event.recipient, reason=reason, source=source[:255], note=note.strip())


def _parsed(value: str) -> datetime:
    return datetime.fromisoformat(value)


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



# --- SNS HTTPS endpoint -------------------------------------------------------


def sns_notification_apply(*, message: dict) -> list[AppliedEvent]:
    """Apply the SES events of one verified SNS Notification: the drain's path, a batch of one."""
    return events_apply(events=ses_body_parse(message), source=EngagementEvent.Source.SNS)


# --- Test keys' emails ---------------------------------------------------------


def simulated_events_apply(*, envelopes: Sequence[dict], **kwargs) -> list[AppliedEvent]:
    """The SES mailbox simulator's events of test keys' emails, in the
    transaction that records them (emailsvc.providers.testmode.simulated_events): applied as SES's own
    are — statuses, timeline, suppressions, webhooks — and stored with source
    `simulator`. The breaker is not asked: test emails do not count in it."""
    events = [event for envelope in envelopes for event in ses_envelope_parse(envelope)]
    return events_apply(events=events, source=EngagementEvent.Source.SIMULATOR)
