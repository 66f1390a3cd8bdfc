"""The outbound email of a message, built with Django/anymail's EmailMessage.

`build_email` takes anything shaped like Message / Recipient / Attachment
(model rows, or the engine's light rows): it reads attributes only. Its bytes
(`wire_bytes`, what SMTP sends) are those of EmailMessage.message(), written
directly for the usual shape of email.
"""

import json
import quopri
import re
from email import encoders
from email import policy as email_policy
from email.charset import Charset
from email.generator import BytesGenerator
from email.header import Header
from email.message import EmailMessage as StdEmailMessage
from email.mime.base import MIMEBase
from email.policy import compat32
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from io import BytesIO
from urllib.parse import quote

from anymail.message import AnymailMessage
from django.conf import settings
from django.core.mail.message import RFC5322_EMAIL_LINE_LENGTH_LIMIT
from django.core.mail.utils import DNS_NAME

from core.addresses import address_key
from emailsvc.providers.tracking_links import html_tracked

TRACKING_HEADER = "X-Emailsvc-Tracking-ID"
CONFIGURATION_SET_HEADER = "X-SES-CONFIGURATION-SET"
# RFC 5322 §2.1.1: a line may not exceed 998 characters. Header values with a
# run without a place to fold too long for a line (with the header's name) are
# carried as RFC 2047 encoded words, which any MIME reader joins back into the
# original value.
_UNFOLDABLE_RUN = 900
_MAX_LINE = 998


class OutboundEmail(AnymailMessage):
    """anymail's message, plus what the service adds to every outbound email:
    `X-Tag` and `X-Metadata` headers (written here for every provider, the way
    anymail's SES backend writes them), and headers too long to fold carried as
    encoded words so no line exceeds SMTP's limit."""

    # The (address, role) pairs this email is addressed to, and its tracking id:
    # what the sandbox's event simulator needs to know.
    recipient_roles: list[tuple[str, str]]
    envelope_from: str
    envelope_recipients: list[str]
    tracking_id: str
    service_tags: list[str]
    service_metadata: dict

    def message(self):
        mime = super().message()
        for tag in self.service_tags:
            mime.add_header("X-Tag", tag)
        if self.service_metadata:
            mime["X-Metadata"] = json.dumps(self.service_metadata, separators=(",", ":"))
        _encode_unfoldable_headers(mime)
        # Every provider serializes the message through `as_bytes` (smtplib's
        # DATA, SES's raw MIME): give this one the faster, identical generator.
        mime.as_bytes = lambda unixfrom=False, linesep="\n": mime_bytes(mime, unixfrom=unixfrom, linesep=linesep)
        return mime


class _Generator(BytesGenerator):
    """The email package's bytes generator, output byte for byte the same,
    without its two costly spots (about half of an email's CPU in a worker):

    - a header that already fits on one line and holds only printable ASCII is
      written as `Name: value`, which is what compat32's folding (a `Header`
      object per header, split and re-joined) produces for it;
    - a multipart boundary is checked against the parts with a substring test
      rather than a regular expression compiled for every message (a boundary
      found anywhere, not only at a line start, is replaced: stricter, same
      guarantee)."""

    def _write_headers(self, msg):
        write, policy = self._fp.write, self.policy
        for name, value in msg.raw_items():
            write(_header_bytes(name, value, policy))
        self.write(self._NL)

    @classmethod
    def _make_boundary(cls, text=None):
        boundary = super()._make_boundary()
        if text is None:
            return boundary
        candidate, counter = boundary, 0
        while b"--" + candidate.encode("ascii") in text:
            candidate, counter = f"{boundary}.{counter}", counter + 1
        return candidate


def _header_bytes(name: str, value, policy) -> bytes:
    """One header as compat32's generator writes it (`policy` carries the line separator)."""
    if (
        policy.max_line_length
        and type(value) is str
        and len(name) + len(value) + 2 <= policy.max_line_length
        and value.isascii()
        and value.isprintable()
        and value == value.strip()
    ):
        return f"{name}: {value}{policy.linesep}".encode("ascii")
    return policy.fold_binary(name, value)


