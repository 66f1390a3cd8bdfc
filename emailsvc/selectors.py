"""Read-only queries of the sending side."""

from datetime import datetime

from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone

from core.addresses import InvalidAddress, address_canonical, address_forms, address_key, domain_canonical, shown
from core.errors import NotFound
from core.sql import values_unexpired
from emailsvc.models import Attachment, Message, Recipient, StreamSuppression, Suppression, WorkState


def suppressed_addresses(*, addresses: list[str]) -> dict[str, str]:
    """{address: reason} for those of `addresses` under an active suppression.

    Addresses are compared in their canonical form (core.addresses), so
    `User@Bücher.example` matches a suppression of `user@xn--bcher-kva.example`;
    a suppression stored lower-cased but not canonical (before canonical forms)
    still matches. The keys are the addresses as given.
    """
    if not addresses:
        return {}
    keys = {address: address_key(address) for address in addresses}
    wanted = set().union(*(address_forms(address) for address in addresses))
    now = timezone.now()
    found = values_unexpired(Suppression, ["email", "reason"], key="email", among=sorted(wanted), now=now)
    reasons = {address_key(email): reason for email, reason in found}
    return {address: reasons[key] for address, key in keys.items() if key in reasons}


def message_detail_queryset() -> QuerySet[Message]:
    # The event timeline is the tracking app's; reached through the relation so
    # that emailsvc does not import tracking.
    events = Message._meta.get_field("events").related_model
    return Message.objects.select_related("group", "retry_of").prefetch_related(
        "recipients",
        Prefetch("attachments", queryset=Attachment.objects.defer("content")),
        Prefetch("events", queryset=events.objects.defer("raw").order_by("occurred_at", "id")),
    )


def message_list_queryset() -> QuerySet[Message]:
    """Messages for lists: no bodies, recipients in one extra query per page."""
    columns = [f.name for f in Message._meta.concrete_fields if f.name not in _BODIES]
    # Recipients by (message_id, id): ordered by id alone, a planner without
    # statistics walks the whole recipient primary key for a page of fifty.
    recipients = Prefetch("recipients", queryset=Recipient.objects.order_by("message_id", "id"))
    return Message.objects.select_related("retry_of").only(*columns, "retry_of__email_id").prefetch_related(recipients)


_BODIES = ("html", "text", "headers", "template_data")


def message_get(*, email_id: str) -> Message:
    """The message with its recipients and attachment metadata, or NotFound."""
    message = one_or_none(message_detail_queryset().filter(email_id=email_id))
    if message is None:
        raise NotFound(f"No email with email_id '{email_id}'.")
    return message


def one_or_none(queryset: QuerySet):
    """The row a unique lookup finds, or None.

    Not `.first()`: that adds `ORDER BY id LIMIT 1`, and on a large table with
    stale statistics PostgreSQL may then walk the whole primary key instead of
    using the unique index.
    """
    return next(iter(queryset[:1]), None)


# --- Suppressions -------------------------------------------------------------------


def _search_term(value: str) -> str:
    """A search term in the form addresses are stored in: a whole address in its
    canonical form; a part of one in lower case, an internationalised domain (or
    part of one) in IDNA form when it has one."""
    try:
        return address_canonical(value)
    except InvalidAddress:
        pass
    term = value.strip().lower()
    if term.isascii():
        return term
    local, at, domain = term.rpartition("@")
    try:
        return f"{local}{at}{domain_canonical(domain)}"
    except InvalidAddress:
        return term


def suppressions_list(
    *,
    reason: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    search: str | None = None,
    prefix: str | None = None,
    active: bool | None = None,
    stream: str | None = None,
) -> QuerySet[Suppression]:
    """Suppressions matching every filter given (unordered: the paginator orders by id).

    `search` matches a part of the address, `prefix` its start (an index range
    on the unique address index, also on PostgreSQL through Django's
    pattern-ops index), both without regard to case or to the form of an
    internationalised domain. `active` True leaves out expired entries, False
    keeps only them. `stream`: the suppressions of that message stream only
    (emailsvc.streams: they never expire) instead of those of every stream.
    """
    rows = Suppression.objects.all()
    if stream is not None:
        rows = StreamSuppression.objects.filter(stream_id=stream)
        if active is False:
            return rows.none()
        active = None
    if reason:
        rows = rows.filter(reason=reason)
    if created_after:
        rows = rows.filter(created_at__gte=created_after)
    if created_before:
        rows = rows.filter(created_at__lt=created_before)
    # Stored lower-cased (a check constraint): a case-sensitive LIKE on the
    # lowered term is exact, and the prefix keeps its index.
    if search:
        rows = rows.filter(email__contains=_search_term(search))
    if prefix:
        rows = rows.filter(email__startswith=_search_term(prefix))
    if active is not None:
        unexpired = Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
        rows = rows.filter(unexpired) if active else rows.exclude(unexpired)
    return rows


def suppression_get(*, email: str) -> Suppression:
    """The suppression of an address given in any case or domain form, or NotFound."""
    found = None
    if "\x00" not in email:  # PostgreSQL refuses NUL in a query (and no entry has one)
        rows = list(Suppression.objects.filter(email__in=address_forms(email)))
        key = address_key(email)
        found = min(rows, key=lambda row: (row.email != key, row.pk), default=None)
    if found is None:
        raise NotFound(f"{shown(email)} is not suppressed.")
    return found


def suppressions_to_push(
    *, after_id: int, reasons: list[str], exclude_source: str, created_before: datetime, limit: int = 500
) -> list[Suppression]:
    """The next `limit` permanent suppressions with one of `reasons`, by id after
    `after_id`, not from `exclude_source`, created before `created_before`."""
    return list(
        Suppression.objects.filter(
            pk__gt=after_id, reason__in=reasons, expires_at__isnull=True, created_at__lt=created_before
        )
        .exclude(source=exclude_source)
        .order_by("pk")[:limit]
    )


def template_pending_messages(*, name: str) -> int:
    """How many scheduled or queued emails (not yet claimed for sending) were submitted with this template."""
    return Message.objects.filter(template_name=name, state__in=[WorkState.SCHEDULED, WorkState.QUEUED]).count()
