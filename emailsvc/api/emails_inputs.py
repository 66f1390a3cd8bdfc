"""What POST /api/v1/emails and /emails/batch accept (SPEC §4), and the header policy.

Input serializers only validate and normalise; every state change happens in
services. What is accepted here can be sent: a value that would not survive
the way to the wire (a line break in a header, a header line over 998 octets,
an address SES cannot take) is refused now, with the field named, not failed
later.
"""

import base64
import binascii
import json
import mimetypes
import re
import threading
from datetime import timedelta
from email.errors import CharsetError, HeaderParseError
from email.header import decode_header, make_header
from urllib.parse import unquote

from django.conf import settings
from django.core.validators import RegexValidator
from django.utils import timezone
from drf_spectacular.extensions import OpenApiSerializerExtension, OpenApiSerializerFieldExtension
from rest_framework import serializers

from core.addresses import CONTROL_CHARACTERS, MAX_DISPLAY_NAME, json_kind, printable, shown
from core.fields import MAX_HEADER_WORD, AddressField, AddressListField, TextField, rename_field
from core.header_text import MAX_HEADER_LINE, header_text_problem
from core.responses import validation_failed_from_drf
from emailsvc.api.emails_track import TrackInputSerializer
from emailsvc.models import Priority, Recipient

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

MAX_TEMPLATE_DATA_BYTES = 64 * 1024
MAX_SUBJECT = 998
MAX_TAG = 128
_ROLES = tuple(Recipient.Role.values)  # read once: the enum builds that list on every read
MAX_TAGS = 50
# Custom headers: values are folded at spaces (see core.fields.MAX_HEADER_WORD);
# values and their number are capped so headers stay a small part of a message.
MAX_CUSTOM_HEADERS = 50
MAX_HEADER_NAME = 100
MAX_HEADER_VALUE = 2000


# Attachment types Amazon SES refuses (its "Unsupported attachment types"):
# refused at the door for every provider, so an email never fails for it later.
REFUSED_EXTENSIONS = frozenset(
    """ade adp app asp bas bat cer chm cmd com cpl crt csh der exe fxp gadget hlp hta inf ins isp its js jse ksh
    lib lnk mad maf mag mam maq mar mas mat mau mav maw mda mdb mde mdt mdw mdz msc msh msh1 msh2 mshxml msh1xml
    msh2xml msi msp mst ops pcd pif plg prf prg reg scf scr sct shb shs sys ps1 ps1xml ps2 ps2xml psc1 psc2 tmp
    url vb vbe vbs vps vsmacros vss vst vsw vxd ws wsc wsf wsh xnk""".split()
)
# Types whose parts the service cannot build from bytes without changing them
# (multipart needs parts of its own, message/* is parsed and written again).
REFUSED_CONTENT_TYPES = ("multipart/", "message/")
_BASE64_LINE_BREAKS = re.compile(r"[ \t\r\n]+")
_URL_SAFE = str.maketrans("-_", "+/")


def base64_decode(text: str) -> bytes:
    """The bytes of base64 `text` as callers write it: wrapped in lines (CRLF or
    LF), unpadded, or URL-safe (RFC 4648 §5). Raises ValueError for anything else."""
    compact = _BASE64_LINE_BREAKS.sub("", text)
    if "-" in compact or "_" in compact:
        if "+" in compact or "/" in compact:
            raise ValueError("mixed alphabets")
        compact = compact.translate(_URL_SAFE)
    compact = compact.rstrip("=")
    if len(compact) % 4 == 1:
        raise ValueError("truncated")
    return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)


def filename_forms(filename: str) -> set[str]:
    """`filename` and the names a mail reader may show for it: RFC 2047 encoded
    words and RFC 2231 `charset'lang'%XX` decoded, trailing dots and spaces
    dropped (Windows drops them)."""
    forms = {filename}
    if "=?" in filename:
        try:
            forms.add(str(make_header(decode_header(filename))))
        except (HeaderParseError, CharsetError, UnicodeError, LookupError, ValueError):
            pass
    for form in list(forms):
        charset, quote, rest = form.partition("'")
        if quote and "'" in rest:
            try:
                forms.add(unquote(rest.partition("'")[2], encoding=charset or "ascii", errors="strict"))
            except (UnicodeError, LookupError):
                pass
    return {form.rstrip(" .\t") for form in forms}


def _attachment_error(message: str) -> serializers.ValidationError:
    return serializers.ValidationError(message, code="invalid_attachment")


