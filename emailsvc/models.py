"""Sending facts: messages, their recipients, groups, suppressions and API keys (SPEC §3)."""

import uuid

from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone


def new_email_id() -> str:
    return str(uuid.uuid4())


class Status(models.TextChoices):
    """Recipient and message statuses; see PRECEDENCE for how they order."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELAYED = "delayed"
    SOFT_BOUNCED = "soft_bounced"
    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"


# Higher wins; a late event never lowers a recipient's status (SPEC §3).
PRECEDENCE = {
    Status.SCHEDULED: 0,
    Status.QUEUED: 0,
    Status.SENDING: 1,
    Status.SENT: 2,
    Status.DELAYED: 3,
    Status.SOFT_BOUNCED: 3,
    Status.DELIVERED: 4,
    Status.OPENED: 5,
    Status.CLICKED: 6,
    Status.BOUNCED: 7,
    Status.COMPLAINED: 8,
}
# Terminal states reached without handing the recipient to the provider.
NOT_SENT_STATUSES = frozenset({Status.FAILED, Status.SUPPRESSED, Status.CANCELLED})
# A recipient in one of these has not been handed to the provider yet.
PENDING_STATUSES = frozenset({Status.SCHEDULED, Status.QUEUED, Status.SENDING})


class WorkState(models.TextChoices):
    """What the delivery engine does with a message, apart from what it shows.

    `status` summarises the recipients for callers; `state` is the engine's:
    a message with one delivered and one deferred recipient shows `delivered`
    and is still `queued` for its next attempt.
    """

    SCHEDULED = "scheduled", "scheduled (due at next_attempt_at = send_at)"
    QUEUED = "queued", "queued (due at next_attempt_at)"
    SENDING = "sending", "claimed by a worker"
    HELD = "held", "waiting while its sending domain is paused"
    DONE = "done", "nothing left to send"


# States in which the engine may claim a message once next_attempt_at has come.
CLAIMABLE_STATES = (WorkState.SCHEDULED, WorkState.QUEUED)
# States a caller may still cancel: nothing of the message has been claimed.
CANCELLABLE_STATES = (WorkState.SCHEDULED, WorkState.QUEUED, WorkState.HELD)


class Priority(models.TextChoices):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class Provider(models.TextChoices):
    SANDBOX = "sandbox"
    SES = "ses"
    SMTP = "smtp"
    CONSOLE = "console"
    # Emails of a test key: never handed to a provider; the SES mailbox
    # simulator's events are produced for them (emailsvc.providers.simulator).
    TEST = "test"


class Source(models.TextChoices):
    """How a message reached the service: the REST API or SMTP submission."""

    API = "api"
    SMTP = "smtp"


class ApiKey(models.Model):
    class Permission(models.TextChoices):
        READ_ONLY = "read_only"
        SENDING = "sending"
        FULL = "full"

    RANK = {Permission.READ_ONLY: 0, Permission.SENDING: 1, Permission.FULL: 2}

    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=16, unique=True, help_text="Public part of the key, shown in lists")
    secret_hash = models.CharField(max_length=64, help_text="SHA-256 of the whole key; the key itself is never stored")
    permission = models.CharField(max_length=16, choices=Permission.choices, default=Permission.SENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    domains = models.JSONField(
        default=list, blank=True,
        help_text="Sending domains (canonical names) this key may send from, sub-domains included; empty: any",
    )
    streams = models.JSONField(
        default=list, blank=True, help_text="Message streams (names) this key may send on; empty: any"
    )
    test = models.BooleanField(
        default=False, help_text="Test mode: its emails are stored as usual but never reach the provider"
    )
    created_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The key that created this one through the API",
    )

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…, {self.permission})"

    def allows(self, permission: str) -> bool:
        return self.RANK[self.permission] >= self.RANK[permission]

    @property
    def state(self) -> str:
        """`active`, `revoked` or `expired`, now."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return "expired"
        return "active"


