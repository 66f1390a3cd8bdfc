"""Input and output shapes of the sending API (SPEC §4).

Input serializers only validate and normalise; every state change happens in
services. Field errors carry our stable codes (see core.errors.CODE_ORDER).

What is accepted here can be sent: a value that would not survive the way to
the wire (a line break in a header, a header line over 998 octets, an address
SES cannot take) is refused now, with the field named, not failed later.
Nothing is coerced: a number where a string is expected is an error.
"""

import base64
import binascii
import json
import mimetypes
import re
import threading
from datetime import UTC, datetime, timedelta
from email.utils import getaddresses

from django.conf import settings
from django.core.validators import RegexValidator
from django.utils import timezone
from drf_spectacular.extensions import OpenApiSerializerExtension, OpenApiSerializerFieldExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.validators import ProhibitSurrogateCharactersValidator

from core.addresses import InvalidAddress, address_canonical, printable, shown
from core.responses import ErrorBodySerializer, validation_failed_from_drf
from emailsvc.models import Priority, Recipient, Status, Suppression

# \Z, not $: "$" also matches before a final line break.
EMAIL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,199}\Z")
HEADER_NAME_PATTERN = re.compile(r"[!-9;-~]+")  # printable ASCII except ':' (RFC 5322 ftext); fullmatch
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

# Characters that break a header line or cannot be stored: C0 and C1 controls
# (CR and LF among them), Unicode line/paragraph separators, lone surrogates.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# The same, as the pattern the OpenAPI schema states (no surrogates: a JSON
# string with a lone one cannot be encoded as UTF-8 at all).
_NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*\Z"

MAX_TEMPLATE_DATA_BYTES = 64 * 1024
MAX_DISPLAY_NAME = 200
MAX_SUBJECT = 998
MAX_TAG = 128
_ROLES = tuple(Recipient.Role.values)  # read once: the enum builds that list on every read
MAX_TAGS = 50
# Custom headers: each value is folded at spaces onto lines of at most 998
# octets (RFC 5322 §2.1.1) — a run without spaces cannot be folded, so runs are
# capped well below that; values and their number are capped so headers stay
# a small part of a message.
MAX_CUSTOM_HEADERS = 50
MAX_HEADER_NAME = 100
MAX_HEADER_VALUE = 2000
MAX_HEADER_WORD = 900
_LONG_WORD = re.compile(r"[^ \t]{%d,}" % (MAX_HEADER_WORD + 1))


def _rename_field(fields: dict, old: str, new: str) -> dict:
    return {(new if name == old else name): field for name, field in fields.items()}


def _json_kind(value) -> str:
    """What a decoded JSON value is, in the words of JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string" if isinstance(value, str) else type(value).__name__


def _no_control(noun: str) -> RegexValidator:
    return RegexValidator(
        _NO_CONTROL_PATTERN, message=f"{noun} may not contain line breaks or control characters.", code="invalid_field"
    )


class _NoSurrogates(ProhibitSurrogateCharactersValidator):
    """DRF's check and message, with the search done by a regex."""

    _surrogate = re.compile("[\ud800-\udfff]")

    def __call__(self, value):
        found = self._surrogate.search(str(value))
        if found:
            raise serializers.ValidationError(self.message.format(code_point=ord(found.group())), code=self.code)


_NO_SURROGATES = _NoSurrogates()


class TextField(serializers.CharField):
    """A JSON string — a number or boolean is refused, never turned into one.

    `noun` names the value in messages (default: the field's name);
    `single_line` refuses line breaks and control characters and runs of more
    than MAX_HEADER_WORD characters without a space (the value goes into a
    header); `refuse_blank` makes "" an invalid value rather than a missing one.
    """

    def __init__(self, *, noun: str | None = None, single_line: bool = False, refuse_blank: bool = False, **kwargs):
        self.noun = noun
        self.single_line = single_line
        self.refuse_blank = refuse_blank
        if refuse_blank:
            kwargs.setdefault("min_length", 1)  # states it in the schema; run_validation words the error
        super().__init__(**kwargs)
        # DRF's surrogate check walks the string in Python: a regex says the same
        # in C (bodies are kilobytes, and a batch holds 500 of them).
        self.validators = [
            _NO_SURROGATES if isinstance(v, ProhibitSurrogateCharactersValidator) else v for v in self.validators
        ]
        if single_line:
            self.validators.append(_no_control(self.noun or "This value"))

    def bind(self, field_name, parent):
        super().bind(field_name, parent)
        if self.single_line and not self.noun:
            self.validators[-1] = _no_control(field_name)

    @property
    def name_in_errors(self) -> str:
        return self.noun or self.field_name or "This value"

    def run_validation(self, data=serializers.empty):
        blank = isinstance(data, str) and (data == "" or (self.trim_whitespace and not data.strip()))
        if self.refuse_blank and blank:
            # An optional field given as "" is a wrong value, not a missing one.
            raise serializers.ValidationError(f"{self.name_in_errors} may not be blank.", code="invalid_field")
        return super().run_validation(data)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            raise serializers.ValidationError(
                f"{self.name_in_errors} must be a string, not {_json_kind(data)}.", code="invalid_field"
            )
        value = super().to_internal_value(data)
        if self.single_line and value.isascii():  # non-ASCII values are RFC 2047-encoded, folded anywhere
            long_word = _LONG_WORD.search(value)
            if long_word:
                raise serializers.ValidationError(
                    f"{self.name_in_errors} has {len(long_word.group())} characters without a space; at most "
                    f"{MAX_HEADER_WORD} fit on one line of an email header.",
                    code="invalid_field",
                )
        return value


