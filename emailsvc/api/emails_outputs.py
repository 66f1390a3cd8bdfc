"""What the emails API answers: an email, a page of them, a send or batch receipt (SPEC §4)."""

from rest_framework import serializers

from core.fields import cursor_page_serializer, rename_field
from core.responses import ErrorBodySerializer
from emailsvc.models import Status


class RecipientStatusSerializer(serializers.Serializer):
    email = serializers.CharField()
    status = serializers.CharField()


class SendEmailOutputSerializer(serializers.Serializer):
    email_id = serializers.CharField()
    group_id = serializers.CharField(allow_null=True)
    status = serializers.CharField()
    recipients = RecipientStatusSerializer(many=True)


class RecipientDetailSerializer(serializers.Serializer):
    email = serializers.CharField()
    name = serializers.CharField()
    role = serializers.CharField()
    status = serializers.CharField()
    sent_at = serializers.DateTimeField(allow_null=True)
    delivered_at = serializers.DateTimeField(allow_null=True)
    delayed = serializers.IntegerField()
    opens = serializers.ListField(child=serializers.DictField())
    open_count = serializers.IntegerField()
    last_opened_at = serializers.DateTimeField(allow_null=True)
    clicks = serializers.ListField(child=serializers.DictField())
    click_count = serializers.IntegerField()
    bounce = serializers.DictField(allow_null=True)
    complained_at = serializers.DateTimeField(allow_null=True)
    complaint_feedback_type = serializers.CharField()
    rejected_at = serializers.DateTimeField(allow_null=True)
    failed_reason = serializers.CharField()


class AttachmentOutputSerializer(serializers.Serializer):
    filename = serializers.CharField()
    content_type = serializers.CharField()
    size = serializers.IntegerField()


class SenderSerializer(serializers.Serializer):
    email = serializers.CharField(source="from_email")
    name = serializers.CharField(source="from_name")


class EventOutputSerializer(serializers.Serializer):
    """One entry of an email's event timeline."""

    event_id = serializers.CharField()
    type = serializers.CharField(source="event_type")
    recipient = serializers.CharField(source="recipient_email")
    occurred_at = serializers.DateTimeField()
    received_at = serializers.DateTimeField()
    detail = serializers.DictField()


class EmailSummaryOutputSerializer(serializers.Serializer):
    """An email in a list: everything but its bodies, attachments and events."""

    email_id = serializers.CharField()
    group_id = serializers.CharField(allow_null=True)
    status = serializers.CharField()
    from_ = SenderSerializer(source="*")
    subject = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    metadata = serializers.DictField()
    priority = serializers.CharField()
    stream = serializers.CharField(help_text="Its message stream (docs/streams.md)")
    unsubscribe = serializers.BooleanField(help_text="It carries RFC 8058 List-Unsubscribe headers")
    provider = serializers.CharField(help_text="`test` for a test key's email (never handed to a provider)")
    source = serializers.CharField(help_text="How it was submitted: `api` (POST /emails) or `smtp` (SMTP submission)")
    provider_message_id = serializers.CharField()
    test = serializers.BooleanField(
        source="is_test", help_text="Sent with a test key: its outcomes are the SES mailbox simulator's; nothing left the service"
    )
    attempts = serializers.IntegerField()
    last_error = serializers.CharField()
    created_at = serializers.DateTimeField()
    send_at = serializers.DateTimeField(allow_null=True)
    queued_at = serializers.DateTimeField(allow_null=True)
    sent_at = serializers.DateTimeField(allow_null=True)
    template = serializers.CharField(source="template_name", help_text="The template it was rendered from, or empty")
    template_version = serializers.IntegerField(allow_null=True, help_text="The exact template version it used")
    retry_of = serializers.CharField(
        source="retry_of.email_id", allow_null=True, default=None,
        help_text="The email whose soft-bounced recipient this one sends to again",
    )
    recipients = RecipientDetailSerializer(many=True)
    track = serializers.SerializerMethodField(help_text="Open and click tracking of this email: {opens, clicks}")

    def get_track(self, message) -> dict[str, bool]:
        tracking = message.tracking or {}
        return {"opens": bool(tracking.get("opens")), "clicks": bool(tracking.get("clicks"))}

    def get_fields(self):
        return rename_field(super().get_fields(), "from_", "from")


EmailPageOutputSerializer = cursor_page_serializer(EmailSummaryOutputSerializer, "EmailPageOutputSerializer")


class EmailDetailOutputSerializer(EmailSummaryOutputSerializer):
    """GET /api/v1/emails/{email_id}: the whole record with its event timeline."""

    reply_to = serializers.ListField(child=serializers.CharField())
    html = serializers.CharField()
    text = serializers.CharField()
    headers = serializers.DictField(child=serializers.CharField())
    attachments = AttachmentOutputSerializer(many=True)
    template_data = serializers.JSONField(allow_null=True, help_text="The data the template was rendered with")
    events = EventOutputSerializer(many=True)


class BatchItemOutputSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    email_id = serializers.CharField()
    group_id = serializers.CharField(allow_null=True)
    status = serializers.CharField()


class BatchErrorOutputSerializer(ErrorBodySerializer):
    """The API's error body for one item, with the item's index."""

    index = serializers.IntegerField()


class BatchOutputSerializer(serializers.Serializer):
    data = BatchItemOutputSerializer(many=True)
    errors = BatchErrorOutputSerializer(many=True)


class CancelOutputSerializer(serializers.Serializer):
    email_id = serializers.CharField()
    status = serializers.CharField()


StatusCountsSerializer = type(
    "StatusCountsSerializer",
    (serializers.Serializer,),
    {
        "__doc__": "A count for every status (0 included).",
        **{status: serializers.IntegerField(min_value=0) for status in Status.values},
    },
)


class EmailListPageOutputSerializer(EmailPageOutputSerializer):
    """One page of GET /api/v1/emails; with `stats=true` also the counts of the whole filter."""

    stats = StatusCountsSerializer(
        required=False,
        help_text="stats=true: the emails matching the filter (all pages) per status. Exact when `stats_exact`; "
        "past 10,000 matching emails (PostgreSQL) an estimate from a sample of the ids the filter can reach",
    )
    stats_exact = serializers.BooleanField(required=False, help_text="stats=true: whether `stats` are exact counts")