class AttachmentInputSerializer(serializers.Serializer):
    filename = TextField(max_length=255, trim_whitespace=False)
    content = TextField(help_text="Base64-encoded bytes (standard or URL-safe, padded or not, wrapped or not)",
                        trim_whitespace=True, allow_blank=True)
    content_type = TextField(max_length=255, required=False)

    def to_internal_value(self, data):
        unknown = sorted(set(data) - set(self.fields)) if isinstance(data, dict) else []
        if unknown:
            unknown_field = serializers.ErrorDetail("Unknown field.", code="invalid")
            raise serializers.ValidationError({printable(name): [unknown_field] for name in unknown})
        return super().to_internal_value(data)

    def validate_filename(self, value):
        if CONTROL_CHARACTERS.search(value) or "/" in value or "\\" in value:
            raise _attachment_error("A filename may not contain control characters or slashes.")
        problem = header_text_problem(value, noun="A filename", blank=False)
        if problem:
            raise _attachment_error(problem)
        for form in filename_forms(value):
            extension = form.rpartition(".")[2].lower() if "." in form else ""
            if extension in REFUSED_EXTENSIONS:
                raise _attachment_error(
                    f"Attachments of type .{extension} are refused (Amazon SES does not send them): {shown(value)}."
                )
        if value != value.strip():  # mail readers drop them: the file would arrive renamed
            raise _attachment_error("A filename may not begin or end with spaces.")
        return value

    def validate_content(self, value):
        try:
            return base64_decode(value)
        except (binascii.Error, ValueError):
            raise _attachment_error("content is not valid base64.") from None

    def validate(self, attrs):
        content_type = attrs.get("content_type") or mimetypes.guess_type(attrs["filename"])[0] or "application/octet-stream"
        if not re.fullmatch(r"[\w.+-]+/[\w.+-]+", content_type, re.ASCII):
            raise serializers.ValidationError(
                {"content_type": [serializers.ErrorDetail(f"{shown(content_type)} is not a MIME type.", code="invalid_attachment")]}
            )
        if content_type.lower().startswith(REFUSED_CONTENT_TYPES):
            raise serializers.ValidationError(
                {"content_type": [serializers.ErrorDetail(
                    f"{shown(content_type)} cannot be an attachment's type: attach the file as "
                    "application/octet-stream (or its own type).", code="invalid_attachment")]}
            )
        attrs["content_type"] = content_type
        return attrs


class AttachmentInputSchema(OpenApiSerializerExtension):
    target_class = AttachmentInputSerializer

    def map_serializer(self, auto_schema, direction):
        schema = super().map_serializer(auto_schema, direction)
        schema["additionalProperties"] = False
        return schema


class SendAtField(serializers.DateTimeField):
    """ISO-8601 date-time; one without a zone is UTC. At most SEND_AT_MAX_DAYS ahead."""

    def to_internal_value(self, value):
        if not isinstance(value, str):
            raise serializers.ValidationError(
                f"send_at must be an ISO-8601 date-time string, not {json_kind(value)}.", code="invalid_send_at"
            )
        if CONTROL_CHARACTERS.search(value):
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


_ADDRESS_FIELDS = ("to", "cc", "bcc", "from", "reply_to")
_ADDRESS_KEYS = frozenset({"email", "name"})


def _address_object_problems(data: dict):
    """(field, message) for each address object given with keys other than email and name."""
    for field in _ADDRESS_FIELDS:
        given = data.get(field)
        for item in given if isinstance(given, list) else [given]:
            if isinstance(item, dict) and (unknown := sorted(set(item) - _ADDRESS_KEYS)):
                names = ", ".join(shown(str(key)) for key in unknown)
                yield field, f"Unknown field in an address object: {names} (an address object has email and name)."


def _identifier(value: str | None, noun: str) -> str | None:
    """An id as given, or ValidationError: never trimmed into another id."""
    if value is None:
        return value
    if not value.strip():
        raise serializers.ValidationError(f"{noun} may not be blank.", code="invalid_field")
    if value != value.strip():
        raise serializers.ValidationError(f"{noun} may not begin or end with spaces.", code="invalid_field")
    return value


