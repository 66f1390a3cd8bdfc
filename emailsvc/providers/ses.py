"""Amazon SES delivery through anymail (SES v2 API, raw MIME), one boto3 client per thread."""

from anymail.backends.amazon_ses import EmailBackend as AnymailSesBackend

from emailsvc.providers.base import ProviderBackend, SendResult
from emailsvc.providers.mime import OutboundEmail


class SesBackend(ProviderBackend):
    name = "ses"

    def __init__(self):
        self._backend: AnymailSesBackend | None = None

    def send(self, email: OutboundEmail) -> SendResult:
        if self._backend is None:
            backend = AnymailSesBackend(fail_silently=False)
            backend.open()
            self._backend = backend
        self._backend.send_messages([email])
        return SendResult(provider_message_id=str(email.anymail_status.message_id))

    def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
