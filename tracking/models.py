"""Engagement facts: every provider event received, kept raw and normalized (SPEC §3, §6)."""

import secrets
import uuid

from django.db import models


class EventType(models.TextChoices):
    SEND = "send"
    DELIVERY = "delivery"
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    OPEN = "open"
    CLICK = "click"
    REJECT = "reject"
    DELIVERY_DELAY = "delivery_delay"
    RENDERING_FAILURE = "rendering_failure"
    SUBSCRIPTION = "subscription"
    UNKNOWN = "unknown"


class EngagementEvent(models.Model):
    """One provider event for one recipient.

    `event_id` is the provider's id of the notification (the SNS MessageId, which
    SNS reuses on retries); with the recipient it is unique, so a replayed event
    is stored once and applied once. Events whose message is unknown are kept
    with `message` empty.
    """

    class Source(models.TextChoices):
        SQS = "sqs"
        SNS = "sns"
        SIMULATOR = "simulator"  # a test key's email: the mailbox simulator's events
        TRACKING = "tracking"  # emailsvc's own open pixel and click redirects (tracking.hits)

    event_id = models.CharField(max_length=255)
    recipient_email = models.CharField(max_length=320, blank=True, help_text="Lower-cased address; empty if none")
    event_type = models.CharField(max_length=24, choices=EventType.choices)
    provider_message_id = models.CharField(max_length=255, blank=True)
    message = models.ForeignKey(
        # Indexed by event_message_occurred, whose first column it is.
        "emailsvc.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="events", db_index=False
    )
    recipient = models.ForeignKey(
        "emailsvc.Recipient", null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    occurred_at = models.DateTimeField(help_text="When the provider says it happened")
    received_at = models.DateTimeField(auto_now_add=True)
    source = models.CharField(max_length=16, choices=Source.choices)
    detail = models.JSONField(default=dict, blank=True, help_text="Normalized facts: bounce type, url, …")
    raw = models.JSONField(help_text="The provider's event as received")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["event_id", "recipient_email"], name="event_unique_per_recipient"),
        ]
        indexes = [
            models.Index(fields=["message", "occurred_at"], name="event_message_occurred"),
            models.Index(fields=["recipient_email", "occurred_at"], name="event_recipient_occurred"),
            models.Index(fields=["event_type", "received_at"], name="event_type_received"),
            # Equality only (the admin's search): no pattern-ops twin to keep up on every insert.
            models.Index(fields=["provider_message_id"], name="event_provider_message"),
            # The events still waiting for their message (events_relink, after every drain run).
            models.Index(fields=["received_at"], condition=models.Q(message__isnull=True), name="event_orphan_received"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.recipient_email} ({self.event_id})"


# --- Outbound status webhooks (SPEC §6.6) --------------------------------------


def new_webhook_endpoint_id() -> str:
    return f"wh_{secrets.token_hex(12)}"


def new_webhook_id() -> str:
    """The `webhook-id` of one delivery: the same on every attempt (Standard Webhooks)."""
    return f"msg_{uuid.uuid4().hex}"


class WebhookEndpoint(models.Model):
    """A caller's subscription: status changes of `event_types` are POSTed to `url`.

    The signing secret has to be kept readable (it is an HMAC key): it is shown
    once, at creation, never by the API or the admin afterwards. An endpoint
    failing without a break for WEBHOOK_DISABLE_AFTER_HOURS is disabled
    (`disabled_at`, `disabled_reason`); its pending deliveries wait until it is
    enabled again.
    """

    public_id = models.CharField(max_length=40, unique=True, default=new_webhook_endpoint_id, help_text="Public id")
    url = models.CharField(max_length=2000)
    event_types = models.JSONField(default=list, help_text='Recipient statuses to send, or ["*"] for all')
    description = models.CharField(max_length=500, blank=True)
    secret = models.CharField(max_length=100, help_text="whsec_…: the signing key, shown once")
    created_at = models.DateTimeField(auto_now_add=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.TextField(blank=True)
    first_failure_at = models.DateTimeField(
        null=True, blank=True, help_text="Start of the current run of failed attempts; empty after a success"
    )
    last_failure_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "webhook endpoint"

    def __str__(self) -> str:
        return f"{self.public_id} {self.url}"

    @property
    def enabled(self) -> bool:
        return self.disabled_at is None

    def wants(self, statuses: frozenset[str]) -> bool:
        """Whether a change that reached (or passed over) `statuses` is sent here."""
        return "*" in self.event_types or not statuses.isdisjoint(self.event_types)


class WebhookDelivery(models.Model):
    """One status change to send to one endpoint, with its attempts.

    Created by the dispatcher from the StatusChange outbox, once per (change,
    endpoint); `webhook_id` is the `webhook-id` header of every attempt.
    """

    class State(models.TextChoices):
        PENDING = "pending", "pending (next attempt at next_attempt_at)"
        SUCCEEDED = "succeeded"
        FAILED = "failed", "failed (attempts exhausted, or the endpoint answered 410 Gone)"

    webhook_id = models.CharField(max_length=40, unique=True, default=new_webhook_id)
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries", db_index=False)
    change = models.ForeignKey("emailsvc.StatusChange", on_delete=models.CASCADE, related_name="+", db_index=False)
    event_type = models.CharField(max_length=16, help_text="The recipient status the change reached")
    status = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True, help_text="HTTP status of the last answer")
    last_error = models.TextField(blank=True)
    attempt_log = models.JSONField(default=list, blank=True, help_text="[{at, status_code, error, duration_ms}]")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "webhook delivery"
        verbose_name_plural = "webhook deliveries"
        constraints = [
            # change first: deleting a message's status changes finds their deliveries by it.
            models.UniqueConstraint(fields=["change", "endpoint"], name="webhook_delivery_once_per_change"),
        ]
        indexes = [
            models.Index(fields=["endpoint", "-id"], name="webhook_delivery_endpoint"),
            # What is due, per endpoint: the dispatcher's and the sender's look.
            models.Index(
                fields=["endpoint", "next_attempt_at"], condition=models.Q(status="pending"), name="webhook_delivery_due"
            ),
        ]

    def __str__(self) -> str:
        return self.webhook_id


class WebhookOutboxCursor(models.Model):
    """How far the dispatcher has read the StatusChange table (one row).

    `last_change_id` is the highest id read; `gaps` are ids below it not seen
    yet ([[first, last, first_seen_unix_time], …]): a transaction that took its
    ids earlier may commit later, so they are looked for again until
    WEBHOOK_OUTBOX_GAP_SECONDS have passed (a rolled-back id never appears).
    """

    name = models.CharField(primary_key=True, max_length=32)
    last_change_id = models.BigIntegerField(default=0)
    gaps = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.last_change_id}"
