"""Read-only queries of the operator console (the admin's address, message and
operations pages). Every query is an indexed lookup, bounded, and their number
per page does not grow with the rows shown.

The event rows are the tracking app's: reached through the app registry, so
that emailsvc does not import tracking (tracking depends on emailsvc).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import FieldDoesNotExist
from django.db.models import Count
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from console import probes
from core.addresses import address_forms, address_key
from core.admin_lists import ADDRESS_MESSAGES_LIMIT, address_url
from core.threads import process_pool
from emailsvc.models import (
    CANCELLABLE_STATES,
    CLAIMABLE_STATES,
    Attachment,
    Message,
    Priority,
    Recipient,
    SendingPause,
    StatusChange,
    Suppression,
    WorkState,
)
from emailsvc.streams.selectors import stream_suppressions_of

logger = logging.getLogger(__name__)

ADDRESS_PAGE_SIZE = 25
TIMELINE_LIMIT = 500  # rows per message page timeline
# The fields of an event's `detail` as an operator reads them.
FACT_LABELS = {
    "bounce_type": "Bounce type",
    "bounce_subtype": "Bounce subtype",
    "diagnostic": "Diagnostic",
    "status": "SMTP status",
    "action": "Action",
    "feedback_type": "Feedback type",
    "user_agent": "User agent",
    "url": "Link",
    "reason": "Reason",
    "ip": "IP address",
    "smtp_response": "SMTP response",
    "unsubscribe_all": "Unsubscribed from all",
    "contact_list": "Contact list",
    "delay_type": "Delay type",
    "expires_at": "Retried until",
    "template": "Template",
    "ses_type": "SES event type",
}


def _event_model():
    return apps.get_model("tracking", "EngagementEvent")


def _admin_url(model, pk) -> str | None:
    try:
        return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[pk])
    except NoReverseMatch:  # not registered in the admin
        return None


def readable_facts(detail: dict | None) -> list[tuple[str, str]]:
    """A provider's or a transition's detail dict as (label, text) pairs: what
    an operator reads, in place of JSON. Empty values are left out."""
    facts: list[tuple[str, str]] = []
    for key, value in (detail or {}).items():
        label = FACT_LABELS.get(key, key.replace("_", " ").capitalize())
        if isinstance(value, dict):
            value = ", ".join(f"{inner_key}: {inner}" for inner_key, inner in value.items())
        elif isinstance(value, list | tuple):
            value = ", ".join(str(item) for item in value)
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        if value in ("", None):
            continue
        facts.append((label, str(value)))
    return facts


@dataclass
class TimelineEntry:
    """One row of an email's timeline: a provider event, or a status transition."""

    at: datetime
    kind: str  # "accepted", "event" or "status"
    recipient: str
    title: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    url: str | None = None  # the event's admin page
    order: int = 0


def _event_entry(event, event_model) -> TimelineEntry:
    facts = [*readable_facts(event.detail), ("Event id", event.event_id)]
    return TimelineEntry(
        at=event.occurred_at, kind="event", recipient=event.recipient_email, title=event.get_event_type_display(),
        facts=facts, url=_admin_url(event_model, event.pk), order=1,
    )


def _change_entry(change: StatusChange) -> TimelineEntry:
    facts = [("Cause", change.cause), *readable_facts(change.detail)]
    return TimelineEntry(
        at=change.at, kind="status", recipient=change.email, title=f"{change.from_status} → {change.to_status}",
        facts=facts, order=2,
    )


def _accepted_entry(message: Message) -> TimelineEntry:
    facts = [("Priority", message.priority)]
    if message.send_at:
        facts.append(("Scheduled for", timezone.localtime(message.send_at).strftime("%Y-%m-%d %H:%M:%S %Z")))
    if message.retry_of_id:
        facts.append(("Sends again", f"email {message.retry_of.email_id}" if message.retry_of else str(message.retry_of_id)))
    return TimelineEntry(at=message.created_at, kind="accepted", recipient="", title="accepted", facts=facts, order=0)


