"""Read-only queries of the sending side."""

from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone

from emailsvc.addresses import address_forms, address_key
from emailsvc.errors import NotFound
from emailsvc.models import Attachment, Message, Suppression


def suppressed_addresses(*, addresses: list[str]) -> dict[str, str]:
    """{address: reason} for those of `addresses` under an active suppression.

    Addresses are compared in their canonical form (emailsvc.addresses), so
    `User@Bücher.example` matches a suppression of `user@xn--bcher-kva.example`;
    a suppression stored lower-cased but not canonical (before canonical forms)
    still matches. The keys are the addresses as given.
    """
    if not addresses:
        return {}
    keys = {address: address_key(address) for address in addresses}
    wanted = set().union(*(address_forms(address) for address in addresses))
    now = timezone.now()
    rows = Suppression.objects.filter(email__in=wanted).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
    reasons = {address_key(email): reason for email, reason in rows.values_list("email", "reason")}
    return {address: reasons[key] for address, key in keys.items() if key in reasons}


def message_detail_queryset() -> QuerySet[Message]:
    # The event timeline is the tracking app's; reached through the relation so
    # that emailsvc does not import tracking.
    events = Message._meta.get_field("events").related_model
    return Message.objects.select_related("group").prefetch_related(
        "recipients",
        Prefetch("attachments", queryset=Attachment.objects.defer("content")),
        Prefetch("events", queryset=events.objects.defer("raw").order_by("occurred_at", "id")),
    )


def message_list_queryset() -> QuerySet[Message]:
    """Messages for lists: no bodies, recipients in one extra query per page."""
    return Message.objects.defer("html", "text", "headers", "template_data").prefetch_related("recipients")


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
