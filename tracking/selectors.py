"""Read-only queries of the tracking side: group records and analytics (SPEC §4)."""

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import Coalesce

from core.errors import NotFound
from emailsvc.models import Group, Message, Recipient, Status
from emailsvc.selectors import message_list_queryset, one_or_none


def group_get(*, group_id: str) -> Group:
    group = one_or_none(Group.objects.filter(id=group_id))
    if group is None:
        raise NotFound(f"No group with group_id '{group_id}'.")
    return group


def group_messages(*, group_id: str) -> QuerySet[Message]:
    """The messages of a group, newest first (NotFound for an unknown group)."""
    group = group_get(group_id=group_id)
    return message_list_queryset().filter(group=group).order_by("-id")


def _rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def group_analytics(*, group_id: str) -> dict:
    """Counts over the group's recipients, computed in one aggregate query.

    Every count is of recipients (one per address of a message), except
    `messages`, `opened` and `clicked`, which count messages, open events and
    click events. Rates are null when their denominator is 0.
    """
    group = group_get(group_id=group_id)
    hard_bounce = Q(bounce__type="Permanent")
    # One pass over the group's recipients through their own group index (no
    # join with the messages): well under a second for a million recipients.
    counts = Recipient.objects.filter(group=group).aggregate(
        messages=Count("message_id", distinct=True),
        total=Count("id"),
        queued=Count("id", filter=Q(status__in=[Status.QUEUED, Status.SCHEDULED, Status.SENDING])),
        sent=Count("id", filter=Q(sent_at__isnull=False)),
        delivered=Count("id", filter=Q(delivered_at__isnull=False)),
        opened=Coalesce(Sum("open_count"), 0),
        unique_opened=Count("id", filter=Q(open_count__gt=0)),
        clicked=Coalesce(Sum("click_count"), 0),
        unique_clicked=Count("id", filter=Q(click_count__gt=0)),
        bounced=Count("id", filter=hard_bounce),
        soft_bounced=Count("id", filter=Q(bounce__isnull=False) & ~hard_bounce),
        delayed=Count("id", filter=Q(delayed__gt=0)),
        complained=Count("id", filter=Q(complained_at__isnull=False)),
        failed=Count("id", filter=Q(status=Status.FAILED)),
        suppressed=Count("id", filter=Q(status=Status.SUPPRESSED)),
        cancelled=Count("id", filter=Q(status=Status.CANCELLED)),
    )
    return {
        "group_id": group.id,
        **counts,
        "delivery_rate": _rate(counts["delivered"], counts["sent"]),
        "open_rate": _rate(counts["unique_opened"], counts["delivered"]),
        "click_rate": _rate(counts["unique_clicked"], counts["delivered"]),
        "bounce_rate": _rate(counts["bounced"], counts["sent"]),
        "complaint_rate": _rate(counts["complained"], counts["sent"]),
    }