def parse_address(value) -> tuple[str, str]:
    """`"Jane <jane@example.com>"`, `"jane@example.com"` or `{"email", "name"}` → (name, address).

    The address comes back in its canonical form (core.addresses): local
    part lower-cased, domain in IDNA A-labels. Raises ValidationError
    (invalid_address) for anything that cannot be sent.
    """
    if isinstance(value, dict):
        name, address = value.get("name") or "", value.get("email")
        if not isinstance(address, str):
            raise serializers.ValidationError(
                f'An address object needs "email" as a string, not {_json_kind(address)}.', code="invalid_address"
            )
        if not isinstance(name, str):
            raise serializers.ValidationError(
                f"A display name must be a string, not {_json_kind(name)}.", code="invalid_address"
            )
        if _CONTROL.search(address):
            raise serializers.ValidationError("An address may not contain control characters.", code="invalid_address")
    elif isinstance(value, str):
        if _CONTROL.search(value):
            raise serializers.ValidationError("An address may not contain control characters.", code="invalid_address")
        parsed = getaddresses([value])
        if len(parsed) != 1:
            raise serializers.ValidationError(f"{shown(value)} is not one email address.", code="invalid_address")
        name, address = parsed[0]
    else:
        raise serializers.ValidationError(
            f'An address must be a string or an object with "email", not {_json_kind(value)}.', code="invalid_address"
        )
    if not address.strip():
        given = value if isinstance(value, str) else address
        raise serializers.ValidationError(f"{shown(given)} is not a valid email address.", code="invalid_address")
    try:
        address = address_canonical(address)
    except InvalidAddress as error:
        raise serializers.ValidationError(str(error), code="invalid_address") from None
    if _CONTROL.search(name):
        raise serializers.ValidationError("A display name may not contain control characters.", code="invalid_address")
    if len(name.strip()) > MAX_DISPLAY_NAME:
        raise serializers.ValidationError(
            f"A display name may be at most {MAX_DISPLAY_NAME} characters.", code="invalid_address"
        )
    return name.strip(), address


_ADDRESS_SCHEMA = {
    "oneOf": [
        {
            "type": "string",
            "description": "`jane@example.com` or `Jane Doe <jane@example.com>`. An internationalised domain "
            "is accepted and stored in IDNA (punycode) form; the part before `@` must be ASCII.",
        },
        {
            "type": "object",
            "properties": {
                "email": {"type": "string"},
                "name": {"type": "string", "maxLength": MAX_DISPLAY_NAME},
            },
            "required": ["email"],
        },
    ]
}


class AddressField(serializers.Field):
    """One address: a string (optionally with display name) or {email, name}."""

    def to_internal_value(self, data):
        return parse_address(data)

    def to_representation(self, value):
        return value


class AddressListField(serializers.Field):
    """An address or a list of at most `settings.<max_setting>` addresses; every invalid entry is reported."""

    def __init__(self, *, max_setting: str, **kwargs):
        self.max_setting = max_setting
        super().__init__(**kwargs)

    @property
    def max_items(self) -> int:
        return getattr(settings, self.max_setting)

    def to_internal_value(self, data):
        items = data if isinstance(data, list) else [data]
        if len(items) > self.max_items:
            # Refused before parsing: 10,000 addresses are not worth reading.
            raise serializers.ValidationError(
                f"{len(items)} addresses in {self.field_name}; at most {self.max_items} are allowed.",
                code="too_many_recipients",
            )
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


class AddressFieldSchema(OpenApiSerializerFieldExtension):
    target_class = AddressField

    def map_serializer_field(self, auto_schema, direction):
        return _ADDRESS_SCHEMA


class AddressListFieldSchema(OpenApiSerializerFieldExtension):
    target_class = AddressListField

    def map_serializer_field(self, auto_schema, direction):
        return {
            "oneOf": [
                _ADDRESS_SCHEMA,
                {"type": "array", "items": _ADDRESS_SCHEMA, "maxItems": self.target.max_items},
            ],
            "description": f"One address or a list of at most {self.target.max_items} ({self.target.max_setting}).",
        }


