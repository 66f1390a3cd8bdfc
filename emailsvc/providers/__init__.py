"""Delivery backends behind one small interface: `provider_send(provider, email)`,
and `provider_prepare(provider)` to get the connection ready beforehand.

One backend per provider — `ses` (anymail, SES v2), `sandbox` (the same SES
path against the local emulator, plus simulated events), `smtp` (Django's SMTP
backend with per-recipient answers), `console` (records, sends nothing), `test` (a test key's emails: the mailbox
simulator's events, nothing sent) — each
keeping its connection open per thread: a boto3 client or an SMTP session costs
far more to set up than one send.
"""

import threading

from emailsvc.delivery.retry import (
    AccountStoppedError,
    DeliveryError,
    InternalDeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    classify,
)
from emailsvc.models import Provider
from emailsvc.providers.base import ProviderBackend, SendResult
from emailsvc.providers.console import ConsoleBackend
from emailsvc.providers.mime import (
    CONFIGURATION_SET_HEADER,
    TRACKING_HEADER,
    OutboundEmail,
    build_email,
    tracking_id,
)
from emailsvc.providers.sandbox import SandboxBackend
from emailsvc.providers.ses import SesBackend
from emailsvc.providers.smtp import SmtpBackend
from emailsvc.providers.testmode import SimulatedBackend

__all__ = [
    "CONFIGURATION_SET_HEADER",
    "TRACKING_HEADER",
    "AccountStoppedError",
    "DeliveryError",
    "InternalDeliveryError",
    "OutboundEmail",
    "PermanentDeliveryError",
    "ProviderBackend",
    "SendResult",
    "TransientDeliveryError",
    "build_email",
    "classify",
    "connections_close",
    "provider_prepare",
    "provider_send",
    "tracking_id",
]

_BACKENDS: dict[str, type[ProviderBackend]] = {
    Provider.SES: SesBackend,
    Provider.SANDBOX: SandboxBackend,
    Provider.SMTP: SmtpBackend,
    Provider.CONSOLE: ConsoleBackend,
    Provider.TEST: SimulatedBackend,
}

_local = threading.local()


def _backend(provider: str) -> ProviderBackend:
    backends = _local.__dict__.setdefault("backends", {})
    if provider not in backends:
        backends[provider] = _BACKENDS[provider]()
    return backends[provider]


def provider_prepare(provider: str) -> None:
    """Open this thread's connection to the provider, or check it if it has been
    idle, without sending: the rate-limited path calls this before booking its
    tokens, so that from the booked moment on only the send itself remains.

    Raises a DeliveryError subclass as `provider_send` does (the connection is
    dropped, and the next call opens a new one).
    """
    backend = _backend(provider)
    try:
        backend.prepare()
    except Exception as error:
        connections_close(provider)
        raise classify(error) from error


def provider_send(provider: str, email: OutboundEmail) -> SendResult:
    """Hand `email` to the provider over this thread's open connection.

    Returns the provider's message id and the recipients it refused. Raises a
    DeliveryError subclass (see `classify`); after any failure the connection
    is dropped and the next send opens a new one.
    """
    backend = _backend(provider)
    try:
        return backend.send(email)
    except Exception as error:
        connections_close(provider)
        raise classify(error) from error


def connections_close(provider: str | None = None) -> None:
    """Close this thread's connections (all, or one provider's)."""
    backends = _local.__dict__.get("backends", {})
    for name in [provider] if provider else list(backends):
        backend = backends.pop(name, None)
        if backend is not None:
            try:
                backend.close()
            except Exception:  # closing a broken connection may fail again; it is dropped anyway
                pass
