"""Read-only queries of the sending side."""

from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone

from emailsvc.errors import NotFound
from emailsvc.models import Attachment, Message, Suppression


def suppressed_addresses(*, addresses: list[str]) -> dict[str, str]:
    """{address: reason} for those of `addresses` under an active suppression."""
    if not addresses:
        return {}
    now = timezone.now()
    rows = Suppression.objects.filter(email__in=[a.lower() for a in addresses]).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )
    return dict(rows.values_list("email", "reason"))


def message_detail_queryset() -> QuerySet[Message]:
    from tracking.models import EngagementEvent

    return Message.objects.select_related("group").prefetch_related(
        "recipients",
        Prefetch("attachments", queryset=Attachment.objects.defer("content")),
        Prefetch("events", queryset=EngagementEvent.objects.defer("raw").order_by("occurred_at", "id")),
    )


def message_list_queryset() -> QuerySet[Message]:
    """Messages for lists: no bodies, recipients in one extra query per page."""
    return Message.objects.defer("html", "text", "headers", "template_data").prefetch_related("recipients")


def message_get(*, email_id: str) -> Message:
    """The message with its recipients and attachment metadata, or NotFound."""
    message = message_detail_queryset().filter(email_id=email_id).first()
    if message is None:
        raise NotFound(f"No email with email_id '{email_id}'.")
    return message
