"""What a provider's failure means for a message, decided once (SPEC §5.3).

Transient (retry later), account-level (wait, don't burn messages), permanent
(fail now), and internal (our own bug: fail loudly, never retry).
"""

import logging
import smtplib
import socket

from anymail.exceptions import AnymailAPIError, AnymailError
from botocore.exceptions import BotoCoreError

from core.errors import EmailsvcError

logger = logging.getLogger(__name__)

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


class DeliveryError(EmailsvcError):
    """A provider refused or failed a send. `reason` is what the caller will see."""

    code = "delivery_failed"

    def __init__(self, reason: str):
        self.reason = reason[:2000]
        super().__init__(self.reason)


class TransientDeliveryError(DeliveryError):
    """Try again later (throttling, 5xx, SMTP 4xx, network)."""

    code = "delivery_deferred"

    def __init__(self, reason: str, *, wait_seconds: float | None = None):
        super().__init__(reason)
        self.wait_seconds = wait_seconds


class AccountStoppedError(TransientDeliveryError):
    """The provider account stopped sending: pause, alert, and keep the message."""

    code = "provider_account_stopped"


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help (rejected message, unverified domain, SMTP 5xx)."""

    code = "delivery_rejected"


class InternalDeliveryError(PermanentDeliveryError):
    """Our own code failed building or sending the message: a bug. The message
    fails at once with the reason (retrying the same input fails the same way)."""

    code = "internal_error"


def classify(error: BaseException) -> DeliveryError:
    """Map an exception raised while building or sending to what it means.

    Only failures we know are the provider's or the network's are transient;
    anything else is a bug of ours (InternalDeliveryError), logged with its
    traceback by the caller.
    """
    if isinstance(error, DeliveryError):
        return error
    if isinstance(error, AnymailAPIError):
        return _classify_ses(error)
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return smtp_reply_error(list(error.recipients.values()), prefix="SMTP recipients refused")
    if isinstance(error, smtplib.SMTPResponseException):
        return smtp_reply_error([(error.smtp_code, error.smtp_error)], prefix="SMTP")
    if isinstance(error, smtplib.SMTPServerDisconnected | ConnectionError | socket.timeout | TimeoutError):
        return TransientDeliveryError(f"network error: {error}")
    if isinstance(error, BotoCoreError):  # endpoint unreachable, read timeout, …
        return TransientDeliveryError(f"SES network error: {error}")
    if isinstance(error, OSError) and not isinstance(error, UnicodeError):
        return TransientDeliveryError(f"network error: {error}")
    if isinstance(error, smtplib.SMTPException | AnymailError):
        return PermanentDeliveryError(f"{type(error).__name__}: {error}")
    return InternalDeliveryError(f"internal error: {type(error).__name__}: {error}")


def smtp_reply_error(replies: list[tuple[int, bytes | str]], *, prefix: str) -> DeliveryError:
    """One error for SMTP replies: transient when every code is 4xx."""
    texts = [f"{code} {msg.decode(errors='replace') if isinstance(msg, bytes) else msg}" for code, msg in replies]
    reason = f"{prefix}: {'; '.join(texts)}"
    if replies and all(400 <= code < 500 for code, _ in replies):
        return TransientDeliveryError(reason)
    return PermanentDeliveryError(reason)


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