def mime_bytes(mime, *, unixfrom: bool = False, linesep: str = "\n") -> bytes:
    """`mime` serialized exactly as Django's `as_bytes` would (no `From ` mangling)."""
    buffer = BytesIO()
    _Generator(buffer, mangle_from_=False).flatten(mime, unixfrom=unixfrom, linesep=linesep)
    return buffer.getvalue()


# --- The wire bytes of a plain email, without the email package's objects ----------------

_NEWLINE = re.compile(rb"\r\n|\r|\n")
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "reply-to"})
_POLICIES: dict[str, object] = {}


def wire_bytes(email: OutboundEmail, *, linesep: str = "\r\n") -> bytes:
    """The bytes `email.message().as_bytes(linesep=linesep)` gives (a
    SubmittedEmail: its own bytes, which are CRLF already).

    An email of the usual shape — a text and/or an HTML body, no attachments,
    every header ASCII — is written directly (`_plain_bytes`), about four times
    faster than building the email package's objects and serializing them;
    anything else goes that way. tests/emailsvc/providers/test_mime.py holds the
    two to the same bytes."""
    if isinstance(email, SubmittedEmail):
        return email.raw
    plain = _plain_bytes(email, linesep)
    return plain if plain is not None else email.message().as_bytes(linesep=linesep)


def seven_bit_bytes(email: OutboundEmail) -> bytes | None:
    """The raw MIME anymail's SES backend sends for a plain `email` — message(),
    its 8bit text parts re-encoded quoted-printable, `as_bytes()` — written
    directly; None for any other email (anymail then builds it its own way).
    tests/emailsvc/providers/test_mime.py holds the two to the same bytes."""
    return _plain_bytes(email, "\n", seven_bit=True)


def _plain_bytes(email: OutboundEmail, linesep: str, *, seven_bit: bool = False) -> bytes | None:
    """What Django's EmailMessage.message() and compat32's generator produce for
    a plain email, or None when `email` is not one (the caller builds it the
    long way: that also raises what Django raises for a bad header). With
    `seven_bit`, an 8bit text part is quoted-printable as
    `email.encoders.encode_quopri` makes it."""
    if email.attachments or (email.encoding or settings.DEFAULT_CHARSET) != "utf-8":
        return None
    bodies = [(email.content_subtype, email.body)]
    if email.alternatives:
        if len(email.alternatives) != 1 or not email.body or email.alternatives[0][1] != "text/html":
            return None
        bodies.append(("html", email.alternatives[0][0]))
    extra = email.extra_headers
    names = {name.lower() for name in extra}
    if names & _ADDRESS_HEADERS or "subject" in names:
        return None
    policy = _POLICIES.get(linesep) or _POLICIES.setdefault(linesep, compat32.clone(linesep=linesep))
    newline = linesep.encode("ascii")
    parts = []
    for subtype, text in bodies:
        part = _text_part(subtype, text, newline, seven_bit=seven_bit)
        if part is None:
            return None
        parts.append(part)

    # In the order Django's message() sets them, then OutboundEmail.message()'s own.
    given = [("Subject", email.subject), ("From", email.from_email)]
    for name, values in (("To", email.to), ("Cc", email.cc), ("Reply-To", email.reply_to)):
        if values:
            given.append((name, ", ".join(str(value) for value in values)))
    if "date" not in names:
        given.append(("Date", formatdate(localtime=settings.EMAIL_USE_LOCALTIME)))
    if "message-id" not in names:
        given.append(("Message-ID", make_msgid(domain=DNS_NAME)))
    given += list(extra.items())
    given += [("X-Tag", tag) for tag in email.service_tags]
    if email.service_metadata:
        given.append(("X-Metadata", json.dumps(email.service_metadata, separators=(",", ":"))))
    headers: list[tuple[str, str]] = []
    for name, value in given:
        value = str(value)
        if "\n" in value or "\r" in value or not value.isascii() or len(value) >= _UNFOLDABLE_RUN:
            return None  # Django refuses it, encodes it, or it must be carried as encoded words
        # Django's forbid_multi_line_headers: an ASCII subject goes through Header().
        headers.append((name, _subject_encoded(value) if name == "Subject" else value))

    if len(parts) == 1:
        part_headers, body = parts[0]
        ordered = part_headers + headers
        if part_headers[-1] == ("Content-Transfer-Encoding", "quoted-printable"):
            # encode_quopri deletes the header and adds it again: after the message's own.
            ordered = part_headers[:-1] + headers + part_headers[-1:]
        out = [_header_bytes(name, value, policy) for name, value in ordered]
        out += [newline, body]
        return b"".join(out)
    texts = [b"".join([*(_header_bytes(n, v, policy) for n, v in part_headers), newline, body]) for part_headers, body in parts]
    boundary = _Generator._make_boundary(newline.join(texts))
    out = [_multipart_content_type(boundary, policy), _header_bytes("MIME-Version", "1.0", policy)]
    out += [_header_bytes(name, value, policy) for name, value in headers]
    delimiter = b"--" + boundary.encode("ascii")
    out += [newline, delimiter, newline, texts[0]]
    for text in texts[1:]:
        out += [newline, delimiter, newline, text]
    out += [newline, delimiter, b"--", newline]
    return b"".join(out)


