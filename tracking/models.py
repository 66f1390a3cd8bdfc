"""Engagement facts: every provider event received, kept raw and normalized (SPEC §3, §6)."""

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

    event_id = models.CharField(max_length=255)
    recipient_email = models.CharField(max_length=320, blank=True, help_text="Lower-cased address; empty if none")
    event_type = models.CharField(max_length=24, choices=EventType.choices)
    provider_message_id = models.CharField(max_length=255, blank=True, db_index=True)
    message = models.ForeignKey(
        "emailsvc.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    recipient = models.ForeignKey(
        "emailsvc.Recipient", null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    occurred_at = models.DateTimeField(help_text="When the provider says it happened")
    received_at = models.DateTimeField(auto_now_add=True)
    source = models.CharField(max_length=8, choices=Source.choices)
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
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.recipient_email} ({self.event_id})"