class AttachmentInputSerializer(serializers.Serializer):
    filename = TextField(max_length=255)
    content = TextField(help_text="Base64-encoded bytes", trim_whitespace=True)
    content_type = TextField(max_length=255, required=False)

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
        if not re.fullmatch(r"[\w.+-]+/[\w.+-]+", content_type, re.ASCII):
            raise serializers.ValidationError(
                {"content_type": [serializers.ErrorDetail(f"{shown(content_type)} is not a MIME type.", code="invalid_attachment")]}
            )
        attrs["content_type"] = content_type
        return attrs


class SendAtField(serializers.DateTimeField):
    """ISO-8601 date-time; one without a zone is UTC. At most SEND_AT_MAX_DAYS ahead."""

    def to_internal_value(self, value):
        if not isinstance(value, str):
            raise serializers.ValidationError(
                f"send_at must be an ISO-8601 date-time string, not {_json_kind(value)}.", code="invalid_send_at"
            )
        if _CONTROL.search(value):
            raise serializers.ValidationError("send_at may not contain control characters.", code="invalid_send_at")
        try:
            moment = super().to_internal_value(value)
        except serializers.ValidationError:
            raise serializers.ValidationError(
                f"send_at {shown(value)} is not an ISO-8601 date-time, e.g. 2026-12-01T09:00:00Z.", code="invalid_send_at"
            ) from None
        now = timezone.now()
        if moment > now + timedelta(days=settings.SEND_AT_MAX_DAYS):
            ahead = (moment - now) / timedelta(days=1)
            raise serializers.ValidationError(
                f"send_at is {ahead:,.1f} days ahead; it may be at most {settings.SEND_AT_MAX_DAYS:g} days ahead "
                "(SEND_AT_MAX_DAYS).",
                code="invalid_send_at",
            )
        return moment


class HeadersField(serializers.DictField):
    """Custom headers: {name: value}; the limits are checked by SendEmailInputSerializer.validate_headers."""

    def __init__(self, **kwargs):
        super().__init__(child=TextField(allow_blank=True, trim_whitespace=False, noun="A header value"), **kwargs)


class HeadersFieldSchema(OpenApiSerializerFieldExtension):
    target_class = HeadersField

    def map_serializer_field(self, auto_schema, direction):
        return {
            "type": "object",
            "maxProperties": MAX_CUSTOM_HEADERS,
            "additionalProperties": {
                "type": "string",
                "maxLength": MAX_HEADER_VALUE,
                "pattern": r"^[^\u0000-\u0008\u000a-\u001f\u007f-\u009f\u2028\u2029]*$",  # tab allowed
            },
        }


