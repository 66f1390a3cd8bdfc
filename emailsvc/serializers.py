"""Input and output shapes of the sending API (SPEC §4).

Input serializers only validate and normalise; every state change happens in
services. Field errors carry our stable codes (see emailsvc.errors.CODE_ORDER).
"""

import base64
import binascii
import json
import mimetypes
import re
from datetime import timedelta
from email.utils import getaddresses

from django.conf import settings
from django.core.validators import validate_email
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from emailsvc.errors import ErrorBodySerializer
from emailsvc.models import Priority, Recipient

EMAIL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,199}$")
HEADER_NAME_PATTERN = re.compile(r"^[!-9;-~]+$")  # printable ASCII except ':' (RFC 5322 ftext)
# Headers the service sets itself, that identify the sender, or that only
# make sense hop by hop. Callers may not set them.
REFUSED_HEADERS = frozenset(
    h.lower()
    for h in (
        "From", "Sender", "To", "Cc", "Bcc", "Reply-To", "Subject", "Date", "Message-ID", "Return-Path",
        "Received", "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Content-Disposition",
        "DKIM-Signature", "ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results",
        "Authentication-Results", "Received-SPF", "Delivered-To", "Resent-From", "Resent-Sender",
        "Resent-To", "Resent-Cc", "Resent-Bcc", "Resent-Date", "Resent-Message-ID", "Envelope-To",
        "Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade", "TE", "Trailer",
        "Proxy-Authorization", "Proxy-Authenticate", "X-Metadata", "X-Tag",
    )
)
REFUSED_HEADER_PREFIXES = ("x-ses-", "x-emailsvc-", "resent-")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _rename_field(fields: dict, old: str, new: str) -> dict:
    return {(new if name == old else name): field for name, field in fields.items()}


MAX_DISPLAY_NAME = 200


def parse_address(value) -> tuple[str, str]:
    """`"Jane <jane@example.com>"`, `"jane@example.com"` or `{"email", "name"}` → (name, address)."""
    if isinstance(value, dict):
        name, address = value.get("name") or "", value.get("email")
        if not isinstance(address, str) or not isinstance(name, str):
            raise serializers.ValidationError(f"{value!r} is not a valid email address.", code="invalid_address")
    elif isinstance(value, str):
        if _CONTROL.search(value):
            raise serializers.ValidationError("An address may not contain control characters.", code="invalid_address")
        parsed = getaddresses([value])
        if len(parsed) != 1:
            raise serializers.ValidationError(f"'{value}' is not one email address.", code="invalid_address")
        name, address = parsed[0]
    else:
        raise serializers.ValidationError(f"{value!r} is not a valid email address.", code="invalid_address")
    address = address.strip()
    try:
        validate_email(address)
    except DjangoValidationError:
        raise serializers.ValidationError(f"'{address or value}' is not a valid email address.", code="invalid_address") from None
    if _CONTROL.search(name):
        raise serializers.ValidationError("A display name may not contain control characters.", code="invalid_address")
    if len(name.strip()) > MAX_DISPLAY_NAME:
        raise serializers.ValidationError(
            f"A display name may be at most {MAX_DISPLAY_NAME} characters.", code="invalid_address"
        )
    local, _, domain = address.rpartition("@")
    return name.strip(), f"{local}@{domain}".lower()


@extend_schema_field(OpenApiTypes.STR)
class AddressField(serializers.Field):
    """One address: a string (optionally with display name) or {email, name}."""

    def to_internal_value(self, data):
        return parse_address(data)

    def to_representation(self, value):
        return value


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})
class AddressListField(serializers.Field):
    """An address or a list of addresses; every invalid entry is reported."""

    def to_internal_value(self, data):
        items = data if isinstance(data, list) else [data]
        parsed, errors = [], []
        for item in items:
            try:
                parsed.append(parse_address(item))
            except serializers.ValidationError as error:
                errors.extend(error.detail)
        if errors:
            raise serializers.ValidationError(errors)
        return parsed

    def to_representation(self, value):
        return value


class AttachmentInputSerializer(serializers.Serializer):
    filename = serializers.CharField(max_length=255)
    content = serializers.CharField(help_text="Base64-encoded bytes", trim_whitespace=True)
    content_type = serializers.CharField(max_length=255, required=False)

    def validate_filename(self, value):
        if _CONTROL.search(value) or "/" in value or "\\" in value:
            raise serializers.ValidationError("A filename may not contain control characters or slashes.", code="invalid_attachment")
        return value

    def validate_content(self, value):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise serializers.ValidationError("content is not valid base64.", code="invalid_attachment") from None

    def validate(self, attrs):
        content_type = attrs.get("content_type") or mimetypes.guess_type(attrs["filename"])[0] or "application/octet-stream"
        if not re.match(r"^[\w.+-]+/[\w.+-]+$", content_type):
            raise serializers.ValidationError({"content_type": [serializers.ErrorDetail(f"'{content_type}' is not a MIME type.", code="invalid_attachment")]})
        attrs["content_type"] = content_type
        return attrs


class SendAtField(serializers.DateTimeField):
    """ISO-8601 date-time; one without a zone is UTC. At most SEND_AT_MAX_DAYS ahead."""

    def to_internal_value(self, value):
        try:
            moment = super().to_internal_value(value)
        except serializers.ValidationError:
            raise serializers.ValidationError(
                "send_at must be an ISO-8601 date-time, e.g. 2026-12-01T09:00:00Z.", code="invalid_send_at"
            ) from None
        if moment > timezone.now() + timedelta(days=settings.SEND_AT_MAX_DAYS):
            raise serializers.ValidationError(
                f"send_at may be at most {settings.SEND_AT_MAX_DAYS:g} days ahead.", code="invalid_send_at"
            )
        return moment


