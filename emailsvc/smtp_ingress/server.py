"""The `smtp` process: SMTP submission servers on one asyncio loop.

SMTP_INGRESS_PORT offers STARTTLS when a certificate is configured
(SMTP_INGRESS_TLS_CERT / SMTP_INGRESS_TLS_KEY); SMTP_INGRESS_TLS_PORT, when
set, speaks TLS from the first byte (implicit TLS, port 465). SIGTERM or
SIGINT stop listening and end the process; a session cut there never got its
250, so its client sends the message again.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl

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