class Group(models.Model):
    """A caller-named set of messages (an invite batch, a campaign)."""

    id = models.CharField(primary_key=True, max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.id


class Message(models.Model):
    """One submitted email. Its status summarises its recipients' statuses."""

    email_id = models.CharField(max_length=200, unique=True, default=new_email_id, help_text="Public id")
    # Looked up through message_group_newest (group, -id): no index of its own,
    # one less for every write of this much-updated table to maintain.
    group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.PROTECT, related_name="messages", db_index=False
    )
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    from_email = models.CharField(max_length=320)
    sending_domain = models.CharField(
        max_length=255, blank=True, help_text="The domain of from_email: what the safety breaker pauses"
    )
    from_name = models.CharField(max_length=200, blank=True)
    reply_to = models.JSONField(default=list, blank=True)
    subject = models.TextField(blank=True)
    html = models.TextField(blank=True)
    text = models.TextField(blank=True)
    headers = models.JSONField(default=dict, blank=True)
    tags = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    template_name = models.CharField(max_length=200, blank=True)
    template_version = models.PositiveIntegerField(null=True, blank=True)
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries",
        help_text="The email whose soft-bounced recipient this one sends to again",
    )
    template_data = models.JSONField(null=True, blank=True)
    tracking = models.JSONField(
        default=dict, blank=True,
        help_text="The send's open/click tracking {opens, clicks} and, with emailsvc's own click tracking, "
        "the tracked links' destinations {links: [url, …]} (the redirect looks them up by index)",
    )
    send_at = models.DateTimeField(null=True, blank=True)
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.NORMAL)
    # Its message stream (emailsvc.streams), by name; `unsubscribe`: the send
    # asked for List-Unsubscribe (a stream whose policy is `always` adds it anyway).
    stream = models.CharField(max_length=64, default="transactional")
    unsubscribe = models.BooleanField(default=False)
    provider = models.CharField(max_length=16, choices=Provider.choices)
    provider_message_id = models.CharField(max_length=255, blank=True, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    state = models.CharField(
        max_length=16, choices=WorkState.choices, default=WorkState.QUEUED, help_text="The delivery engine's state"
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(
        null=True, blank=True, help_text="When the next delivery attempt is due; the sweeper looks here"
    )
    sending_started_at = models.DateTimeField(null=True, blank=True, help_text="When a worker last claimed it")
    claimed_by = models.CharField(
        max_length=64, blank=True, default="",
        help_text="The delivery process holding the claim (DeliveryProcess.token); the sweeper recovers it once that process stops beating",
    )
    sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.API)

    class Meta:
        indexes = [
            models.Index(fields=["status", "created_at"], name="message_status_created"),
            # GET /emails: one status, or one template, newest first, one index range
            # deep (tags and metadata have GIN indexes on PostgreSQL: migration 0008).
            models.Index(fields=["status", "-id"], name="message_status_newest"),
            models.Index(fields=["template_name", "-id"], name="message_template_newest"),
            # A group's emails, newest first: cursor pages stay one index range deep into any group.
            models.Index(fields=["group", "-id"], name="message_group_newest"),
            models.Index(fields=["-created_at"], name="message_created_desc"),
            # The engine's claim: due messages of one priority, oldest due first.
            models.Index(
                fields=["priority", "next_attempt_at"],
                condition=models.Q(state__in=["scheduled", "queued"]),
                name="message_claimable_due",
            ),
            # The sweeper's look for claims a dead worker left behind.
            models.Index(fields=["sending_started_at"], condition=models.Q(state="sending"), name="message_sending"),
            # Holding and releasing a paused domain's waiting emails.
            models.Index(fields=["sending_domain", "state"], name="message_domain_state"),
        ]

    def __str__(self) -> str:
        return str(self.email_id)

    @property
    def is_test(self) -> bool:
        """Sent with a test key: never handed to a provider (docs/api-keys.md)."""
        return self.provider == Provider.TEST


class Attachment(models.Model):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attachments")
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=255)
    content = models.BinaryField()
    size = models.PositiveIntegerField()

    def __str__(self) -> str:
        return self.filename


class SubmittedMime(models.Model):
    """The MIME of a message submitted over SMTP, kept as written (headers the
    service reads removed): what is sent, byte for byte, with only the tracking
    header added."""

    message = models.OneToOneField(Message, primary_key=True, on_delete=models.CASCADE, related_name="+")
    content = models.BinaryField()