class SendEmailInputSerializer(serializers.Serializer):
    """The body of POST /api/v1/emails."""

    to = AddressListField()
    cc = AddressListField(required=False)
    bcc = AddressListField(required=False)
    from_ = AddressField(required=False, help_text="Sender; defaults to DEFAULT_FROM_EMAIL")
    from_name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    reply_to = AddressListField(required=False)
    subject = serializers.CharField(max_length=998, allow_blank=False, trim_whitespace=False)
    html = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    group_id = serializers.CharField(required=False, allow_null=True, max_length=200)
    email_id = serializers.CharField(required=False, max_length=200)
    headers = serializers.DictField(child=serializers.CharField(allow_blank=True, trim_whitespace=False), required=False)
    tags = serializers.ListField(child=serializers.CharField(max_length=128), required=False, max_length=50)
    metadata = serializers.DictField(required=False)
    attachments = AttachmentInputSerializer(many=True, required=False)
    priority = serializers.ChoiceField(choices=Priority.choices, required=False, default=Priority.NORMAL)
    send_at = SendAtField(required=False, allow_null=True, help_text="Send later (ISO-8601); a future time makes it `scheduled`")

    def get_fields(self):
        return _rename_field(super().get_fields(), "from_", "from")  # "from" is a Python keyword

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["The body must be a JSON object."]})
        unknown = sorted(set(data) - set(self.fields))
        errors = {}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as error:
            errors = dict(error.detail)
            value = None
        for name in unknown:
            errors[name] = [serializers.ErrorDetail("Unknown field.", code="invalid")]
        if errors:
            raise serializers.ValidationError(errors)
        return value

    def validate_group_id(self, value):
        if value is not None and (not value.strip() or _CONTROL.search(value)):
            raise serializers.ValidationError("group_id must be non-blank and free of control characters.")
        return value

    def validate_email_id(self, value):
        if value == "batch":  # the path /emails/batch is the batch endpoint
            raise serializers.ValidationError("email_id 'batch' is reserved.")
        if not EMAIL_ID_PATTERN.match(value):
            raise serializers.ValidationError(
                "email_id must be 1-200 characters of letters, digits and . _ : @ + = - (starting with a letter or digit)."
            )
        return value

    def validate_headers(self, value):
        problems = []
        for name, header_value in value.items():
            if not HEADER_NAME_PATTERN.match(name):
                problems.append(f"'{name}' is not a valid header name.")
            elif name.lower() in REFUSED_HEADERS or name.lower().startswith(REFUSED_HEADER_PREFIXES):
                problems.append(f"The header '{name}' may not be set by callers.")
            elif _CONTROL.search(header_value.replace("\t", " ")):
                problems.append(f"The value of '{name}' may not contain line breaks or control characters.")
        if problems:
            raise serializers.ValidationError([serializers.ErrorDetail(p, code="invalid_header") for p in problems])
        return value

    def validate_metadata(self, value):
        encoded = json.dumps(value, separators=(",", ":"))
        if "\\u0000" in encoded:
            raise serializers.ValidationError("metadata may not contain NUL characters.")
        size = len(encoded.encode())
        if size > settings.MAX_METADATA_BYTES:
            raise serializers.ValidationError(f"metadata is {size} bytes; at most {settings.MAX_METADATA_BYTES} are allowed.")
        return value

    def validate(self, attrs):
        if not attrs.get("to"):
            raise serializers.ValidationError({"to": [serializers.ErrorDetail("At least one recipient is required.", code="required")]})
        total = sum(len(attrs.get(role, [])) for role in Recipient.Role.values)
        if total > settings.MAX_RECIPIENTS:
            raise serializers.ValidationError(
                {"to": [serializers.ErrorDetail(f"{total} recipients in to, cc and bcc; at most {settings.MAX_RECIPIENTS} are allowed.", code="too_many_recipients")]}
            )
        if not attrs.get("html") and not attrs.get("text"):
            message = serializers.ErrorDetail("Give html, text or both.", code="required")
            raise serializers.ValidationError({"html": [message], "text": [message]})
        return attrs


class BatchInputSerializer(serializers.Serializer):
    """The body of POST /api/v1/emails/batch: `emails`, each one like POST /api/v1/emails."""

    # null items are allowed here so that each one fails on its own, below.
    emails = serializers.ListField(child=serializers.JSONField(allow_null=True), allow_empty=False)

    def validate_emails(self, value):
        if len(value) > settings.MAX_BATCH_SIZE:
            raise serializers.ValidationError(
                f"{len(value)} emails; at most {settings.MAX_BATCH_SIZE} are allowed per batch.", code="too_many_emails"
            )
        return value


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
    provider = serializers.CharField()
    provider_message_id = serializers.CharField()
    attempts = serializers.IntegerField()
    last_error = serializers.CharField()
    created_at = serializers.DateTimeField()
    send_at = serializers.DateTimeField(allow_null=True)
    queued_at = serializers.DateTimeField(allow_null=True)
    sent_at = serializers.DateTimeField(allow_null=True)
    recipients = RecipientDetailSerializer(many=True)

    def get_fields(self):
        return _rename_field(super().get_fields(), "from_", "from")


class EmailDetailOutputSerializer(EmailSummaryOutputSerializer):
    """GET /api/v1/emails/{email_id}: the whole record with its event timeline."""

    reply_to = serializers.ListField(child=serializers.CharField())
    html = serializers.CharField()
    text = serializers.CharField()
    headers = serializers.DictField(child=serializers.CharField())
    attachments = AttachmentOutputSerializer(many=True)
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
