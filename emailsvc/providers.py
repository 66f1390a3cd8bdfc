"""
Delivery through anymail (Amazon SES API v2), Django's SMTP backend, or a
console no-op, behind one function: `provider_send`.

Provider failures are classified here, once, into transient (retry later),
account-level (pause, don't burn messages) and permanent (fail now).
"""

import json
import logging
import smtplib
import socket
import threading
import time
import uuid
from email.utils import formataddr, make_msgid
from urllib.parse import quote

from anymail.exceptions import AnymailAPIError, AnymailError
from anymail.message import AnymailMessage
from django.conf import settings
from django.core.mail import get_connection
from django.core.mail.backends.base import BaseEmailBackend

from emailsvc.models import Attachment, Message, Provider, Recipient

logger = logging.getLogger(__name__)

TRACKING_HEADER = "X-Emailsvc-Tracking-ID"
CONFIGURATION_SET_HEADER = "X-SES-CONFIGURATION-SET"

_BACKENDS = {
    Provider.SES: "anymail.backends.amazon_ses.EmailBackend",
    Provider.SANDBOX: "anymail.backends.amazon_ses.EmailBackend",
    Provider.SMTP: "django.core.mail.backends.smtp.EmailBackend",
    Provider.CONSOLE: "emailsvc.providers.ConsoleBackend",
}

# SES error codes (v1 and v2 API names) by what they mean for a message.
_SES_THROTTLING = {"Throttling", "ThrottlingException", "TooManyRequestsException", "LimitExceededException"}
_SES_TRANSIENT = _SES_THROTTLING | {"ServiceUnavailable", "InternalFailure", "RequestTimeout", "RequestTimeoutException"}
_SES_ACCOUNT_STOPPED = {
    "SendingPausedException",
    "AccountSendingPausedException",
    "AccountSendingPaused",
    "AccountSuspendedException",
    "ConfigurationSetSendingPausedException",
    "ConfigurationSetSendingPaused",
}


class DeliveryError(Exception):
    """A provider refused or failed a send. `reason` is what the caller will see."""

    def __init__(self, reason: str):
        self.reason = reason[:2000]
        super().__init__(self.reason)


class TransientDeliveryError(DeliveryError):
    """Try again later (throttling, 5xx, SMTP 4xx, network)."""

    def __init__(self, reason: str, *, wait_seconds: float | None = None):
        super().__init__(reason)
        self.wait_seconds = wait_seconds


class AccountStoppedError(TransientDeliveryError):
    """The provider account stopped sending: pause, alert, and keep the message."""


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help (rejected message, unverified domain, SMTP 5xx)."""


class ConsoleBackend(BaseEmailBackend):
    """EMAIL_PROVIDER=console: records everything, delivers nothing, logs one line."""

    def send_messages(self, email_messages):
        for email in email_messages:
            logger.info(
                "console delivery (not sent) message_id=%s recipients=%d subject_chars=%d",
                email.extra_headers.get("Message-ID", ""),
                len(email.recipients()),
                len(email.subject or ""),
            )
        return len(email_messages)


class _OutboundEmail(AnymailMessage):
    """anymail's message; for non-anymail backends it writes tags and metadata
    as headers the same way anymail's SES backend does (X-Tag, X-Metadata)."""

    write_tag_headers = False

    def message(self):
        mime = super().message()
        if self.write_tag_headers:
            for tag in self.tags or []:
                mime.add_header("X-Tag", tag)
            if self.metadata:
                mime["X-Metadata"] = json.dumps(self.metadata, separators=(",", ":"))
        return mime


def tracking_id(message: Message) -> str:
    """`<group_id>/<email_id>`; a '/' or '%' or non-ASCII in the group id is %-escaped."""
    group = quote(message.group_id or "", safe=" !\"#$&'()*+,-.:;<=>?@[\\]^_`{|}~")
    return f"{group}/{message.email_id}"


def build_email(message: Message, recipients: list[Recipient], attachments: list[Attachment]) -> _OutboundEmail:
    """The outbound email for `message`, addressed to `recipients` only."""
    by_role: dict[str, list[str]] = {role: [] for role in Recipient.Role.values}
    for recipient in recipients:
        by_role[recipient.role].append(formataddr((recipient.name, recipient.email)))
    headers = dict(message.headers)
    headers[TRACKING_HEADER] = tracking_id(message)
    headers["Message-ID"] = make_msgid(domain=message.from_email.rpartition("@")[2])
    if settings.SES_CONFIGURATION_SET:
        headers[CONFIGURATION_SET_HEADER] = settings.SES_CONFIGURATION_SET
    email = _OutboundEmail(
        subject=message.subject,
        body=message.text or message.html,
        from_email=formataddr((message.from_name, message.from_email)),
        to=by_role["to"],
        cc=by_role["cc"],
        bcc=by_role["bcc"],
        reply_to=list(message.reply_to),
        headers=headers,
        tags=list(message.tags),
        metadata=dict(message.metadata),
    )
    if message.html and message.text:
        email.attach_alternative(message.html, "text/html")
    elif message.html:
        email.content_subtype = "html"
    for attachment in attachments:
        email.attach(attachment.filename, bytes(attachment.content), attachment.content_type)
    email.write_tag_headers = message.provider in (Provider.SMTP, Provider.CONSOLE)
    return email