def _ordered(entries: list[TimelineEntry]) -> list[TimelineEntry]:
    # "accepted" first: its row's time is the row's insert, a moment after the
    # submission's own transitions (suppressed at the door) were stamped.
    return sorted(entries, key=lambda entry: (entry.kind != "accepted", entry.at, entry.order))


# --- A message ----------------------------------------------------------------------------


@dataclass
class RecipientFacts:
    recipient: Recipient
    bounce: list[tuple[str, str]]
    bounced_at: datetime | None
    address_url: str


@dataclass
class MessageOverview:
    message: Message
    recipients: list[RecipientFacts]
    timeline: list[TimelineEntry]
    timeline_truncated: bool
    retries: list[Message]
    attachments: list[Attachment]
    webhook_deliveries: list | None  # None: the webhook models do not exist
    template_url: str | None
    cancellable: bool


def bounce_facts(bounce: dict | None) -> list[tuple[str, str]]:
    """A recipient's bounce record as fields, in a fixed order (jsonb keeps its own key order)."""
    if not bounce:
        return []
    labels = {"type": "Bounce type", "subtype": "Bounce subtype", "diagnostic": "Diagnostic", "event_id": "Event id"}
    known = [(label, str(bounce[key])) for key, label in labels.items() if bounce.get(key)]
    others = [
        (key.capitalize(), str(value)) for key, value in sorted(bounce.items()) if key not in labels and key != "at" and value
    ]
    return known + others


def webhook_deliveries_of(message_id: int) -> list | None:
    """The outbound webhook deliveries of a message's status changes, or None
    where the webhook models (tracking.WebhookDelivery) do not exist."""
    try:
        model = apps.get_model("tracking", "WebhookDelivery")
        model._meta.get_field("change")
        model._meta.get_field("endpoint")
    except (LookupError, FieldDoesNotExist):
        return None
    return list(
        model.objects.filter(change__message_id=message_id)
        .select_related("endpoint", "change")
        .defer("attempt_log")
        .order_by("id")[:200]
    )


def message_overview(*, message: Message) -> MessageOverview:
    """Everything the message page shows beside the message's own fields: its
    recipients' facts, the merged timeline (events and status changes, ordered),
    its re-sends, webhook deliveries and template. A fixed number of queries."""
    event_model = _event_model()
    recipients = list(Recipient.objects.filter(message_id=message.pk).order_by("id"))
    events = list(
        event_model.objects.filter(message_id=message.pk).defer("raw").order_by("occurred_at", "id")[: TIMELINE_LIMIT + 1]
    )
    changes = list(StatusChange.objects.filter(message_id=message.pk).order_by("id")[: TIMELINE_LIMIT + 1])
    truncated = len(events) > TIMELINE_LIMIT or len(changes) > TIMELINE_LIMIT
    timeline = _ordered(
        [_accepted_entry(message)]
        + [_event_entry(event, event_model) for event in events[:TIMELINE_LIMIT]]
        + [_change_entry(change) for change in changes[:TIMELINE_LIMIT]]
    )
    retries = list(
        Message.objects.filter(retry_of_id=message.pk).only("pk", "email_id", "status", "created_at").order_by("id")[:100]
    )
    return MessageOverview(
        message=message,
        recipients=[
            RecipientFacts(r, bounce_facts(r.bounce), parse_datetime((r.bounce or {}).get("at") or ""), address_url(r.email))
            for r in recipients
        ],
        timeline=timeline,
        timeline_truncated=truncated,
        retries=retries,
        attachments=list(Attachment.objects.filter(message_id=message.pk).defer("content").order_by("id")),
        webhook_deliveries=webhook_deliveries_of(message.pk),
        template_url=_template_url(message),
        cancellable=message.state in CANCELLABLE_STATES,
    )


