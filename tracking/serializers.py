from rest_framework import serializers

from core.fields import TextField
from tracking.models import WebhookDelivery
from tracking.webhooks.events import EVENT_TYPE_CHOICES, EVENT_TYPES
from tracking.webhooks.targets import MAX_URL_LENGTH


class GroupAnalyticsOutputSerializer(serializers.Serializer):
    group_id = serializers.CharField()
    messages = serializers.IntegerField(help_text="Messages in the group")
    total = serializers.IntegerField(help_text="Recipients in the group (one per address of a message)")
    queued = serializers.IntegerField(help_text="Recipients not yet handed to the provider")
    sent = serializers.IntegerField(help_text="Recipients handed to the provider")
    delivered = serializers.IntegerField()
    opened = serializers.IntegerField(help_text="Open events")
    unique_opened = serializers.IntegerField(help_text="Recipients with at least one open")
    clicked = serializers.IntegerField(help_text="Click events")
    unique_clicked = serializers.IntegerField(help_text="Recipients with at least one click")
    bounced = serializers.IntegerField(help_text="Recipients with a permanent (hard) bounce")
    soft_bounced = serializers.IntegerField(help_text="Recipients with only transient/undetermined bounces")
    delayed = serializers.IntegerField(help_text="Recipients with at least one delivery delay")
    complained = serializers.IntegerField()
    failed = serializers.IntegerField()
    suppressed = serializers.IntegerField()
    cancelled = serializers.IntegerField()
    delivery_rate = serializers.FloatField(allow_null=True, help_text="delivered / sent")
    open_rate = serializers.FloatField(allow_null=True, help_text="unique_opened / delivered")
    click_rate = serializers.FloatField(allow_null=True, help_text="unique_clicked / delivered")
    bounce_rate = serializers.FloatField(allow_null=True, help_text="bounced / sent")
    complaint_rate = serializers.FloatField(allow_null=True, help_text="complained / sent")


# --- Outbound status webhooks ------------------------------------------------------


class WebhookCreateInputSerializer(serializers.Serializer):
    url = TextField(
        max_length=MAX_URL_LENGTH,
        help_text="https URL to POST status changes to; no credentials; must resolve to public addresses only",
    )
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_TYPE_CHOICES),
        min_length=1,
        max_length=len(EVENT_TYPES) + 1,
        help_text='Recipient statuses to receive (`email.<status>` events), or ["*"] for all',
    )
    description = TextField(allow_blank=True, max_length=500, default="")


class WebhookOutputSerializer(serializers.Serializer):
    id = serializers.CharField(source="public_id")
    url = serializers.CharField()
    event_types = serializers.ListField(child=serializers.CharField())
    description = serializers.CharField()
    enabled = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    disabled_at = serializers.DateTimeField(allow_null=True)
    disabled_reason = serializers.CharField(help_text="Why it was disabled; empty while enabled")
    failing_since = serializers.DateTimeField(
        source="first_failure_at", allow_null=True, help_text="First of the failed attempts since the last success"
    )
    last_success_at = serializers.DateTimeField(allow_null=True)
    last_failure_at = serializers.DateTimeField(allow_null=True)


class WebhookCreatedOutputSerializer(WebhookOutputSerializer):
    secret = serializers.CharField(
        help_text="The signing secret (whsec_…, Standard Webhooks). Shown only in this answer: store it now"
    )


class WebhookAttemptOutputSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    status_code = serializers.IntegerField(allow_null=True, help_text="HTTP status of the answer; null if none came")
    error = serializers.CharField(help_text="Empty on success")
    duration_ms = serializers.IntegerField()


class WebhookDeliveryOutputSerializer(serializers.Serializer):
    id = serializers.CharField(source="webhook_id", help_text="The `webhook-id` header of every attempt")
    webhook = serializers.CharField(source="endpoint.public_id", help_text="The webhook (endpoint) id")
    event_type = serializers.SerializerMethodField(help_text="`email.<status>`")
    email_id = serializers.CharField(source="change.message.email_id")
    recipient = serializers.CharField(source="change.email")
    status = serializers.ChoiceField(choices=WebhookDelivery.State.choices)
    attempts = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    next_attempt_at = serializers.DateTimeField(allow_null=True, help_text="When it is tried next (pending only)")
    last_attempt_at = serializers.DateTimeField(allow_null=True)
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField()
    delivered_at = serializers.DateTimeField(allow_null=True)
    attempt_log = WebhookAttemptOutputSerializer(many=True, help_text="The latest attempts, oldest first")

    def get_event_type(self, delivery) -> str:
        return f"email.{delivery.event_type}"


class WebhookTestOutputSerializer(serializers.Serializer):
    id = serializers.CharField(source="webhook_id", help_text="The `webhook-id` header the test event was sent with")
    type = serializers.CharField(source="event.type", help_text="`webhook.test`")
    ok = serializers.BooleanField(source="outcome.ok", help_text="The receiver answered 2xx")
    status_code = serializers.IntegerField(
        source="outcome.status_code", allow_null=True, help_text="HTTP status of the answer; null if none came"
    )
    duration_ms = serializers.IntegerField(source="outcome.duration_ms", help_text="From the connection to the answer")
    error = serializers.CharField(
        source="outcome.error", help_text="Empty on success; else the answer's status and text, or the network error"
    )


class WebhookDeliveriesQuerySerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=WebhookDelivery.State.choices, required=False)