def _subject_encoded(value: str) -> str:
    """`Header(value).encode()` for an ASCII subject: a short printable one comes
    back as it is (the test holds the two together), a longer one is folded."""
    if len(value) <= _SHORT_SUBJECT and value.isprintable():
        return value
    return Header(value).encode()


_SHORT_SUBJECT = 60


def _multipart_content_type(boundary: str, policy) -> bytes:
    """The Content-Type header of multipart/alternative as compat32 folds it: too
    long for one line, it breaks after the `;` (a boundary is `=`s and digits)."""
    value = f'multipart/alternative; boundary="{boundary}"'
    if len(value) + len("Content-Type: ") <= policy.max_line_length or len(boundary) > 60:
        return _header_bytes("Content-Type", value, policy)
    return f'Content-Type: multipart/alternative;{policy.linesep} boundary="{boundary}"{policy.linesep}'.encode("ascii")


def _text_part(
    subtype: str, text, newline: bytes, *, seven_bit: bool = False
) -> tuple[list[tuple[str, str]], bytes] | None:
    """The headers and body bytes of Django's SafeMIMEText(text, subtype, "utf-8"),
    or None when it would not be 7bit/8bit (lines too long: quoted-printable).
    With `seven_bit`, an 8bit part as encode_quopri re-encodes it (spaces too)."""
    if not isinstance(text, str) or subtype not in ("plain", "html"):
        return None
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if any(len(line.encode(errors="surrogateescape")) > RFC5322_EMAIL_LINE_LENGTH_LIMIT for line in text.splitlines()):
        return None
    encoding = "7bit" if data.isascii() else "8bit"
    if seven_bit and encoding == "8bit":
        if b"\r" in data:  # quopri keeps a lone CR as =0D: left to the email package
            return None
        encoding, data = "quoted-printable", quopri.encodestring(data, quotetabs=True).replace(b" ", b"=20")
    headers = [
        ("Content-Type", f'text/{subtype}; charset="utf-8"'),
        ("MIME-Version", "1.0"),
        ("Content-Transfer-Encoding", encoding),
    ]
    return headers, _NEWLINE.sub(newline, data)


def _encode_unfoldable_headers(mime) -> None:
    headers = mime._headers  # the email package's own list of (name, value)
    for index, (name, value) in enumerate(headers):
        if isinstance(value, str) and len(value) >= _UNFOLDABLE_RUN - len(name):
            longest = max((len(word) for word in value.split()), default=0)
            if longest >= min(_UNFOLDABLE_RUN, _MAX_LINE - len(name) - 2):
                headers[index] = (name, Header(value, "utf-8", header_name=name))


def header_text(value: str) -> str:
    """`value` as the text of a subject that a mail reader shows exactly as given.

    ASCII that a reader would decode (it looks like an RFC 2047 encoded word,
    `=?utf-8?q?…?=`) or trim (spaces at either end), or whose first word cannot
    share a line with the header's name (readers would take the fold for a
    leading space), is itself carried as encoded words; so is non-ASCII text.
    The words are short enough for the first to fit beside `Subject: `, and
    joined by spaces (which readers drop between encoded words)."""
    if not value or (
        value.isascii() and "=?" not in value and value == value.strip(" ")
        and len(value.split(" ", 1)[0]) <= _FIRST_WORD
    ):
        return value
    return " ".join(Header(value, "utf-8", maxlinelen=_FIRST_WORD).encode().split())


