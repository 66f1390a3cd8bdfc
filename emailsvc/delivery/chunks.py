"""A chunk of delivery: the rows it works on (the claimed messages, their
pending recipients, attachments and suppressed addresses), loaded with four
queries (a fifth for the MIME of SMTP submissions), and what its sends and its record come to."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from core.sql_engine import values_among
from emailsvc.models import (
    PENDING_STATUSES,
    Attachment,
    Message,
    Priority,
    Recipient,
    Source,
    SubmittedMime,
    WorkState,
)
from emailsvc.selectors import suppressed_addresses
from emailsvc.streams.sending import chunk_streams_apply

# Claims take the most urgent work first: a task of any queue claims due
# high-priority messages before its own priority's.
PRIORITY_ORDER = [Priority.HIGH, Priority.NORMAL, Priority.LOW]


@dataclass
class OutgoingRecipient:
    id: int
    email: str
    name: str
    role: str


@dataclass
class OutgoingAttachment:
    filename: str
    content_type: str
    content: bytes


@dataclass
class Outgoing:
    """One claimed message: what build_email reads, and the claim it belongs to."""

    pk: int
    email_id: str
    group_id: str | None
    attempts: int
    priority: str
    provider: str
    from_email: str
    from_name: str
    reply_to: list
    subject: str
    html: str
    text: str
    headers: dict
    tags: list
    metadata: dict
    sent_at: datetime | None
    source: str
    tracking: dict
    stream: str = "transactional"
    unsubscribe: bool = False  # List-Unsubscribe headers (emailsvc.streams.sending)
    configuration_set: str = ""  # the stream's own; empty: SES_CONFIGURATION_SET
    recipients: list[OutgoingRecipient] = field(default_factory=list)
    attachments: list[OutgoingAttachment] = field(default_factory=list)
    suppressed: dict[int, str] = field(default_factory=dict)  # recipient id → reason
    submitted_mime: bytes | None = None  # an SMTP submission's MIME, sent as written


@dataclass
class SendOutcome:
    """The provider's answer for one message of a chunk (or why it was not sent)."""

    provider_message_id: str = ""
    sent_at: datetime | None = None
    sent: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # permanent, per recipient
    deferred: dict[int, str] = field(default_factory=dict)  # transient, per recipient
    # Not attempted (rate limit, account stop, chunk deadline): due again this
    # many seconds after `released_at` (None: when recorded), and the attempt
    # is not counted.
    released_for: float | None = None
    reason: str = ""
    released_at: datetime | None = None

    def journal(self) -> dict:
        """What the delivery journal keeps of it (JSON)."""
        return {
            "provider_message_id": self.provider_message_id,
            "sent_at": self.sent_at.isoformat() if self.sent_at else None,
            "sent": self.sent,
            "failed": self.failed,
            "deferred": self.deferred,
            "released_for": self.released_for,
            "reason": self.reason,
            "released_at": self.released_at.isoformat() if self.released_at else None,
        }

    @classmethod
    def from_journal(cls, data: dict) -> SendOutcome:
        return cls(
            provider_message_id=data["provider_message_id"],
            sent_at=datetime.fromisoformat(data["sent_at"]) if data["sent_at"] else None,
            sent=list(data["sent"]),
            failed={int(k): v for k, v in data["failed"].items()},
            deferred={int(k): v for k, v in data["deferred"].items()},
            released_for=data["released_for"],
            reason=data["reason"],
            released_at=datetime.fromisoformat(data["released_at"]) if data.get("released_at") else None,
        )


@dataclass
class ChunkResult:
    """What one `deliver_due` call did."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    suppressed: int = 0
    released: int = 0
    internal: int = 0  # of `failed`: our own code failed (a bug), not the provider
    chunk_size: int = 0
    # The limiter is booked further ahead than a worker should wait: nothing
    # was claimed; try again in this many seconds.
    retry_in: float | None = None
    paused: bool = False  # the whole account is paused: nothing was claimed
    # The task of the next chunk was published while this one's last sends
    # waited for their moments (`deliver_due(next_chunk=...)`).
    next_published: bool = False
    # Messages put back for later, as (priority, seconds from now).
    due_later: list[tuple[str, float]] = field(default_factory=list)


def due_exists(priority: str) -> bool:
    levels = PRIORITY_ORDER[: PRIORITY_ORDER.index(priority) + 1]
    return Message.objects.filter(
        state__in=[WorkState.SCHEDULED, WorkState.QUEUED], priority__in=levels, next_attempt_at__lte=timezone.now()
    ).exists()


_OUTGOING_COLUMNS = (
    "id", "email_id", "group_id", "attempts", "priority", "provider", "from_email", "from_name", "reply_to",
    "subject", "html", "text", "headers", "tags", "metadata", "sent_at", "source", "tracking", "stream",
    "unsubscribe",
)


def chunk_load(message_ids: list[int]) -> dict[int, Outgoing]:
    """The claimed messages with their pending recipients, attachments and
    suppressed addresses. On PostgreSQL three plain statements read straight
    into the engine's rows (no model layer per row); elsewhere the ORM
    (core.sql_engine.values_among)."""
    outgoing = {row[0]: Outgoing(*row) for row in values_among(Message, _OUTGOING_COLUMNS, among={"id": message_ids})}
    pending = values_among(
        Recipient, ("id", "message_id", "email", "name", "role"),
        among={"message_id": message_ids, "status": sorted(PENDING_STATUSES)}, order_by="id",
    )
    for recipient_id, message_id, email, name, role in pending:
        outgoing[message_id].recipients.append(OutgoingRecipient(recipient_id, email, name, role))
    attachments = values_among(
        Attachment, ("message_id", "filename", "content_type", "content"), among={"message_id": message_ids},
        order_by="id",
    )
    for message_id, filename, content_type, content in attachments:
        outgoing[message_id].attachments.append(OutgoingAttachment(filename, content_type, bytes(content)))
    submitted = [message_id for message_id, message in outgoing.items() if message.source == Source.SMTP]
    if submitted:
        for message_id, content in values_among(SubmittedMime, ("message_id", "content"), among={"message_id": submitted}):
            outgoing[message_id].submitted_mime = bytes(content)
    suppressed = suppressed_addresses(addresses=list({r.email for o in outgoing.values() for r in o.recipients}))
    if suppressed:
        for message in outgoing.values():
            keep = []
            for recipient in message.recipients:
                if recipient.email in suppressed:
                    message.suppressed[recipient.id] = f"suppressed ({suppressed[recipient.email]})"
                else:
                    keep.append(recipient)
            message.recipients = keep
    chunk_streams_apply(outgoing)
    return outgoing
