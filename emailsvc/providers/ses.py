"""Amazon SES delivery through anymail (SES v2 API, raw MIME).

One boto3 client per process, shared by every send slot: boto3 clients are
thread-safe, and building one costs ~10 MiB and ~80 ms of CPU. Its connection
pool holds as many connections as there are send slots. An error answer does
not throw the client away (botocore reconnects by itself when a connection
breaks).
"""

import threading

import boto3
from anymail.backends.amazon_ses import AmazonSESBasePayload, AmazonSESV2SendEmailPayload
from anymail.backends.amazon_ses import EmailBackend as AnymailSesBackend
from anymail.utils import UNSET
from botocore.config import Config
from django.conf import settings

from emailsvc.providers.base import ProviderBackend, SendResult
from emailsvc.providers.mime import OutboundEmail, SubmittedEmail, seven_bit_bytes

_client = None
_client_lock = threading.Lock()


def shared_client():
    """This process's SESv2 client, configured as anymail configures its own."""
    global _client
    with _client_lock:
        if _client is None:
            backend = AnymailSesBackend(fail_silently=False)
            params = dict(backend.client_params)
            config = params.pop("config", None)
            config = config if isinstance(config, Config) else Config(**(config or {}))
            config = config.merge(Config(max_pool_connections=max(10, settings.DELIVERY_SEND_CONCURRENCY + 2)))
            _client = boto3.session.Session(**backend.session_params).client("sesv2", config=config, **params)
        return _client


class _RawPayload(AmazonSESV2SendEmailPayload):
    """anymail's SendEmail payload of raw MIME. Its raw message is the email's own
    message(), attachments included: anymail's own view of the attachments
    (which decodes a text/* attachment as UTF-8, and fails on other bytes) is
    not needed and not made."""

    def prepped_attachments(self, attachments):
        return list(attachments)


class _SendEmailPayload(_RawPayload):
    """anymail's SendEmail payload; the raw MIME of a plain email is written
    directly (`seven_bit_bytes`: the bytes anymail's own message() →
    quoted-printable → as_bytes gives, without building the email package's
    objects — about a third of a millisecond of CPU per email).

    anymail writes the MIME from addresses it has parsed and formatted again;
    the direct path is taken only when that leaves every address as the email
    holds it (it does for what build_email makes), else anymail's own payload
    is built."""

    direct: bool = False

    def init_payload(self):
        message = self.message
        self.direct = isinstance(message, SubmittedEmail) or (
            isinstance(message, OutboundEmail)
            and not self.defaults
            and getattr(message, "metadata", UNSET) is UNSET
            and getattr(message, "tags", UNSET) is UNSET
        )
        if not self.direct:
            super().init_payload()
            return
        AmazonSESBasePayload.init_payload(self)
        self.all_recipients = []
        self.formatted: dict[str, list[str]] = {}

    def _formatted(self, field, emails):
        if self.direct:
            self.formatted[field] = [email.format(idna_encode=self.backend.idna_encode) for email in emails]

    def set_from_email(self, email):
        self._formatted("from_email", [email])
        super().set_from_email(email)

    def set_recipients(self, recipient_type, emails):
        self._formatted(recipient_type, emails)
        super().set_recipients(recipient_type, emails)

    def set_reply_to(self, emails):
        self._formatted("reply_to", emails)
        super().set_reply_to(emails)

    def finalize_payload(self):
        if self.direct and isinstance(self.message, SubmittedEmail):
            self.params["Content"] = {"Raw": {"Data": self.message.raw}}  # as written; Destination: the envelope
            return
        if self.direct:
            message, given = self.message, self.formatted
            unchanged = given.get("from_email", [message.from_email]) == [message.from_email] and all(
                given.get(field, []) == list(getattr(message, field)) for field in ("to", "cc", "bcc", "reply_to")
            )
            raw = seven_bit_bytes(message) if unchanged else None
            if raw is not None:
                self.params["Content"] = {"Raw": {"Data": raw}}
                return
            stock = _RawPayload(message, self.defaults, self.backend)
            self.params, self.all_recipients, self.mime_message = stock.params, stock.all_recipients, stock.mime_message
            stock.finalize_payload()
            return
        super().finalize_payload()


class _AnymailBackend(AnymailSesBackend):
    def build_message_payload(self, message, defaults):
        if getattr(message, "template_id", UNSET) is not UNSET:
            return super().build_message_payload(message, defaults)
        return _SendEmailPayload(message, defaults, self)


class SesBackend(ProviderBackend):
    name = "ses"

    def __init__(self):
        self._backend = _AnymailBackend(fail_silently=False)
        self._backend.client = shared_client()  # anymail's open() then keeps it

    def send(self, email: OutboundEmail) -> SendResult:
        self._backend.send_messages([email])
        return SendResult(provider_message_id=str(email.anymail_status.message_id))

    def close(self) -> None:
        """Nothing to close per slot: the client is the process's."""