def _template_url(message: Message) -> str | None:
    if not message.template_name:
        return None
    try:
        template_model = apps.get_model("templates_app", "Template")
    except LookupError:
        return None
    template_id = template_model.objects.filter(name=message.template_name).values_list("pk", flat=True)[:1]
    template_id = next(iter(template_id), None)
    if template_id is None:
        return None
    try:
        if message.template_version:
            return reverse("admin:templates_app_template_version_preview", args=[template_id, message.template_version])
        return reverse("admin:templates_app_template_change", args=[template_id])
    except NoReverseMatch:
        return None


# --- An address ----------------------------------------------------------------------------


@dataclass
class SourceLink:
    """Where a suppression came from, linked when it was an event we hold."""

    text: str
    event_url: str | None = None
    message_url: str | None = None
    message_email_id: str | None = None
    event_type: str | None = None


@dataclass
class AddressMessage:
    message: Message
    recipient: Recipient
    timeline: list[TimelineEntry]
    cancellable: bool
    message_url: str | None


@dataclass
class AddressHistory:
    address: str
    suppression: Suppression | None
    suppression_active: bool
    suppression_source: SourceLink | None
    soft_bounces: int
    soft_bounce_window_days: float
    soft_bounce_limit: int
    complaints: list[dict]
    messages: list[AddressMessage]
    total_messages: int
    total_is_capped: bool
    next_before: int | None
    unmatched_events: list[TimelineEntry]
    # One-click unsubscribes: the streams it receives no more (emailsvc.streams).
    stream_suppressions: list = field(default_factory=list)


def _suppression_source(suppression: Suppression, forms: set[str]) -> SourceLink:
    """`ses:<event type>:<event id>` is linked to the event and its email; other
    sources (admin:…, api-key:…, ses-account-list, an import) are shown as they are."""
    parts = suppression.source.split(":", 2)
    if len(parts) != 3 or parts[0] != "ses":
        return SourceLink(text=suppression.source or "—")
    event_model = _event_model()
    found = list(
        event_model.objects.filter(event_id=parts[2], recipient_email__in=forms)
        .select_related("message").only("pk", "event_type", "message__id", "message__email_id")[:1]
    )
    if not found:
        return SourceLink(text=suppression.source, event_type=parts[1])
    event = found[0]
    return SourceLink(
        text=suppression.source,
        event_url=_admin_url(event_model, event.pk),
        message_url=_admin_url(Message, event.message.pk) if event.message else None,
        message_email_id=event.message.email_id if event.message else None,
        event_type=event.event_type,
    )


