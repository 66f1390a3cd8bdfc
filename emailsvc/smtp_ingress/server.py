"""The `smtp` process: SMTP submission servers on one asyncio loop.

SMTP_INGRESS_PORT offers STARTTLS when a certificate is configured
(SMTP_INGRESS_TLS_CERT / SMTP_INGRESS_TLS_KEY); SMTP_INGRESS_TLS_PORT, when
set, speaks TLS from the first byte (implicit TLS, port 465). SIGTERM or
SIGINT stop listening and end the process; a session cut there never got its
250, so its client sends the message again.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import signal
import ssl
from pathlib import Path

from django.conf import settings

from emailsvc.smtp_ingress.session import SubmissionHandler, SubmissionSMTP

logger = logging.getLogger(__name__)


def tls_context() -> ssl.SSLContext | None:
    """The server's TLS context, or None without a configured certificate."""
    if not settings.SMTP_INGRESS_TLS_CERT:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.SMTP_INGRESS_TLS_CERT, settings.SMTP_INGRESS_TLS_KEY or None)
    return context


def self_signed_certificate(directory: Path, *, host: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for `host` (and 127.0.0.1) in `directory`,
    made once and kept: (certificate path, key path). For local use only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = directory / "smtp-tls.crt", directory / "smtp-tls.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    handler = SubmissionHandler()
    context = tls_context()

    def session() -> SubmissionSMTP:
        return SubmissionSMTP(handler, tls_context=context, loop=loop)

    servers = [await loop.create_server(session, host=settings.SMTP_INGRESS_BIND, port=settings.SMTP_INGRESS_PORT)]
    listening = [f"{settings.SMTP_INGRESS_BIND}:{settings.SMTP_INGRESS_PORT}" + (" (STARTTLS)" if context else "")]
    if settings.SMTP_INGRESS_TLS_PORT:
        if context is None:
            raise RuntimeError("SMTP_INGRESS_TLS_PORT needs SMTP_INGRESS_TLS_CERT and SMTP_INGRESS_TLS_KEY")
        servers.append(
            await loop.create_server(
                lambda: SubmissionSMTP(handler, loop=loop),
                host=settings.SMTP_INGRESS_BIND, port=settings.SMTP_INGRESS_TLS_PORT, ssl=context,
            )
        )
        listening.append(f"{settings.SMTP_INGRESS_BIND}:{settings.SMTP_INGRESS_TLS_PORT} (implicit TLS)")
    logger.info("smtp submission listening on %s", ", ".join(listening))
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()
    for server in servers:
        server.close()
    logger.info("smtp submission stopped")
    handler.executor.shutdown(wait=True, cancel_futures=False)


def serve() -> None:
    """Run the SMTP submission servers until SIGTERM / SIGINT."""
    asyncio.run(_serve())