_FIRST_WORD = 64
_UTF8 = Charset("utf-8")


def _display_address(name: str, address: str) -> str:
    """`Name <address>`, the name as a reader shows it: one that looks like an
    encoded word is one itself (formataddr encodes a non-ASCII name as one); an
    ASCII one with a run of spaces is quoted (readers take the words of an
    unquoted name one space apart)."""
    if name.isascii() and "=?" in name:
        name = _UTF8.header_encode(name)
    elif name.isascii() and "  " in name:
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}" <{address}>'
    return formataddr((name, address)) if name else address


_DISPOSITION_POLICY = email_policy.default.clone(linesep="\n")


def _disposition(filename: str) -> str:
    """`attachment; filename=…` folded as RFC 2231 says: a long or non-ASCII name
    is split over numbered parameters (`filename*0*=`, `filename*1*=`, …) on
    lines of their own, so no line of the message grows with the name."""
    holder = StdEmailMessage(policy=_DISPOSITION_POLICY)
    holder.add_header("Content-Disposition", "attachment", filename=filename)
    folded = _DISPOSITION_POLICY.fold("Content-Disposition", holder["Content-Disposition"])
    return folded.partition(":")[2].strip()


def _attachment_part(filename: str, content: bytes, content_type: str) -> MIMEBase:
    """One attachment: its bytes exactly (base64), under the type the caller gave;
    a text type names UTF-8 as its charset when the bytes are UTF-8."""
    maintype, subtype = content_type.split("/", 1)  # ValueError for a type the API would not store
    part = MIMEBase(maintype, subtype)
    if maintype == "text":
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            part.set_param("charset", "utf-8")
    part.set_payload(content)
    encoders.encode_base64(part)
    part["Content-Disposition"] = _disposition(filename)
    return part


def tracking_id(message) -> str:
    """`<group_id>/<email_id>`; a '/' or '%' or non-ASCII in the group id is %-escaped."""
    group = quote(message.group_id or "", safe=" !\"#$&'()*+,-.:;<=>?@[\\]^_`{|}~")
    return f"{group}/{message.email_id}"


class SubmittedEmail(OutboundEmail):
    """A message submitted over SMTP, sent as its submitter wrote it: `raw` is
    the stored MIME with only the tracking header (and SES's configuration set
    header) put before it. Its address fields are the envelope's, for the
    provider's recipient list (SES's Destination); they are not written."""

    raw: bytes

    def message(self):
        raise TypeError("a submitted email is sent as its bytes (wire_bytes), never rebuilt")


_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(.*?)\r\n", re.IGNORECASE | re.MULTILINE)


def _submitted_email(message, recipients, content: bytes) -> SubmittedEmail:
    added = [(TRACKING_HEADER, tracking_id(message))]
    # Its stream's configuration set, else SES_CONFIGURATION_SET; its stream's
    # List-Unsubscribe headers (emailsvc.streams.sending.chunk_streams_apply:
    # the submission removed the submitter's own).
    configuration_set = getattr(message, "configuration_set", "") or settings.SES_CONFIGURATION_SET
    if configuration_set:
        added.append((CONFIGURATION_SET_HEADER, configuration_set))
    # Folded after each link: a header line stays within 998 octets whatever the address in the token.
    added += [
        (name, value.replace(", ", ",\r\n "))
        for name, value in (message.headers or {}).items() if name.lower().startswith("list-unsubscribe")
    ]
    head = content.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    found = _MESSAGE_ID.search(head)  # the submission added one when the submitter did not
    by_role: dict[str, list[str]] = {"to": [], "cc": [], "bcc": []}
    for recipient in recipients:
        by_role[recipient.role].append(address_key(recipient.email))
    email = SubmittedEmail(
        subject=message.subject,
        from_email=address_key(message.from_email),
        to=by_role["to"],
        cc=by_role["cc"],
        bcc=by_role["bcc"],
        headers={"Message-ID": found.group(1).decode("ascii", "replace").strip() if found else "", **dict(added)},
    )
    email.raw = b"".join(f"{name}: {value}\r\n".encode("ascii") for name, value in added) + content
    if configuration_set:
        email.esp_extra = {"ConfigurationSetName": configuration_set}
    email.service_tags, email.service_metadata = list(message.tags), dict(message.metadata)
    email.recipient_roles = [(recipient.email, recipient.role) for recipient in recipients]
    email.envelope_from = address_key(message.from_email)
    email.envelope_recipients = [address_key(recipient.email) for recipient in recipients]
    email.tracking_id = added[0][1]
    return email