def address_history(*, address: str, before: int | None = None, page_size: int = ADDRESS_PAGE_SIZE) -> AddressHistory:
    """What happened to one address: its newest messages (older ones with
    `before`, a message pk) each with its timeline for this address, its
    suppression and where it came from, its soft bounces in the window and its
    complaints. Rows stored in an older lower-cased form of the address match too.
    """
    key = address_key(address)
    forms = address_forms(address)
    event_model = _event_model()
    now = timezone.now()

    suppressions = list(Suppression.objects.filter(email__in=forms))
    suppression = min(suppressions, key=lambda row: (row.email != key, row.pk), default=None)
    active = suppression is not None and (suppression.expires_at is None or suppression.expires_at > now)

    recipients_query = Recipient.objects.filter(email__in=forms)
    total = recipients_query.order_by().values("pk")[: ADDRESS_MESSAGES_LIMIT + 1].count()
    page = recipients_query.select_related("message", "message__retry_of").defer(
        "message__html", "message__text", "message__headers", "message__template_data", "message__metadata",
        "message__retry_of__html", "message__retry_of__text", "message__retry_of__headers",
        "message__retry_of__template_data", "message__retry_of__metadata",
    )
    if before is not None:
        page = page.filter(message_id__lt=before)
    rows = list(page.order_by("-message_id")[: page_size + 1])
    more = len(rows) > page_size
    rows = rows[:page_size]

    message_ids = [row.message_id for row in rows]
    events_by_message: dict[int, list[TimelineEntry]] = {}
    changes_by_message: dict[int, list[TimelineEntry]] = {}
    if rows:
        events = event_model.objects.filter(message_id__in=message_ids, recipient_email__in=forms).defer("raw")
        for event in events.order_by("occurred_at", "id")[: TIMELINE_LIMIT * 4]:
            events_by_message.setdefault(event.message_id, []).append(_event_entry(event, event_model))
        changes = StatusChange.objects.filter(recipient_id__in=[row.pk for row in rows])
        for change in changes.order_by("id")[: TIMELINE_LIMIT * 4]:
            changes_by_message.setdefault(change.message_id, []).append(_change_entry(change))

    messages = [
        AddressMessage(
            message=row.message,
            recipient=row,
            timeline=_ordered(
                [_accepted_entry(row.message), *events_by_message.get(row.message_id, []),
                 *changes_by_message.get(row.message_id, [])]
            ),
            cancellable=row.message.state in CANCELLABLE_STATES,
            message_url=_admin_url(Message, row.message_id),
        )
        for row in rows
    ]

    window_days = settings.SOFT_BOUNCE_WINDOW_DAYS
    # The same count the soft-bounce limit is applied with (tracking.apply).
    soft_bounces = event_model.objects.filter(
        recipient_email__in=forms, occurred_at__gte=now - timedelta(days=window_days), event_type="bounce",
        detail__bounce_type="Transient",
    ).count()
    complaints = [
        {
            "at": event.occurred_at,
            "facts": readable_facts(event.detail),
            "message_email_id": event.message.email_id if event.message else None,
            "message_url": _admin_url(Message, event.message.pk) if event.message else None,
        }
        for event in event_model.objects.filter(recipient_email__in=forms, event_type="complaint")
        .select_related("message").only("occurred_at", "detail", "message__id", "message__email_id")
        .order_by("-occurred_at")[:10]
    ]
    unmatched = [
        _event_entry(event, event_model)
        for event in event_model.objects.filter(recipient_email__in=forms, message__isnull=True)
        .defer("raw").order_by("-occurred_at")[:20]
    ]
    return AddressHistory(
        stream_suppressions=stream_suppressions_of(email=address),
        address=key,
        suppression=suppression,
        suppression_active=active,
        suppression_source=_suppression_source(suppression, forms) if suppression else None,
        soft_bounces=soft_bounces,
        soft_bounce_window_days=window_days,
        soft_bounce_limit=settings.SOFT_BOUNCE_LIMIT,
        complaints=complaints,
        messages=messages,
        total_messages=min(total, ADDRESS_MESSAGES_LIMIT),
        total_is_capped=total > ADDRESS_MESSAGES_LIMIT,
        next_before=rows[-1].message_id if more else None,
        unmatched_events=unmatched,
    )


def address_message_ids(*, address: str, limit: int = ADDRESS_MESSAGES_LIMIT) -> list[int]:
    """The newest `limit` message pks sent to an address (for list searches)."""
    return list(
        Recipient.objects.filter(email__in=address_forms(address))
        .order_by("-message_id").values_list("message_id", flat=True)[:limit]
    )


def address_recipient_ids(*, address: str, limit: int = ADDRESS_MESSAGES_LIMIT) -> list[int]:
    return list(
        Recipient.objects.filter(email__in=address_forms(address))
        .order_by("-message_id").values_list("pk", flat=True)[:limit]
    )


# --- Operations ----------------------------------------------------------------------------


def sending_overview() -> dict:
    """The breaker's view (services.breaker.sending_status) with the emails each
    paused domain, or paused stream of a domain, holds, and the latest pauses."""
    from emailsvc.sending_control.breaker import sending_status

    overview = sending_status()
    entries = [overview["account"], *overview["domains"]]
    with_pauses = sorted({
        entry["domain"] for entry in overview["domains"]
        if entry["paused"] or any(stream["paused"] for stream in entry["streams"])
    })
    # One query: the (sending_domain, state) index, one range per domain with a pause.
    held: dict[tuple[str, str], int] = {
        (domain, stream): n for domain, stream, n in (
            Message.objects.filter(sending_domain__in=with_pauses, state=WorkState.HELD)
            .values("sending_domain", "stream").annotate(n=Count("pk")).values_list("sending_domain", "stream", "n")
            .order_by()
        )
    } if with_pauses else {}
    for entry in entries:
        domain = entry["domain"]
        entry["held"] = sum(n for (d, _s), n in held.items() if d == domain) if entry["paused"] else None
        for stream in entry["streams"]:
            stream["held"] = held.get((domain, stream["stream"]), 0) if stream["paused"] else None
    overview["history"] = list(SendingPause.objects.order_by("-paused_at", "-id")[:20])
    return overview


