"""What a status change is sent as: the event types a caller may subscribe to,
the statuses a change stands for, and the JSON event of one change."""

from __future__ import annotations

from datetime import UTC, datetime

from emailsvc.models import PENDING_STATUSES, PRECEDENCE, Status
from emailsvc.status import UNSUBSCRIBED

# The statuses a status change can reach (a recipient is never moved *to* a pending
# one), and `unsubscribed`: a one-click unsubscribe, which leaves the status as it is.
EVENT_TYPES = (*(s.value for s in Status if s not in PENDING_STATUSES), UNSUBSCRIBED)
# Statuses a recipient reached by the provider has passed: sent, and delivered for these.
_AFTER_SENT = frozenset(s for s, rank in PRECEDENCE.items() if rank >= PRECEDENCE[Status.SENT])
_AFTER_DELIVERY = frozenset({Status.OPENED, Status.CLICKED, Status.COMPLAINED})
ALL_EVENTS = "*"
EVENT_TYPE_CHOICES = (*EVENT_TYPES, ALL_EVENTS)


def change_statuses(from_status: str, to_status: str) -> frozenset[str]:
    """The statuses a change stands for: the one it reached, and those it passed
    over. Events applied together move a recipient once, to the status their
    facts give: `queued → delivered` (the delivery event came before the worker
    recorded the send) also means sent, `sent → opened` also means delivered.
    Subscribers of `sent` or `delivered` receive such a change too."""
    statuses = {to_status}
    if from_status in PENDING_STATUSES and to_status in _AFTER_SENT:
        statuses.add(Status.SENT)
    if PRECEDENCE.get(from_status, -1) < PRECEDENCE[Status.DELIVERED] and to_status in _AFTER_DELIVERY:
        statuses.add(Status.DELIVERED)
    return frozenset(statuses)


def webhook_payload(change: dict) -> dict:
    """The JSON event of one status change (one per POST).

    `change` holds StatusChange columns and the message's email_id, group_id,
    tags and metadata (see _changes_read). The same body on every attempt.
    """
    at = iso_timestamp(change["at"])
    return {
        "type": f"email.{change['to_status']}",
        "timestamp": at,
        "data": {
            "email_id": change["email_id"],
            "group_id": change["group_id"],
            "recipient": change["email"],
            "status": change["to_status"],
            "previous": change["from_status"],
            "at": at,
            "cause": change["cause"],
            "detail": change["detail"],
            "tags": change["tags"],
            "metadata": change["metadata"],
        },
    }


def iso_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