def _strings(value):
    """Every key and string value inside a decoded JSON value (iteratively)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            yield from node.keys()
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


class SendEmailInputSerializer(serializers.Serializer):
    """The body of POST /api/v1/emails."""

    to = AddressListField(max_setting="MAX_RECIPIENTS")
    cc = AddressListField(max_setting="MAX_RECIPIENTS", required=False)
    bcc = AddressListField(max_setting="MAX_RECIPIENTS", required=False)
    from_ = AddressField(required=False, help_text="Sender; defaults to DEFAULT_FROM_EMAIL")
    from_name = TextField(required=False, allow_blank=True, max_length=MAX_DISPLAY_NAME, single_line=True)
    reply_to = AddressListField(max_setting="MAX_REPLY_TO", required=False)
    subject = TextField(
        required=False, max_length=MAX_SUBJECT, allow_blank=False, trim_whitespace=False, single_line=True,
        help_text="Required unless a template gives it",
    )
    html = TextField(required=False, allow_blank=True, trim_whitespace=False)
    text = TextField(required=False, allow_blank=True, trim_whitespace=False)
    group_id = TextField(required=False, allow_null=True, max_length=200, single_line=True, refuse_blank=True)
    email_id = TextField(
        required=False,
        max_length=200,
        refuse_blank=True,
        validators=[
            RegexValidator(
                EMAIL_ID_PATTERN,
                message="email_id must be 1-200 characters of letters, digits and . _ : @ + = - "
                "(starting with a letter or digit).",
                code="invalid_field",
            )
        ],
        help_text="Your own id for the email (unique; `batch` is reserved). Default: a UUID.",
    )
    headers = HeadersField(
        required=False,
        help_text=(
            f"Custom headers: at most {MAX_CUSTOM_HEADERS}; names of printable ASCII (no ':'), at most "
            f"{MAX_HEADER_NAME} characters; values at most {MAX_HEADER_VALUE} characters, no line breaks, and "
            f"(ASCII values) no run of more than {MAX_HEADER_WORD} characters without a space. Identity and "
            "hop-by-hop headers are refused (invalid_header)."
        ),
    )
    tags = serializers.ListField(
        child=TextField(max_length=MAX_TAG, noun="A tag", single_line=True, refuse_blank=True),
        required=False,
        max_length=MAX_TAGS,
    )
    metadata = serializers.DictField(
        required=False, help_text="Any JSON object, at most MAX_METADATA_BYTES (default 10 KB) as compact JSON."
    )
    attachments = AttachmentInputSerializer(many=True, required=False)
    template = TextField(
        required=False, max_length=120, single_line=True, refuse_blank=True,
        help_text="A stored template: `name` (its latest version) or `name@version`. It gives the subject, "
        "html, text and default sender; fields given here win.",
    )
    template_data = serializers.DictField(
        required=False,
        help_text=f"The template's variables: a JSON object of at most {MAX_TEMPLATE_DATA_BYTES // 1024} KB.",
    )
    priority = serializers.ChoiceField(choices=Priority.choices, required=False, default=Priority.NORMAL)
    send_at = SendAtField(
        required=False,
        allow_null=True,
        help_text="Send later (ISO-8601; UTC without a zone), at most SEND_AT_MAX_DAYS (default 30) ahead; "
        "a future time makes it `scheduled`",
    )

    def get_fields(self):
        return _rename_field(super().get_fields(), "from_", "from")  # "from" is a Python keyword

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": [f"The body must be a JSON object, not {_json_kind(data)}."]}
            )
        unknown = sorted(set(data) - set(self.fields))
        errors = {}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as error:
            errors = dict(error.detail)
            value = None
        for name in unknown:
            errors[printable(name)] = [serializers.ErrorDetail("Unknown field.", code="invalid")]
        if errors and not data.get("template") and "subject" not in data:
            # Required unless a template gives it: reported with the other missing fields.
            errors.setdefault("subject", [serializers.ErrorDetail("This field is required.", code="required")])
        if errors:
            raise serializers.ValidationError(errors)
        return value

    def validate_email_id(self, value):
        if value == "batch":  # the path /emails/batch is the batch endpoint
            raise serializers.ValidationError("email_id 'batch' is reserved.")
        return value

    def validate_headers(self, value):
        if len(value) > MAX_CUSTOM_HEADERS:
            raise serializers.ValidationError(
                f"{len(value)} custom headers; at most {MAX_CUSTOM_HEADERS} are allowed.", code="invalid_header"
            )
        problems = []
        for name, header_value in value.items():
            if not HEADER_NAME_PATTERN.fullmatch(name) or len(name) > MAX_HEADER_NAME:
                problems.append(
                    f"{shown(name)} is not a valid header name (printable ASCII without ':', "
                    f"at most {MAX_HEADER_NAME} characters)."
                )
            elif name.lower() in REFUSED_HEADERS or name.lower().startswith(REFUSED_HEADER_PREFIXES):
                problems.append(f"The header '{name}' may not be set by callers.")
            elif _CONTROL.search(header_value.replace("\t", " ")):
                problems.append(f"The value of '{name}' may not contain line breaks or control characters.")
            elif len(header_value) > MAX_HEADER_VALUE:
                problems.append(
                    f"The value of '{name}' is {len(header_value)} characters; at most {MAX_HEADER_VALUE} are allowed."
                )
            elif header_value.isascii() and (long_word := _LONG_WORD.search(header_value)):
                problems.append(
                    f"The value of '{name}' has {len(long_word.group())} characters without a space; at most "
                    f"{MAX_HEADER_WORD} fit on one line of an email header."
                )
        if problems:
            raise serializers.ValidationError([serializers.ErrorDetail(p, code="invalid_header") for p in problems])
        return value

    def validate_metadata(self, value):
        for text in _strings(value):
            if "\x00" in text:
                raise serializers.ValidationError("metadata may not contain NUL characters.")
            if re.search(r"[\ud800-\udfff]", text):
                raise serializers.ValidationError("metadata may not contain unpaired surrogate characters.")
        try:
            encoded = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except ValueError:
            raise serializers.ValidationError(
                "metadata may not contain numbers JSON cannot carry (too large, NaN or Infinity)."
            ) from None
        size = len(encoded.encode())
        if size > settings.MAX_METADATA_BYTES:
            raise serializers.ValidationError(f"metadata is {size} bytes; at most {settings.MAX_METADATA_BYTES} are allowed.")
        return value

    def validate_template_data(self, value):
        try:
            encoded = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except ValueError:
            raise serializers.ValidationError(
                "template_data may not contain numbers JSON cannot carry (too large, NaN or Infinity)."
            ) from None
        if len(encoded.encode()) > MAX_TEMPLATE_DATA_BYTES:
            raise serializers.ValidationError(
                f"template_data is {len(encoded.encode())} bytes; at most {MAX_TEMPLATE_DATA_BYTES} are allowed."
            )
        return value

    def validate(self, attrs):
        if "template_data" in attrs and not attrs.get("template"):
            raise serializers.ValidationError(
                {"template_data": [serializers.ErrorDetail("template_data needs a template.", code="invalid_field")]}
            )
        if not attrs.get("to"):
            raise serializers.ValidationError({"to": [serializers.ErrorDetail("At least one recipient is required.", code="required")]})
        total = sum(len(attrs.get(role, [])) for role in _ROLES)
        if total > settings.MAX_RECIPIENTS:
            raise serializers.ValidationError(
                {"to": [serializers.ErrorDetail(f"{total} recipients in to, cc and bcc; at most {settings.MAX_RECIPIENTS} are allowed.", code="too_many_recipients")]}
            )
        if attrs.get("template"):
            return attrs  # the template gives what is missing; checked once it is rendered
        if not attrs.get("subject"):
            raise serializers.ValidationError(
                {"subject": [serializers.ErrorDetail("This field is required.", code="required")]}
            )
        if not attrs.get("html") and not attrs.get("text"):
            message = serializers.ErrorDetail("Give html, text or both.", code="required")
            raise serializers.ValidationError({"html": [message], "text": [message]})
        return attrs


class SendEmailInputSchema(OpenApiSerializerExtension):
    """What the generated schema cannot infer: no other fields, and html or text."""

    target_class = SendEmailInputSerializer

    def map_serializer(self, auto_schema, direction):
        schema = super().map_serializer(auto_schema, direction)
        schema["additionalProperties"] = False
        schema["anyOf"] = [{"required": ["template"]}, {"required": ["subject", "html"]}, {"required": ["subject", "text"]}]
        return schema


class BatchEmailsField(serializers.ListField):
    """The `emails` of a batch: each item is validated on its own later, so
    that one bad item (even null) fails alone."""

    def __init__(self, **kwargs):
        super().__init__(child=serializers.JSONField(allow_null=True), allow_empty=False, **kwargs)


class BatchEmailsFieldSchema(OpenApiSerializerFieldExtension):
    target_class = BatchEmailsField

    def map_serializer_field(self, auto_schema, direction):
        item = auto_schema.resolve_serializer(SendEmailInputSerializer, direction).ref
        return {
            "type": "array",
            "items": item,
            "minItems": 1,
            "maxItems": settings.MAX_BATCH_SIZE,
            "description": f"At most {settings.MAX_BATCH_SIZE} emails (MAX_BATCH_SIZE), each like POST /api/v1/emails.",
        }


class BatchInputSerializer(serializers.Serializer):
    """The body of POST /api/v1/emails/batch: `emails`, each one like POST /api/v1/emails."""

    emails = BatchEmailsField()

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
    template = serializers.CharField(source="template_name", help_text="The template it was rendered from, or empty")
    template_version = serializers.IntegerField(allow_null=True, help_text="The exact template version it used")
    retry_of = serializers.CharField(
        source="retry_of.email_id", allow_null=True, default=None,
        help_text="The email whose soft-bounced recipient this one sends to again",
    )
    recipients = RecipientDetailSerializer(many=True)

    def get_fields(self):
        return _rename_field(super().get_fields(), "from_", "from")


def cursor_page_serializer(item: type[serializers.Serializer], name: str) -> type[serializers.Serializer]:
    """The shape of one page of a cursor-paginated list of `item` (DRF's CursorPagination)."""
    return type(
        name,
        (serializers.Serializer,),
        {
            "__doc__": f"One page of a cursor-paginated list; follow `next` for more ({item.__name__}).",
            "next": serializers.URLField(allow_null=True, help_text="The next page, or null on the last"),
            "previous": serializers.URLField(allow_null=True, help_text="The previous page, or null on the first"),
            "results": item(many=True),
        },
    )


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


_per_thread = threading.local()


def send_request_validate(data) -> dict:
    """The validated data of one send request (SendEmailInputSerializer), or
    ValidationFailed with the request's stable code.

    One serializer per thread does the work for every request and batch item:
    DRF deep-copies the declared fields for each new serializer, which costs
    more than validating a typical email.
    """
    validator = getattr(_per_thread, "send_email", None)
    if validator is None:
        validator = _per_thread.send_email = SendEmailInputSerializer()
    try:
        return validator.run_validation(data)
    except serializers.ValidationError as error:
        raise validation_failed_from_drf(error.detail) from None


class PauseFiguresSerializer(serializers.Serializer):
    sent = serializers.IntegerField()
    bounced = serializers.IntegerField()
    complained = serializers.IntegerField()
    bounce_rate = serializers.FloatField(allow_null=True)
    complaint_rate = serializers.FloatField(allow_null=True)


class SendingDomainStatusSerializer(serializers.Serializer):
    domain = serializers.CharField(help_text='A sending domain, or "*" for the whole account')
    paused = serializers.BooleanField()
    cause = serializers.CharField(allow_null=True, help_text="breaker, provider, quota or operator")
    reason = serializers.CharField(allow_blank=True)
    since = serializers.DateTimeField(allow_null=True)
    until = serializers.DateTimeField(allow_null=True, help_text="When the pause lifts on its own (quota, cool-down)")
    figures_at_pause = serializers.DictField(allow_null=True)
    last_24h = PauseFiguresSerializer()


class BreakerThresholdsSerializer(serializers.Serializer):
    bounce_rate_pause = serializers.FloatField()
    complaint_rate_pause = serializers.FloatField()
    min_sent = serializers.IntegerField()
    auto_resume_hours = serializers.FloatField(allow_null=True)


class SendingStatusOutputSerializer(serializers.Serializer):
    account = SendingDomainStatusSerializer()
    domains = SendingDomainStatusSerializer(many=True)
    thresholds = BreakerThresholdsSerializer()


class SendingResumeInputSerializer(serializers.Serializer):
    domain = TextField(
        required=False, max_length=255, single_line=True, refuse_blank=True,
        help_text='The domain to resume, "*" for the account; leave out to resume every pause',
    )

    def validate_domain(self, value):
        return value if value == "*" else value.strip().lower()


class SendingResumeOutputSerializer(serializers.Serializer):
    resumed = serializers.IntegerField(help_text="How many pauses ended")


# --- Suppressions (SPEC §4 /suppressions) -------------------------------------------

# A note may run over lines; other control characters (NUL above all) are refused.
_NOTE_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*\Z"
MAX_SUPPRESSION_NOTE = 2000


class SuppressionAddressField(TextField):
    """One bare address (no display name), in its canonical form."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 320)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        try:
            return address_canonical(value)
        except InvalidAddress as error:
            raise serializers.ValidationError(str(error), code="invalid_address") from None


class FutureDateTimeField(serializers.DateTimeField):
    def to_internal_value(self, value):
        moment = super().to_internal_value(value)
        if moment <= timezone.now():
            raise serializers.ValidationError("must be in the future.", code="invalid_field")
        return moment


class SuppressionAddInputSerializer(serializers.Serializer):
    email = SuppressionAddressField(help_text="The address; any case, an internationalised domain in either form")
    reason = serializers.ChoiceField(choices=Suppression.Reason.choices, default=Suppression.Reason.MANUAL)
    note = TextField(
        required=False, allow_blank=True, default="", max_length=MAX_SUPPRESSION_NOTE,
        validators=[RegexValidator(_NOTE_PATTERN, message="note may not contain control characters.", code="invalid_field")],
    )
    expires_at = FutureDateTimeField(required=False, allow_null=True, default=None, help_text="Lifted by itself then; null: never")


class SuppressionOutputSerializer(serializers.Serializer):
    email = serializers.CharField()
    reason = serializers.ChoiceField(choices=Suppression.Reason.choices)
    source = serializers.CharField(help_text="Who or what added it: an API key, an import, an event id, ses-account-list")
    note = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    active = serializers.SerializerMethodField(help_text="False once expires_at has passed (sends are no longer refused)")

    @extend_schema_field(serializers.BooleanField())
    def get_active(self, suppression) -> bool:
        return suppression.expires_at is None or suppression.expires_at > timezone.now()


class SuppressionListInputSerializer(serializers.Serializer):
    """The query of GET /suppressions (also what the schema states)."""

    reason = serializers.ChoiceField(choices=Suppression.Reason.choices, required=False)
    created_after = serializers.DateTimeField(required=False, help_text="Added at or after this moment")
    created_before = serializers.DateTimeField(required=False, help_text="Added before this moment")
    search = TextField(required=False, allow_blank=True, single_line=True, max_length=320, help_text="A part of the address (any case)")
    prefix = TextField(
        required=False, allow_blank=True, single_line=True, max_length=320,
        help_text="The start of the address (any case); an index lookup, fast on any list size",
    )
    active = serializers.BooleanField(required=False, help_text="true: leave out expired entries; false: only them")
    cursor = serializers.CharField(required=False, help_text="From `next` or `previous` of a page")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=500, help_text="Entries a page (default 50)")


SuppressionPageOutputSerializer = cursor_page_serializer(SuppressionOutputSerializer, "SuppressionPageOutputSerializer")


class SuppressionImportInputSerializer(serializers.Serializer):
    """The query of POST /suppressions/import."""

    partial = serializers.BooleanField(
        default=False, help_text="true: import the valid rows and report the bad ones; false (default): any bad row imports nothing"
    )
    reason = serializers.ChoiceField(
        choices=Suppression.Reason.choices, default=Suppression.Reason.MANUAL, help_text="For rows whose reason cell is empty"
    )


class SuppressionImportUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="The CSV file: header row `email[,reason,note,expires_at]`, UTF-8")


class SuppressionImportRowErrorSerializer(serializers.Serializer):
    line = serializers.IntegerField(help_text="Line in the file; the header is line 1")
    error = serializers.CharField(help_text="invalid_address, missing_fields, invalid_reason, invalid_expires_at, invalid_field")
    detail = serializers.CharField()


class SuppressionImportOutputSerializer(serializers.Serializer):
    rows = serializers.IntegerField(help_text="Data rows read (blank lines and the header not counted)")
    imported = serializers.IntegerField(help_text="Addresses suppressed by this import")
    existing = serializers.IntegerField(help_text="Addresses already suppressed, left as they were")
    duplicates = serializers.IntegerField(help_text="Rows repeating an address of an earlier row")
    error_count = serializers.IntegerField(help_text="Bad rows, not imported")
    errors = SuppressionImportRowErrorSerializer(many=True, help_text="The bad rows (the first 1,000)")


class SuppressionImportErrorOutputSerializer(ErrorBodySerializer):
    """The error body; for import_has_errors also every bad row (nothing was imported)."""

    rows = serializers.IntegerField(required=False, help_text="import_has_errors: data rows read")
    error_count = serializers.IntegerField(required=False, help_text="import_has_errors: bad rows")
    errors = SuppressionImportRowErrorSerializer(
        many=True, required=False, help_text="import_has_errors: the bad rows (the first 1,000)"
    )


# --- Listing emails and counting them (GET /emails, GET /stats) -----------------------------

MAX_METADATA_FILTERS = 10
_METADATA_PARAM = re.compile(r"metadata\[(.*)\]", re.DOTALL)
# Datetimes a caller may give: a day short of datetime's own limits, so that
# windows can be widened to whole hours and days without overflowing.
_EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
_LATEST = datetime(9999, 12, 30, tzinfo=UTC)


class MomentField(serializers.DateTimeField):
    """An ISO-8601 date-time (UTC when it names no zone), answered in UTC."""

    def to_internal_value(self, value):
        if isinstance(value, str) and _CONTROL.search(value):
            raise serializers.ValidationError(f"{self.field_name} may not contain control characters.", code="invalid_field")
        try:
            moment = super().to_internal_value(value).astimezone(UTC)
        except serializers.ValidationError:
            raise serializers.ValidationError(
                f"{self.field_name} {shown(str(value))} is not an ISO-8601 date-time, e.g. 2026-12-01T09:00:00Z.",
                code="invalid_field",
            ) from None
        except (OverflowError, ValueError):
            moment = None
        if moment is None or not _EARLIEST <= moment <= _LATEST:
            raise serializers.ValidationError(f"{self.field_name} is out of range.", code="invalid_field")
        return moment


def _filter_text(max_length: int, help_text: str) -> TextField:
    return TextField(required=False, single_line=True, refuse_blank=True, max_length=max_length, help_text=help_text)


class EmailListInputSerializer(serializers.Serializer):
    """The query of GET /api/v1/emails (besides `metadata[key]`)."""

    status = serializers.ListField(
        child=serializers.ChoiceField(
            choices=Status.choices,
            error_messages={"invalid_choice": f'"{{input}}" is not a status; one of: {", ".join(Status.values)}.'},
        ),
        required=False,
        help_text="Emails in any of these statuses: repeat the parameter or separate them with commas",
    )
    group_id = _filter_text(200, "Emails of this group")
    to = _filter_text(320, "Emails with this recipient (to, cc or bcc), in any case and either form of an IDN domain")
    tag = _filter_text(MAX_TAG, "Emails with this tag among their tags")
    template = _filter_text(200, "Emails rendered from the template of this name (any version)")
    created_after = MomentField(required=False, help_text="Accepted at or after this moment (ISO-8601)")
    created_before = MomentField(required=False, help_text="Accepted before this moment (ISO-8601)")
    stats = serializers.BooleanField(
        required=False, default=False,
        help_text="true: add `stats`, the emails of the whole filter (every page) counted per status",
    )
    cursor = serializers.CharField(required=False, help_text="From `next` or `previous` of a page")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=500, help_text="Emails a page (default 50)")


class _MetadataFilterSerializer(serializers.Serializer):
    key = TextField(max_length=200, single_line=True, refuse_blank=True, noun="A metadata key", trim_whitespace=False)
    value = TextField(max_length=1000, single_line=True, noun="A metadata value", allow_blank=True, trim_whitespace=False)


def _one_value(query, name: str, problems: dict) -> str | None:
    values = query.getlist(name)
    if len(values) > 1:
        problems.setdefault(name, []).append(f"Give {name} once.")
    return values[-1] if values else None


def _error_list(errors) -> list:
    """A parameter's messages, however nested (a list's items report by index)."""
    if isinstance(errors, dict):
        return [message for value in errors.values() for message in _error_list(value)]
    if isinstance(errors, list):
        return [message for value in errors for message in _error_list(value)]
    return [errors]


def email_list_query_validate(query) -> dict:
    """The validated query of GET /api/v1/emails (a QueryDict), or ValidationFailed naming each bad parameter.

    `status` may be repeated or comma-separated; `metadata[key]=value` may be
    given for up to MAX_METADATA_FILTERS keys; any other parameter is refused.
    """
    problems: dict[str, list] = {}
    data: dict = {}
    metadata: list[tuple[str, str]] = []
    for name in query:
        matched = _METADATA_PARAM.fullmatch(name)
        if matched:
            for value in query.getlist(name):
                item = _MetadataFilterSerializer(data={"key": matched.group(1), "value": value})
                if item.is_valid():
                    metadata.append((item.validated_data["key"], item.validated_data["value"]))
                else:
                    problems.setdefault(name, []).extend(m for messages in item.errors.values() for m in messages)
        elif name == "status":
            data["status"] = [part.strip() for value in query.getlist(name) for part in value.split(",")]
        elif name in EmailListInputSerializer._declared_fields:
            data[name] = _one_value(query, name, problems)
        elif name == "metadata" or name.startswith("metadata["):
            problems.setdefault(name, []).append("Filter on metadata as metadata[key]=value.")
        else:
            problems.setdefault(name, []).append(f"Unknown parameter {shown(name)}.")
    if len(metadata) > MAX_METADATA_FILTERS:
        problems.setdefault("metadata", []).append(f"At most {MAX_METADATA_FILTERS} metadata filters are allowed.")
    serializer = EmailListInputSerializer(data=data)
    if not serializer.is_valid():
        for name, errors in serializer.errors.items():
            problems.setdefault(name, []).extend(_error_list(errors))
    if problems:
        raise validation_failed_from_drf(problems)
    return {**serializer.validated_data, "metadata": metadata}


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


from emailsvc.listing import INTERVALS, bucket_ceil, bucket_floor  # noqa: E402 - the list's own section


class StatsInputSerializer(serializers.Serializer):
    """The query of GET /api/v1/stats."""

    # Buckets a window may span once widened to whole ones: 7 days by hour, 90 by day (+1 partly covered).
    MAX_BUCKETS = {"hour": 7 * 24 + 1, "day": 90 + 1}

    from_ = MomentField(required=False, help_text="Start of the window (ISO-8601; default `to` − 24 h), rounded down to the interval")
    to = MomentField(required=False, help_text="End of the window (ISO-8601; default now), rounded up to the interval")
    interval = serializers.ChoiceField(choices=["hour", "day"], default="hour", help_text="Bucket size (UTC hours or days)")
    group_id = _filter_text(200, "Only the transitions of this group's emails")
    tag = _filter_text(MAX_TAG, "Only the transitions of emails with this tag")

    def get_fields(self):
        return _rename_field(super().get_fields(), "from_", "from")

    def validate(self, attrs):
        end = attrs.get("to") or timezone.now().astimezone(UTC)
        start = attrs.get("from") or end - timedelta(hours=24)
        interval = attrs["interval"]
        if start >= end:
            raise serializers.ValidationError({"from": [serializers.ErrorDetail("from must be before to.", code="invalid_field")]})
        step = INTERVALS[interval]
        if (bucket_ceil(end, interval) - bucket_floor(start, interval)) / step > self.MAX_BUCKETS[interval]:
            days = (self.MAX_BUCKETS[interval] - 1) * step.total_seconds() / 86400
            raise serializers.ValidationError(
                {"from": [serializers.ErrorDetail(
                    f"The window is at most {days:g} days with interval={interval}.", code="invalid_field"
                )]}
            )
        return {**attrs, "from": start, "to": end}


def stats_query_validate(query) -> dict:
    """The validated query of GET /api/v1/stats (a QueryDict), or ValidationFailed naming each bad parameter."""
    problems: dict[str, list] = {}
    fields = StatsInputSerializer().fields
    data = {}
    for name in query:
        if name in fields:
            data[name] = _one_value(query, name, problems)
        else:
            problems.setdefault(name, []).append(f"Unknown parameter {shown(name)}.")
    serializer = StatsInputSerializer(data=data)
    if not problems and not serializer.is_valid():
        problems.update(serializer.errors)
    if problems:
        raise validation_failed_from_drf(problems)
    return serializer.validated_data


class StatsBucketSerializer(serializers.Serializer):
    start = serializers.DateTimeField(help_text="Start of the bucket (UTC); it ends where the next one starts")
    counts = StatusCountsSerializer(help_text="Transitions to each status recorded in the bucket")


class StatsOutputSerializer(serializers.Serializer):
    """GET /api/v1/stats: recipient status transitions per bucket."""

    from_ = serializers.DateTimeField(help_text="Start of the window counted (rounded down to the interval)")
    to = serializers.DateTimeField(help_text="End of the window counted (rounded up to the interval), excluded")
    interval = serializers.ChoiceField(choices=["hour", "day"])
    buckets = StatsBucketSerializer(many=True)
    totals = StatusCountsSerializer(help_text="The buckets added up")

    def get_fields(self):
        return _rename_field(super().get_fields(), "from_", "from")