BACKLOG_COUNT_UP_TO = 100_000


def _capped_count(rows) -> tuple[int, bool]:
    counted = rows.order_by().values("pk")[: BACKLOG_COUNT_UP_TO + 1].count()
    return min(counted, BACKLOG_COUNT_UP_TO), counted > BACKLOG_COUNT_UP_TO


def delivery_backlog(*, now: datetime | None = None) -> list[dict]:
    """Per priority, from the database: emails due now, scheduled for later,
    and claimed by a worker. Counts through the engine's own partial indexes,
    each stopping at BACKLOG_COUNT_UP_TO."""
    now = now or timezone.now()
    waiting = Message.objects.filter(state__in=CLAIMABLE_STATES)
    rows = []
    for priority in Priority.values:
        due, due_capped = _capped_count(waiting.filter(priority=priority, next_attempt_at__lte=now))
        later, later_capped = _capped_count(waiting.filter(priority=priority, next_attempt_at__gt=now))
        oldest = (
            waiting.filter(priority=priority, next_attempt_at__lte=now)
            .order_by("next_attempt_at").values_list("next_attempt_at", flat=True)[:1]
        )
        oldest = next(iter(oldest), None)
        rows.append({
            "priority": priority, "due": due, "due_capped": due_capped, "later": later, "later_capped": later_capped,
            "oldest_due_seconds": round((now - oldest).total_seconds(), 1) if oldest else None,
        })
    return rows


def sending_now() -> int:
    return Message.objects.filter(state=WorkState.SENDING).count()


@dataclass
class Probe:
    """One reading of an outside system for the operations page: its value, or why there is none."""

    value: Any = None
    error: str = ""
    seconds: float = 0.0


# The operations page's readings (console.probes), each called with the page's timeout.
PROBES: dict[str, Callable[[float], Any]] = {
    "events_queue": lambda timeout: probes.events_queue(timeout=timeout),
    "drain": lambda timeout: probes.drain_report(timeout=timeout),
    "broker": lambda timeout: probes.broker_depths(),
    "limiter": lambda timeout: probes.rate_limiter(timeout=timeout),
}
# Room for a page's probes while earlier ones that outlasted their deadline
# still run to their own timeout.
PROBE_WORKERS = 2 * len(PROBES)


def operations_probes(*, timeout: float = 2.0, deadline: float = 4.0) -> dict[str, Probe]:
    """Read SQS, Redis and the broker at once, each with `timeout`-second
    connections, and answer within `deadline` seconds whatever they do: a
    reading that is not back by then is reported as such (its thread ends on
    its own timeout)."""
    results: dict[str, Probe] = {}
    executor = process_pool("ops-probe", workers=PROBE_WORKERS)
    started = time.monotonic()

    def timed(function, name):
        begin = time.monotonic()
        try:
            return Probe(value=function(timeout), seconds=round(time.monotonic() - begin, 3))
        except Exception as error:  # any failure of an outside system is shown, never raised
            logger.warning("operations page: %s unavailable: %s", name, error)
            return Probe(error=f"{type(error).__name__}: {error}"[:300], seconds=round(time.monotonic() - begin, 3))

    futures = {name: executor.submit(timed, function, name) for name, function in PROBES.items()}
    for name, future in futures.items():
        remaining = max(0.0, deadline - (time.monotonic() - started))
        try:
            results[name] = future.result(timeout=remaining)
        except FutureTimeout:
            future.cancel()  # not begun yet: it never will be
            results[name] = Probe(error=f"no answer within {deadline:g} s", seconds=deadline)
    return results