# One open connection per provider per thread: a boto3 client or an SMTP
# session costs far more to set up than one send.
_connections = threading.local()


# An SMTP session used within this many seconds is taken as alive; an older one
# is asked (NOOP) first, since servers close idle sessions.
SMTP_IDLE_CHECK_SECONDS = 5.0


def _connection(provider: str):
    cache = _connections.__dict__
    now = time.monotonic()
    if provider in cache and provider == Provider.SMTP:
        idle = now - getattr(_connections, "smtp_last_used", 0.0)
        if idle > SMTP_IDLE_CHECK_SECONDS and not _smtp_alive(cache[provider]):
            _drop_connection(provider)
    if provider not in cache:
        connection = get_connection(_BACKENDS[provider], fail_silently=False)
        connection.open()
        cache[provider] = connection
    if provider == Provider.SMTP:
        _connections.smtp_last_used = now
    return cache[provider]


def _smtp_alive(backend) -> bool:
    """An idle SMTP session may have been closed by the server: ask before reuse."""
    try:
        return backend.connection is not None and backend.connection.noop()[0] == 250
    except (smtplib.SMTPException, OSError):
        return False


def _drop_connection(provider: str) -> None:
    connection = _connections.__dict__.pop(provider, None)
    if connection is not None:
        try:
            connection.close()
        except Exception:  # closing a broken connection may fail again; nothing to do
            logger.debug("closing %s connection failed", provider, exc_info=True)


def provider_send(message: Message, recipients: list[Recipient], attachments: list[Attachment]) -> str:
    """Hand the message to the provider; return the provider's message id.

    Raises TransientDeliveryError, AccountStoppedError or PermanentDeliveryError.
    """
    email = build_email(message, recipients, attachments)
    try:
        connection = _connection(message.provider)
        connection.send_messages([email])
    except Exception as error:
        _drop_connection(message.provider)
        raise classify(error) from error
    status = getattr(email, "anymail_status", None)
    if status is not None and status.message_id:
        return str(status.message_id)
    if message.provider == Provider.CONSOLE:
        return f"console-{uuid.uuid4()}"
    return email.extra_headers["Message-ID"].strip("<>")


def classify(error: BaseException) -> DeliveryError:
    """Map a provider exception to transient / account-stopped / permanent."""
    if isinstance(error, AnymailAPIError):
        return _classify_ses(error)
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in error.recipients.values()]
        reason = "; ".join(f"{code} {msg.decode(errors='replace') if isinstance(msg, bytes) else msg}" for code, msg in error.recipients.values())
        if codes and all(400 <= code < 500 for code in codes):
            return TransientDeliveryError(f"SMTP recipients deferred: {reason}")
        return PermanentDeliveryError(f"SMTP recipients refused: {reason}")
    if isinstance(error, smtplib.SMTPResponseException):
        text = error.smtp_error.decode(errors="replace") if isinstance(error.smtp_error, bytes) else str(error.smtp_error)
        reason = f"SMTP {error.smtp_code} {text}"
        if 400 <= error.smtp_code < 500:
            return TransientDeliveryError(reason)
        return PermanentDeliveryError(reason)
    if isinstance(error, smtplib.SMTPServerDisconnected | ConnectionError | socket.timeout | TimeoutError | OSError):
        return TransientDeliveryError(f"network error: {error}")
    if isinstance(error, smtplib.SMTPException | AnymailError | ValueError):
        return PermanentDeliveryError(f"{type(error).__name__}: {error}")
    return TransientDeliveryError(f"unexpected {type(error).__name__}: {error}")


def _classify_ses(error: AnymailAPIError) -> DeliveryError:
    cause = error.__cause__
    response = getattr(cause, "response", None) or {}
    code = response.get("Error", {}).get("Code", "")
    text = response.get("Error", {}).get("Message", "") or str(cause or error)
    http_status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    reason = f"SES {code or type(cause).__name__}: {text}"
    if not response:  # botocore raised before any answer: connection, timeout
        return TransientDeliveryError(reason)
    if code in _SES_ACCOUNT_STOPPED:
        return AccountStoppedError(reason)
    if "daily message quota exceeded" in text.lower():
        return TransientDeliveryError(reason, wait_seconds=3600)
    if code in _SES_TRANSIENT or "maximum sending rate exceeded" in text.lower() or http_status == 429 or http_status >= 500:
        return TransientDeliveryError(reason)
    return PermanentDeliveryError(reason)
