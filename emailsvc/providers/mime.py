"""The outbound email of a message, built with Django/anymail's EmailMessage.

`build_email` takes anything shaped like Message / Recipient / Attachment
(model rows, or the engine's light rows): it reads attributes only.
"""

import json
import re
from email.generator import BytesGenerator
from email.header import Header
from io import BytesIO
from email.utils import formataddr, make_msgid
from urllib.parse import quote

from anymail.message import AnymailMessage
from django.conf import settings

from emailsvc.addresses import address_key

TRACKING_HEADER = "X-Emailsvc-Tracking-ID"
CONFIGURATION_SET_HEADER = "X-SES-CONFIGURATION-SET"
# RFC 5322 §2.1.1: a line may not exceed 998 characters. Header values with a
# longer run than this without a place to fold are carried as RFC 2047 encoded
# words, which any MIME reader joins back into the original value.
_UNFOLDABLE_RUN = 900
_LONG_RUN = re.compile(r"[^ \t]{%d,}" % _UNFOLDABLE_RUN)


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
        fold, limit, linesep = self.policy.fold_binary, self.policy.max_line_length, self._NL
        write = self._fp.write
        for name, value in msg.raw_items():
            if (
                limit
                and type(value) is str
                and len(name) + len(value) + 2 <= limit
                and value.isascii()
                and value.isprintable()
                and value == value.strip()
            ):
                write(f"{name}: {value}{linesep}".encode("ascii"))
            else:
                write(fold(name, value))
        self.write(linesep)

    @classmethod
    def _make_boundary(cls, text=None):
        boundary = super()._make_boundary()
        if text is None:
            return boundary
        candidate, counter = boundary, 0
        while b"--" + candidate.encode("ascii") in text:
            candidate, counter = f"{boundary}.{counter}", counter + 1
        return candidate


def mime_bytes(mime, *, unixfrom: bool = False, linesep: str = "\n") -> bytes:
    """`mime` serialized exactly as Django's `as_bytes` would (no `From ` mangling)."""
    buffer = BytesIO()
    _Generator(buffer, mangle_from_=False).flatten(mime, unixfrom=unixfrom, linesep=linesep)
    return buffer.getvalue()


def _encode_unfoldable_headers(mime) -> None:
    headers = mime._headers  # the email package's own list of (name, value)
    for index, (name, value) in enumerate(headers):
        if isinstance(value, str) and len(value) >= _UNFOLDABLE_RUN and _LONG_RUN.search(value):
            headers[index] = (name, Header(value, "utf-8", header_name=name))


def tracking_id(message) -> str:
    """`<group_id>/<email_id>`; a '/' or '%' or non-ASCII in the group id is %-escaped."""
    group = quote(message.group_id or "", safe=" !\"#$&'()*+,-.:;<=>?@[\\]^_`{|}~")
    return f"{group}/{message.email_id}"


def build_email(message, recipients, attachments) -> OutboundEmail:
    """The outbound email for `message`, addressed to `recipients` only."""
    by_role: dict[str, list[str]] = {"to": [], "cc": [], "bcc": []}
    for recipient in recipients:
        # address_key: rows stored before addresses were kept in ASCII form get it here.
        by_role[recipient.role].append(formataddr((recipient.name, address_key(recipient.email))))
    headers = dict(message.headers)
    headers[TRACKING_HEADER] = tracking_id(message)
    headers["Message-ID"] = make_msgid(domain=message.from_email.rpartition("@")[2])
    if settings.SES_CONFIGURATION_SET:
        headers[CONFIGURATION_SET_HEADER] = settings.SES_CONFIGURATION_SET
    email = OutboundEmail(
        subject=message.subject,
        body=message.text or message.html,
        from_email=formataddr((message.from_name, address_key(message.from_email))),
        to=by_role["to"],
        cc=by_role["cc"],
        bcc=by_role["bcc"],
        reply_to=list(message.reply_to),
        headers=headers,
    )
    email.service_tags = list(message.tags)
    email.service_metadata = dict(message.metadata)
    email.recipient_roles = [(recipient.email, recipient.role) for recipient in recipients]
    # The SMTP envelope: the bare ASCII addresses (no display name to encode and parse again).
    email.envelope_from = address_key(message.from_email)
    email.envelope_recipients = [address_key(recipient.email) for recipient in recipients]
    email.tracking_id = headers[TRACKING_HEADER]
    if message.html and message.text:
        email.attach_alternative(message.html, "text/html")
    elif message.html:
        email.content_subtype = "html"
    for attachment in attachments:
        email.attach(attachment.filename, bytes(attachment.content), attachment.content_type)
    return email