class Recipient(models.Model):
    """One address of a message with its own engagement facts."""

    class Role(models.TextChoices):
        TO = "to"
        CC = "cc"
        BCC = "bcc"

    # Looked up through recipient_unique_per_message (message, email).
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="recipients", db_index=False)
    # The message's group, kept here too: a group's analytics then read one
    # index of this table instead of joining a million messages.
    group = models.ForeignKey(Group, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    email = models.CharField(max_length=320, help_text="Lower-cased address")
    name = models.CharField(max_length=200, blank=True)
    role = models.CharField(max_length=3, choices=Role.choices, default=Role.TO)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    delayed = models.PositiveIntegerField(default=0)
    opens = models.JSONField(default=list, blank=True, help_text="[{event_id, opened_at}], one per open event")
    open_count = models.PositiveIntegerField(default=0, help_text="len(opens), kept for aggregate queries")
    last_opened_at = models.DateTimeField(null=True, blank=True)
    clicks = models.JSONField(default=list, blank=True, help_text="[{event_id, url, clicked_at}], one per click event")
    click_count = models.PositiveIntegerField(default=0, help_text="len(clicks), kept for aggregate queries")
    bounce = models.JSONField(null=True, blank=True)
    complained_at = models.DateTimeField(null=True, blank=True)
    complaint_feedback_type = models.CharField(max_length=64, blank=True)
    rejected_at = models.DateTimeField(null=True, blank=True, help_text="The provider refused it after accepting the call")
    failed_reason = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "email"], name="recipient_unique_per_message")]
        # An address's messages, newest first (GET /emails?to=), and any lookup by address.
        indexes = [models.Index(fields=["email", "message"], name="recipient_email_message")]
        ordering = ["id"]

    def __str__(self) -> str:
        return self.email


class Suppression(models.Model):
    """An address that must not be sent to. Checked before every send."""

    class Reason(models.TextChoices):
        HARD_BOUNCE = "hard_bounce"
        COMPLAINT = "complaint"
        SOFT_BOUNCE_LIMIT = "soft_bounce_limit"
        MANUAL = "manual"
        UNSUBSCRIBE = "unsubscribe"

    email = models.CharField(max_length=320, unique=True, help_text="Lower-cased address")
    reason = models.CharField(max_length=24, choices=Reason.choices, default=Reason.MANUAL)
    source = models.CharField(max_length=255, blank=True, help_text="Event id or who added it")
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(email=Lower("email")), name="suppression_email_lowercase"),
        ]

    def __str__(self) -> str:
        return self.email


class IdempotencyKey(models.Model):
    """The first answer to a request sent with an `Idempotency-Key` header.

    A repeat with the same key and the same body gets this answer again; the
    same key with another body is refused (SPEC §4). Keys are per API key.
    """

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64, help_text="SHA-256 of method, path and body")
    response_status = models.PositiveSmallIntegerField()
    response_body = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["api_key", "key"], name="idempotency_key_unique_per_api_key")]

    def __str__(self) -> str:
        return self.key


class StatusChange(models.Model):
    """One recipient status transition, append-only (SPEC §3).

    Written by `emailsvc.status` in the same transaction as the change it
    records, and by nothing else. Outbound webhooks, metrics, `/stats` and the
    safety breaker read this table instead of being called by the writer.
    """

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="status_changes", db_index=False)
    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="status_changes")
    email = models.CharField(max_length=320)
    from_status = models.CharField(max_length=16, choices=Status.choices)
    to_status = models.CharField(max_length=16, choices=Status.choices)
    at = models.DateTimeField()
    cause = models.CharField(max_length=32, help_text="delivery, event, cancel, suppressed, sweeper, …")
    detail = models.JSONField(default=dict, blank=True, help_text="Reason, provider event type and id, …")
    # A database default too: statements that insert rows directly (benchmarks' tables) need not name it.
    test = models.BooleanField(
        default=False, db_default=False,
        help_text="Of a test key's email: left out of /stats (unless asked), the breaker and metrics",
    )

    class Meta:
        indexes = [
            models.Index(fields=["message", "id"], name="statuschange_message"),
            models.Index(fields=["at"], name="statuschange_at"),
            models.Index(fields=["to_status", "at"], name="statuschange_to_at"),
        ]

    def __str__(self) -> str:
        return f"{self.email}: {self.from_status} → {self.to_status}"


