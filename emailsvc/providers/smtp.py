"""SMTP delivery through Django's SMTP backend, one session kept open per thread.

Django's backend ignores the refused-recipients answer of `sendmail`: a server
that refuses one RCPT of a multi-recipient email would have it recorded as
sent. `_RecipientAwareSmtpBackend` keeps that answer so each recipient gets its
own outcome (SPEC §5.4).
"""

import smtplib
import time
from email.utils import parseaddr

from django.conf import settings
from django.core.mail.backends.smtp import EmailBackend as DjangoSmtpBackend
from django.core.mail.message import sanitize_address

from emailsvc.delivery.retry import smtp_reply_error
from emailsvc.providers.base import ProviderBackend, SendResult
from emailsvc.providers.mime import OutboundEmail, wire_bytes

# A session used within this many seconds is taken as alive; an older one is
# asked (NOOP) first, since servers close idle sessions.
SMTP_IDLE_CHECK_SECONDS = 5.0


class _RecipientAwareSmtpBackend(DjangoSmtpBackend):
    def _send(self, email_message):
        if not email_message.recipients():
            return False
        if isinstance(email_message, OutboundEmail):  # its envelope is ready: bare ASCII addresses
            from_email, recipients = email_message.envelope_from, email_message.envelope_recipients
            data = wire_bytes(email_message, linesep="\r\n")
        else:
            encoding = email_message.encoding or settings.DEFAULT_CHARSET
            from_email = sanitize_address(email_message.from_email, encoding)
            recipients = [sanitize_address(address, encoding) for address in email_message.recipients()]
            data = email_message.message().as_bytes(linesep="\r\n")
        # Raises SMTPRecipientsRefused when every recipient is refused, and the
        # other SMTP errors for the whole message; returns the partly refused ones.
        email_message.smtp_refused = self.connection.sendmail(from_email, recipients, data)
        return True


class SmtpBackend(ProviderBackend):
    name = "smtp"

    def __init__(self):
        self._backend: _RecipientAwareSmtpBackend | None = None
        self._last_used = 0.0

    def _session(self) -> _RecipientAwareSmtpBackend:
        now = time.monotonic()
        if self._backend is not None and now - self._last_used > SMTP_IDLE_CHECK_SECONDS and not self._alive():
            self.close()
        if self._backend is None:
            backend = _RecipientAwareSmtpBackend(fail_silently=False)
            backend.open()
            self._backend = backend
        self._last_used = now
        return self._backend

    def _alive(self) -> bool:
        try:
            return self._backend.connection is not None and self._backend.connection.noop()[0] == 250
        except (smtplib.SMTPException, OSError):
            return False

    def prepare(self) -> None:
        """Open the session, or NOOP one idle for SMTP_IDLE_CHECK_SECONDS (reopened if dead)."""
        self._session()

    def send(self, email: OutboundEmail) -> SendResult:
        email.smtp_refused = {}
        self._session().send_messages([email])
        refused = {
            parseaddr(address)[1].lower(): smtp_reply_error([reply], prefix="SMTP recipient refused")
            for address, reply in (email.smtp_refused or {}).items()
        }
        return SendResult(provider_message_id=email.extra_headers["Message-ID"].strip("<>"), refused=refused)

    def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            try:
                backend.close()
            except (smtplib.SMTPException, OSError):  # closing a broken session fails again; it is gone anyway
                pass
