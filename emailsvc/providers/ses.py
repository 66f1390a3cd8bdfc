"""Amazon SES delivery through anymail (SES v2 API, raw MIME).

One boto3 client per process, shared by every send slot: boto3 clients are
thread-safe, and building one costs ~10 MiB and ~80 ms of CPU. Its connection
pool holds as many connections as there are send slots. An error answer does
not throw the client away (botocore reconnects by itself when a connection
breaks).
"""

import threading

import boto3
from anymail.backends.amazon_ses import EmailBackend as AnymailSesBackend
from botocore.config import Config
from django.conf import settings

from emailsvc.providers.base import ProviderBackend, SendResult
from emailsvc.providers.mime import OutboundEmail

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


class SesBackend(ProviderBackend):
    name = "ses"

    def __init__(self):
        self._backend = AnymailSesBackend(fail_silently=False)
        self._backend.client = shared_client()  # anymail's open() then keeps it

    def send(self, email: OutboundEmail) -> SendResult:
        self._backend.send_messages([email])
        return SendResult(provider_message_id=str(email.anymail_status.message_id))

    def close(self) -> None:
        """Nothing to close per slot: the client is the process's."""
