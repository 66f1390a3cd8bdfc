"""Submitting a message as MIME (SMTP submission): the same checks, store and
enqueue as POST /emails (SPEC §4 "SMTP submission", §5.1), the message kept as
written.

The submitted bytes are stored as they came, minus the headers the service
reads and removes (Bcc, `X-Emailsvc-*`), plus Message-ID and Date when the
submitter left them out (RFC 6409 §8: a submission server may add them). The
envelope decides who receives it: a recipient named in To or Cc keeps that
role, any other is a Bcc recipient (its address is on no header).
"""

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import formatdate, getaddresses, make_msgid

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from core import metrics
from core.addresses import InvalidAddress, address_canonical
from core.errors import PayloadTooLarge, ValidationFailed
from emailsvc.keys import api_key_sender_check
from emailsvc.models import ApiKey, IdempotencyKey, Message, Priority, Provider, Recipient, Source, SubmittedMime
from emailsvc.streams.sending import stream_send_check
from emailsvc.submission.policy import check_sender_policy
from emailsvc.submission.submit import _Submission, _submission_build, _submissions_store

# The X-Emailsvc-* headers a submitter may set; all are removed before sending.
TAGS_HEADER = "X-Emailsvc-Tags"
METADATA_HEADER = "X-Emailsvc-Metadata"
GROUP_HEADER = "X-Emailsvc-Group"
PRIORITY_HEADER = "X-Emailsvc-Priority"
TEMPLATE_HEADER = "X-Emailsvc-Template"
TEMPLATE_DATA_HEADER = "X-Emailsvc-Template-Data"
STREAM_HEADER = "X-Emailsvc-Stream"
UNSUBSCRIBE_HEADER = "X-Emailsvc-Unsubscribe"
CONTROL_HEADERS = (
    TAGS_HEADER, METADATA_HEADER, GROUP_HEADER, PRIORITY_HEADER, TEMPLATE_HEADER, TEMPLATE_DATA_HEADER, STREAM_HEADER,
    UNSUBSCRIBE_HEADER,
)
MAX_TAGS = 50
MAX_TAG = 128
MAX_GROUP_ID = 200
MAX_LINE = 998  # RFC 5322 §2.1.1, without the CRLF
# The answer a repeated Message-ID gets (the hash of a replayed key is always this one).
_DEDUPE_HASH = hashlib.sha256(b"smtp submission").hexdigest()
_DEDUPE_PREFIX = "smtp-message-id:"

_REMOVED = frozenset({"bcc", "x-ses-configuration-set"})
_LONG_LINE = re.compile(rb"[^\r\n]{%d}" % (MAX_LINE + 1))
_BARE_LINE_BREAK = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_FIELD_NAME = re.compile(rb"[!-9;-~]+")


@dataclass
class ParsedMime:
    """What the service reads from a submitted message, and the bytes it keeps."""

    content: bytes
    from_name: str
    from_email: str
    subject: str
    message_id: str  # as the submitter gave it; "" when the service added one
    reply_to: list[str]
    roles: dict[str, str]  # canonical address → "to" / "cc", as the headers name them
    tags: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    group_id: str | None = None
    priority: str = Priority.NORMAL
    template: str = ""  # a stored template renders the message instead of its own body
    template_data: dict = field(default_factory=dict)
    stream: str = ""  # X-Emailsvc-Stream; "" is the transactional stream
    unsubscribe: bool = False  # X-Emailsvc-Unsubscribe: true


def _refused(detail: str, code: str) -> ValidationFailed:
    return ValidationFailed(detail, code=code)