def _long_word(name: str, value: str) -> str | None:
    """The first run of `value` without a space too long to fit on one header line after `name: `."""
    limit = min(MAX_HEADER_WORD, MAX_HEADER_LINE - len(name) - 2)
    return next((word for word in value.split() if len(word) > limit), None)


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
    group_id = TextField(
        required=False, allow_null=True, max_length=200, single_line=True, refuse_blank=True, trim_whitespace=False
    )
    email_id = TextField(
        required=False,
        max_length=200,
        refuse_blank=True,
        trim_whitespace=False,
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
        child=TextField(max_length=MAX_TAG, noun="A tag", single_line=True, refuse_blank=True, trim_whitespace=False),
        required=False,
        max_length=MAX_TAGS,
    )
    metadata = serializers.DictField(
        required=False, help_text="Any JSON object, at most MAX_METADATA_BYTES (default 10 KB) as compact JSON."
    )
    attachments = AttachmentInputSerializer(many=True, required=False)
    template = TextField(
        required=False, max_length=120, single_line=True, refuse_blank=True, trim_whitespace=False,
        help_text="A stored template: `name` (its latest version) or `name@version`. It gives the subject, "
        "html, text and default sender; fields given here win.",
    )
    template_data = serializers.DictField(
        required=False,
        help_text=f"The template's variables: a JSON object of at most {MAX_TEMPLATE_DATA_BYTES // 1024} KB.",
    )
    priority = serializers.ChoiceField(choices=Priority.choices, required=False, default=Priority.NORMAL)
    track = TrackInputSerializer(required=False, allow_null=True)
    # Message streams (docs/streams.md): checked against the stored streams when submitted.
    stream = TextField(
        required=False, max_length=64, single_line=True, refuse_blank=True,
        help_text="Its message stream: `transactional` (default), `broadcast` or one created under /api/v1/streams "
        "(400 stream_not_found; 403 key_stream_not_allowed outside the key's streams)",
    )
    unsubscribe = serializers.BooleanField(
        required=False, default=False,
        help_text="Add RFC 8058 one-click List-Unsubscribe headers (a stream with policy `always`, such as "
        "broadcast, adds them anyway). Needs a single recipient",
    )
    send_at = SendAtField(
        required=False,
        allow_null=True,
        help_text="Send later (ISO-8601; UTC without a zone), at most SEND_AT_MAX_DAYS (default 30) ahead; "
        "a future time makes it `scheduled`",
    )

    def get_fields(self):
        return rename_field(super().get_fields(), "from_", "from")  # "from" is a Python keyword

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": [f"The body must be a JSON object, not {json_kind(data)}."]}
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
        for name, problem in _address_object_problems(data):
            errors[name] = [*errors.get(name, []), serializers.ErrorDetail(problem, code="invalid")]
        if errors and not data.get("template") and "subject" not in data:
            # Required unless a template gives it: reported with the other missing fields.
            errors.setdefault("subject", [serializers.ErrorDetail("This field is required.", code="required")])
        if errors:
            raise serializers.ValidationError(errors)
        return value

    def validate_subject(self, value):
        problem = header_text_problem(value, noun="The subject", blank=False)
        if problem:
            raise serializers.ValidationError(problem, code="invalid_field")
        return value

    def validate_from_name(self, value):
        problem = header_text_problem(value, noun="from_name", display_name=True)
        if problem:
            raise serializers.ValidationError(problem, code="invalid_field")
        return value

    def validate_group_id(self, value):
        return _identifier(value, "group_id")

    def validate_template(self, value):
        return _identifier(value, "template")

    def validate_tags(self, value):
        for tag in value:
            _identifier(tag, "A tag")
            if problem := header_text_problem(tag, noun="A tag"):
                raise serializers.ValidationError(problem, code="invalid_field")
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
            elif CONTROL_CHARACTERS.search(header_value.replace("\t", " ")):
                problems.append(f"The value of '{name}' may not contain line breaks or control characters.")
            elif problem := header_text_problem(header_value.replace("\t", " "), noun=f"The value of '{name}'"):
                problems.append(problem)
            elif len(header_value) > MAX_HEADER_VALUE:
                problems.append(
                    f"The value of '{name}' is {len(header_value)} characters; at most {MAX_HEADER_VALUE} are allowed."
                )
            elif header_value.isascii() and (long_word := _long_word(name, header_value)):
                problems.append(
                    f"The value of '{name}' has {len(long_word)} characters without a space; with its name, at "
                    f"most {MAX_HEADER_LINE - len(name) - 2} fit on one line of an email header."
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
        for role in ("to", "cc", "bcc", "reply_to", "from"):
            given = attrs.get(role)
            for name, _ in ([given] if role == "from" and given else given or []):
                if problem := header_text_problem(name, noun="A display name", display_name=True):
                    error = serializers.ErrorDetail(problem, code="invalid_address")
                    raise serializers.ValidationError({role: [error]})
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