class SendingPause(models.Model):
    """Sending stopped for one sending domain, or for the whole account (`domain`
    = "*"), until an operator resumes it or its cool-down ends (SPEC §6.4).
    `stream` narrows a domain's pause to one message stream of it ("": every
    stream of the domain).

    Rows are kept as the history of pauses: the active ones have `resumed_at`
    empty. `figures` holds the rates that tripped the breaker, or the
    provider's answer.
    """

    class Cause(models.TextChoices):
        BREAKER = "breaker", "bounce or complaint rate too high"
        PROVIDER = "provider", "the provider account stopped sending"
        QUOTA = "quota", "the provider's daily quota is spent"
        OPERATOR = "operator", "paused by an operator"

    ACCOUNT = "*"

    domain = models.CharField(max_length=255, help_text='A sending domain, or "*" for the whole account')
    stream = models.CharField(
        max_length=64, blank=True, default="", help_text="Only this message stream of the domain; empty: every stream"
    )
    cause = models.CharField(max_length=16, choices=Cause.choices)
    reason = models.TextField(blank=True)
    figures = models.JSONField(default=dict, blank=True)
    paused_at = models.DateTimeField()
    until = models.DateTimeField(null=True, blank=True, help_text="Lifts on its own then (quota, cool-down)")
    resumed_at = models.DateTimeField(null=True, blank=True)
    resumed_by = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["domain", "stream"], condition=models.Q(resumed_at__isnull=True), name="one_active_pause_per_domain_stream"
            ),
        ]
        indexes = [models.Index(fields=["domain", "-paused_at"], name="pause_domain_recent")]

    def __str__(self) -> str:
        where = f"{self.domain} ({self.stream})" if self.stream else self.domain
        return f"{where} paused ({self.cause}) at {self.paused_at:%Y-%m-%d %H:%M}"


class SendingCounts(models.Model):
    """Recipients handed to the provider, bounced and complained, per sending
    domain, message stream and hour: the rolling 24 h rates of the safety
    breaker read ~25 rows per domain and stream of this instead of a day of
    StatusChange rows. Fed from the StatusChange rows once they commit
    (emailsvc.sending_control.counts)."""

    sending_domain = models.CharField(max_length=255)
    stream = models.CharField(max_length=64, default="transactional")
    hour = models.DateTimeField()
    sent = models.PositiveIntegerField(default=0)
    bounced = models.PositiveIntegerField(default=0)
    complained = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["sending_domain", "stream", "hour"], name="sending_counts_per_stream_hour")
        ]
        indexes = [models.Index(fields=["hour"], name="sending_counts_hour")]

    def __str__(self) -> str:
        return f"{self.sending_domain} {self.stream} {self.hour:%Y-%m-%d %H}:00"


class DeliveryJournal(models.Model):
    """The provider's answer to one delivery attempt, kept until it is recorded (SPEC §5.4).

    A worker's send slot writes it (group-committed with the other slots' of
    its process) before it takes its next message, and the transaction that
    records the chunk deletes it. A process that dies in between leaves it for
    the sweeper, which records it instead of sending the message again. Kept in
    the database, not in Redis: a Redis that restarts empty must not turn every
    unrecorded send of a dead worker into a second send.
    """

    message = models.OneToOneField(Message, primary_key=True, on_delete=models.CASCADE, related_name="+")
    attempt = models.PositiveIntegerField(help_text="The message's attempts when it was claimed for this send")
    outcome = models.JSONField(help_text="Provider message id, sent / failed / deferred recipient ids, reason")
    written_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"message {self.message_id} attempt {self.attempt}"


class DeliveryProcess(models.Model):
    """A process that claims messages, and the last time it said it is alive.

    Every claim names its process (`Message.claimed_by`). While a process holds
    claims it beats every DELIVERY_HEARTBEAT_SECONDS; the sweeper recovers the
    claims of a process silent for SWEEP_SENDING_AFTER_SECONDS (killed, out of
    memory, its machine gone), and a process that could not beat for most of
    that time stops starting sends, so a claim is never sent by two processes
    at once beyond the sends already in flight.
    """

    token = models.CharField(primary_key=True, max_length=64)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.hostname}:{self.pid}"


class SesSuppressionLift(models.Model):
    """An address lifted here that is still to be taken off SES's account-level
    suppression list (SES_SUPPRESSION_SYNC). Written in the lift's transaction,
    so a task lost with the broker loses nothing: the periodic sync forwards
    what is left, and its pull does not bring these addresses back meanwhile."""

    email = models.CharField(max_length=320, unique=True)
    lifted_at = models.DateTimeField()

    def __str__(self) -> str:
        return self.email


# Sending domains live in their own package; imported here so the app registers them.
from emailsvc.domains.models import Domain  # noqa: E402,F401
from emailsvc.streams.models import Stream, StreamSuppression  # noqa: E402,F401