def _header_fields(head: bytes) -> list[tuple[str, bytes]]:
    """The header block's fields: (lower-cased name, the field's bytes with its CRLFs)."""
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise _refused("The message starts with a folded header line.", "invalid_header")
            name, text = fields[-1]
            fields[-1] = (name, text + line + b"\r\n")
            continue
        name, colon, _ = line.partition(b":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            shown = line[:60].decode("ascii", "replace")
            raise _refused(f"Header line {shown!r} is not 'Name: value'.", "invalid_header")
        fields.append((name.decode("ascii").lower(), line + b"\r\n"))
    return fields


def mime_parse(content: bytes) -> ParsedMime:
    """Check a submitted message and read what the service needs of it.

    Raises PayloadTooLarge over MAX_MESSAGE_BYTES, ValidationFailed with a
    stable code for a line over 998 octets (line_too_long), a bare CR or LF in
    the headers, a header line that is not one (invalid_header), a missing or
    bad From (missing_fields, invalid_address) or X-Emailsvc-* header (invalid_field).
    """
    if len(content) > settings.MAX_MESSAGE_BYTES:
        raise PayloadTooLarge(f"The message is {len(content):,} bytes; at most {settings.MAX_MESSAGE_BYTES:,} are allowed.")
    if _LONG_LINE.search(content):
        raise _refused(f"A line of the message is longer than {MAX_LINE} octets (RFC 5322 §2.1.1).", "line_too_long")
    if content.startswith(b"\r\n"):
        head, body = b"", content
    elif b"\r\n\r\n" in content:
        head, _, rest = content.partition(b"\r\n\r\n")
        head, body = head + b"\r\n", b"\r\n" + rest
    else:
        head, body = content if content.endswith(b"\r\n") else content + b"\r\n", b""
    if _BARE_LINE_BREAK.search(head):
        raise _refused("A header holds a bare CR or LF; header lines end in CRLF.", "invalid_header")
    fields = _header_fields(head)
    try:
        # compat32: the values as written (the default policy builds a class per header kind and message).
        headers = BytesHeaderParser(policy=compat32).parsebytes(head + b"\r\n")
        parsed = _fields_read(headers)
    except (HeaderParseError, ValueError, IndexError, TypeError) as error:
        raise _refused(f"A header cannot be read: {error}", "invalid_header") from None
    # Bcc, the service's own headers, and SES's configuration set header: the service names
    # the set (its stream's), so the events of the email reach it.
    kept = [text for name, text in fields if name not in _REMOVED and not name.startswith("x-emailsvc-")]
    names = {name for name, _ in fields}
    domain = parsed.from_email.rpartition("@")[2]
    if "message-id" not in names:
        kept.append(f"Message-ID: {make_msgid(domain=domain)}\r\n".encode("ascii"))
    if "date" not in names:
        kept.append(f"Date: {formatdate()}\r\n".encode("ascii"))
    parsed.content = b"".join(kept) + body
    return parsed


def _text(value) -> str:
    """A header value as a reader shows it: RFC 2047 words decoded, unfolded,
    raw 8-bit octets that are not UTF-8 shown as U+FFFD (storable)."""
    text = str(value or "")
    if "=?" in text:
        try:
            text = str(make_header(decode_header(text)))
        except (HeaderParseError, LookupError, UnicodeError, ValueError):
            pass  # shown as written
    text = " ".join(text.split()) if ("\n" in text or "\r" in text) else text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _addresses(headers, name: str) -> list[tuple[str, str]]:
    values = [str(value) for value in headers.get_all(name) or []]
    return [(name, address) for name, address in getaddresses(values) if address]


def _canonical(address: str, what: str) -> str:
    try:
        return address_canonical(address)
    except InvalidAddress as error:
        raise _refused(f"{what}: {error}", "invalid_address") from None


def _fields_read(headers) -> ParsedMime:
    senders = _addresses(headers, "From")
    if len(senders) != 1:
        detail = "The message has no From header." if not senders else "The From header must name one address."
        raise _refused(detail, "missing_fields" if not senders else "invalid_address")
    from_name, from_email = senders[0]
    roles: dict[str, str] = {}
    for role in ("cc", "to"):  # To wins for an address named in both
        for _, address in _addresses(headers, role):
            try:
                roles[address_canonical(address)] = role
            except InvalidAddress:
                pass  # a header address no envelope recipient can match
    message_id = str(headers.get("Message-ID", "") or "").strip()
    parsed = ParsedMime(
        content=b"",
        from_name=_text(from_name),
        from_email=_canonical(from_email, "From"),
        subject=_text(headers.get("Subject", "")),
        message_id=message_id,
        reply_to=[_canonical(address, "Reply-To") for _, address in _addresses(headers, "Reply-To")],
        roles=roles,
    )
    _control_headers_read(headers, parsed)
    return parsed


def _control_headers_read(headers, parsed: ParsedMime) -> None:
    known = {name.lower() for name in CONTROL_HEADERS}
    for name in headers.keys():
        if name.lower().startswith("x-emailsvc-") and name.lower() not in known:
            raise _refused(f"Unknown header {name}; known: {', '.join(CONTROL_HEADERS)}.", "invalid_header")
    if (tags := headers.get(TAGS_HEADER)) is not None:
        parsed.tags = list(dict.fromkeys(tag.strip() for tag in str(tags).split(",") if tag.strip()))
        if len(parsed.tags) > MAX_TAGS or any(len(tag) > MAX_TAG for tag in parsed.tags):
            raise _refused(f"{TAGS_HEADER}: at most {MAX_TAGS} tags of at most {MAX_TAG} characters.", "invalid_field")
    if (metadata := headers.get(METADATA_HEADER)) is not None:
        try:
            parsed.metadata = json.loads(str(metadata))
        except ValueError:
            parsed.metadata = None
        if not isinstance(parsed.metadata, dict):
            raise _refused(f"{METADATA_HEADER} must be a JSON object.", "invalid_field")
        if len(json.dumps(parsed.metadata).encode()) > settings.MAX_METADATA_BYTES:
            raise _refused(f"{METADATA_HEADER} may be at most {settings.MAX_METADATA_BYTES:,} bytes.", "invalid_field")
    if (group := headers.get(GROUP_HEADER)) is not None:
        parsed.group_id = str(group).strip() or None
        if parsed.group_id and len(parsed.group_id) > MAX_GROUP_ID:
            raise _refused(f"{GROUP_HEADER} may be at most {MAX_GROUP_ID} characters.", "invalid_field")
    if (template := headers.get(TEMPLATE_HEADER)) is not None:
        parsed.template = str(template).strip()
    if (data := headers.get(TEMPLATE_DATA_HEADER)) is not None:
        try:
            parsed.template_data = json.loads(str(data))
        except ValueError:
            parsed.template_data = None
        if not isinstance(parsed.template_data, dict) or not parsed.template:
            raise _refused(f"{TEMPLATE_DATA_HEADER} must be a JSON object, beside {TEMPLATE_HEADER}.", "invalid_field")
    if (stream := headers.get(STREAM_HEADER)) is not None:
        parsed.stream = str(stream).strip()
    if (unsubscribe := headers.get(UNSUBSCRIBE_HEADER)) is not None:
        value = str(unsubscribe).strip().lower()
        if value not in ("true", "false"):
            raise _refused(f"{UNSUBSCRIBE_HEADER} must be true or false.", "invalid_field")
        parsed.unsubscribe = value == "true"
    if (priority := headers.get(PRIORITY_HEADER)) is not None:
        parsed.priority = str(priority).strip().lower()
        if parsed.priority not in Priority.values:
            raise _refused(f"{PRIORITY_HEADER} must be one of {', '.join(Priority.values)}.", "invalid_field")


def dedupe_key(message_id: str) -> str:
    """The idempotency key of a submitted Message-ID (long ones by their hash)."""
    key = f"{_DEDUPE_PREFIX}{message_id}"
    if len(key) > 255 or not key.isprintable():
        key = f"{_DEDUPE_PREFIX}sha256:{hashlib.sha256(message_id.encode('utf-8', 'surrogateescape')).hexdigest()}"
    return key


@dataclass
class MimeSubmission:
    """One checked submission, ready to store."""

    api_key: ApiKey
    dedupe_key: str  # "" when the submitter gave no Message-ID
    submission: _Submission
    content: bytes | None  # the MIME to send; None when a template renders the message

    @property
    def email_id(self) -> str:
        return self.submission.message.email_id


def mime_submission_build(*, api_key: ApiKey, recipients: list[str], content: bytes) -> MimeSubmission:
    """Check a message submitted over SMTP and build its rows (nothing stored).

    `recipients`: the envelope's (RCPT TO), canonical. A recipient named in To
    or Cc keeps that role, any other is bcc. With X-Emailsvc-Template the
    stored template renders subject and bodies, as POST /emails with
    `template` does (a Subject header wins, as a request's `subject` does).
    Raises what mime_parse raises, PolicyViolation for a sender, reply-to or
    recipient domain not allowed, too_many_recipients, and the template errors.
    """
    parsed = mime_parse(content)
    if not recipients:
        raise _refused("The message has no envelope recipient.", "missing_fields")
    if len(recipients) > settings.MAX_RECIPIENTS:
        raise _refused(f"At most {settings.MAX_RECIPIENTS} recipients are allowed.", "too_many_recipients")
    roles = {address: parsed.roles.get(address, Recipient.Role.BCC) for address in dict.fromkeys(recipients)}
    by_role: dict[str, list[str]] = {}
    for address, role in roles.items():
        by_role.setdefault(role, []).append(address)
    api_key_sender_check(api_key=api_key, from_domain=parsed.from_email.rpartition("@")[2])
    # X-Emailsvc-Stream names the stream (transactional without it), checked as a request's `stream` is.
    stream = stream_send_check(
        api_key=api_key, data={"stream": parsed.stream, "unsubscribe": parsed.unsubscribe, "priority": parsed.priority},
        recipients=len(roles),
    )
    check_sender_policy(from_email=parsed.from_email, reply_to=parsed.reply_to, recipients=by_role)
    key = dedupe_key(parsed.message_id) if parsed.message_id else ""
    now = timezone.now()
    if parsed.template:
        data: dict = {
            "from": (parsed.from_name, parsed.from_email), "template": parsed.template,
            "template_data": parsed.template_data, "tags": parsed.tags, "metadata": parsed.metadata,
            "group_id": parsed.group_id, "priority": parsed.priority, "stream": stream.stream,
            "unsubscribe": parsed.unsubscribe,
            "reply_to": [("", address) for address in parsed.reply_to],
            **{role: [("", address) for address in addresses] for role, addresses in by_role.items()},
        }
        if parsed.subject:
            data["subject"] = parsed.subject
        submission = _submission_build(api_key=api_key, data=data, now=now)
        submission.message.source = Source.SMTP
        return MimeSubmission(api_key=api_key, dedupe_key=key, submission=submission, content=None)
    message = Message(
        from_email=parsed.from_email,
        sending_domain=parsed.from_email.rpartition("@")[2],
        from_name=parsed.from_name[:200],
        reply_to=parsed.reply_to,
        subject=parsed.subject,
        tags=parsed.tags,
        metadata=parsed.metadata,
        # Its stream's: a stream other than transactional sends at low priority.
        priority=stream.priority,
        stream=stream.stream,
        unsubscribe=stream.unsubscribe,
        # A test key's emails go to the mailbox simulator, never to the provider.
        provider=Provider.TEST if api_key.test else settings.EMAIL_PROVIDER,
        api_key=api_key,
        next_attempt_at=now,
        source=Source.SMTP,
    )
    message.group_id = parsed.group_id
    rows = [Recipient(email=address, role=role, group_id=parsed.group_id) for address, role in roles.items()]
    content = parsed.content
    if stream.unsubscribe:  # the service's own one-click headers replace the submitter's at sending
        content = _fields_removed(content, _LIST_UNSUBSCRIBE)
    return MimeSubmission(
        api_key=api_key, dedupe_key=key, submission=_Submission(message=message, recipients=rows, attachments=[]),
        content=content,
    )


_LIST_UNSUBSCRIBE = frozenset({"list-unsubscribe", "list-unsubscribe-post"})


def _fields_removed(content: bytes, names: frozenset[str]) -> bytes:
    """The message without the header fields of `names` (lower-case), folded lines included."""
    head, separator, body = content.partition(b"\r\n\r\n")
    if not separator:  # headers only
        return b"".join(text for name, text in _header_fields(content) if name not in names)
    kept = [text for name, text in _header_fields(head + b"\r\n") if name not in names]
    return b"".join(kept) + b"\r\n" + body


def mime_submissions_store(items: list[MimeSubmission]) -> list[tuple[str, bool]]:
    """Store checked submissions in one transaction and enqueue their delivery
    after commit: (email_id, duplicate) for each, once committed.

    A submission whose Message-ID its key submitted within
    IDEMPOTENCY_KEY_TTL_HOURS (stored before, or earlier in `items`) is not
    stored again: the first one's email_id comes back, duplicate True. The
    Message-ID records are written in the same transaction as the messages,
    under a unique (api_key, key): when a concurrent session stored one
    meanwhile, the items are stored one by one so each learns its own answer.
    Raises DatabaseError (nothing stored).
    """
    now = timezone.now()
    cutoff = now - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    keyed = [item for item in items if item.dedupe_key]
    existing = {}
    if keyed:
        records = IdempotencyKey.objects.filter(
            api_key_id__in={item.api_key.pk for item in keyed}, key__in={item.dedupe_key for item in keyed}
        ).only("pk", "api_key_id", "key", "created_at", "response_body")
        existing = {(record.api_key_id, record.key): record for record in records}
    results: list[tuple[str, bool] | None] = [None] * len(items)
    fresh: list[MimeSubmission] = []
    expired, first_of = [], {}
    for index, item in enumerate(items):
        if item.dedupe_key:
            pair = (item.api_key.pk, item.dedupe_key)
            record = existing.get(pair)
            if record is not None and record.created_at >= cutoff:
                results[index] = (record.response_body["email_id"], True)
                continue
            if record is not None:
                expired.append(record.pk)  # older than the TTL: this one is new
            if pair in first_of:
                results[index] = (first_of[pair], True)
                continue
            first_of[pair] = item.email_id
        fresh.append(item)
        results[index] = (item.email_id, False)
    if not fresh:
        return results
    try:
        with transaction.atomic():
            if expired:
                IdempotencyKey.objects.filter(pk__in=expired).delete()
            IdempotencyKey.objects.bulk_create([
                IdempotencyKey(
                    api_key=item.api_key, key=item.dedupe_key, request_hash=_DEDUPE_HASH, response_status=250,
                    response_body={"email_id": item.email_id},
                )
                for item in fresh if item.dedupe_key
            ])
            _submissions_store([item.submission for item in fresh], now=now)
            SubmittedMime.objects.bulk_create([
                SubmittedMime(message=item.submission.message, content=item.content)
                for item in fresh if item.content is not None
            ])
            metrics.emails_accepted_observe(
                emails=[(m.priority, m.stream) for m in (item.submission.message for item in fresh) if not m.is_test],
                endpoint="smtp",
            )
    except IntegrityError:
        for item in fresh:  # rolled back: stored again from scratch
            item.submission.message.pk = None
            for row in item.submission.recipients:
                row.pk = None
        if len(items) > 1:
            return [mime_submissions_store([item])[0] for item in items]
        if not keyed or not IdempotencyKey.objects.filter(
            api_key=items[0].api_key, key=items[0].dedupe_key, created_at__gte=cutoff
        ).exists():
            raise
        return mime_submissions_store(items)  # the concurrent one is committed: answered as a duplicate
    return results


def message_submit_mime(*, api_key: ApiKey, recipients: list[str], content: bytes) -> tuple[str, bool]:
    """Check, store and enqueue one message submitted over SMTP:
    mime_submission_build, then mime_submissions_store. (email_id, duplicate),
    once committed."""
    return mime_submissions_store([mime_submission_build(api_key=api_key, recipients=recipients, content=content)])[0]