def build_email(message, recipients, attachments) -> OutboundEmail:
    """The outbound email for `message`, addressed to `recipients` only (an SMTP
    submission: its MIME as written, see SubmittedEmail)."""
    submitted = getattr(message, "submitted_mime", None)
    if submitted is not None:
        return _submitted_email(message, recipients, submitted)
    by_role: dict[str, list[str]] = {"to": [], "cc": [], "bcc": []}
    for recipient in recipients:
        # address_key: rows stored before addresses were kept in ASCII form get it here.
        by_role[recipient.role].append(_display_address(recipient.name, address_key(recipient.email)))
    headers = dict(message.headers)
    headers[TRACKING_HEADER] = tracking_id(message)
    headers["Message-ID"] = make_msgid(domain=message.from_email.rpartition("@")[2])
    # The email's stream may name its own configuration set (emailsvc.streams); a tracked
    # SES email goes through SES_TRACKING_CONFIGURATION_SET when one is set.
    stream_set = getattr(message, "configuration_set", "")
    html, tracking_set = _tracking_applied(message, recipients, headers)
    configuration_set = (tracking_set if tracking_set and settings.SES_TRACKING_CONFIGURATION_SET else "") or stream_set
    configuration_set = configuration_set or tracking_set
    if configuration_set or settings.SES_CONFIGURATION_SET:
        headers[CONFIGURATION_SET_HEADER] = configuration_set or settings.SES_CONFIGURATION_SET
    email = OutboundEmail(
        subject=header_text(message.subject),
        body=message.text or html,
        from_email=_display_address(message.from_name, address_key(message.from_email)),
        to=by_role["to"],
        cc=by_role["cc"],
        bcc=by_role["bcc"],
        reply_to=[_display_address(*parseaddr(reply_to)) for reply_to in message.reply_to],
        headers=headers,
    )
    email.service_tags = list(message.tags)
    email.service_metadata = dict(message.metadata)
    email.recipient_roles = [(recipient.email, recipient.role) for recipient in recipients]
    # The SMTP envelope: the bare ASCII addresses (no display name to encode and parse again).
    email.envelope_from = address_key(message.from_email)
    email.envelope_recipients = [address_key(recipient.email) for recipient in recipients]
    email.tracking_id = headers[TRACKING_HEADER]
    if configuration_set:
        email.esp_extra = {"ConfigurationSetName": configuration_set}
    if html and message.text:
        email.attach_alternative(html, "text/html")
    elif html:
        email.content_subtype = "html"
    for attachment in attachments:
        email.attach(_attachment_part(attachment.filename, bytes(attachment.content), attachment.content_type))
    return email


def _tracking_applied(message, recipients, headers: dict) -> tuple[str, str]:
    """The HTML part to send and the SES configuration set a tracked email goes
    through ("" to keep the default). SES tracks through its configuration set
    (SES_TRACKING_CONFIGURATION_SET); every other provider gets emailsvc's own
    pixel and links, whose tokens name the first recipient of this send."""
    tracking = getattr(message, "tracking", None) or {}
    opens, clicks = bool(tracking.get("opens")), bool(tracking.get("clicks"))
    if not (opens or clicks):
        return message.html, ""
    if message.provider == "ses":
        return message.html, settings.SES_TRACKING_CONFIGURATION_SET or settings.SES_CONFIGURATION_SET
    if not message.html or not recipients:
        return message.html, ""
    html = html_tracked(
        message.html, message_id=message.pk, recipient_id=recipients[0].id, headers=message.headers,
        opens=opens, clicks=clicks,
    )
    return html, ""
