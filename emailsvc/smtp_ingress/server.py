"""The `smtp` process: SMTP submission servers on one asyncio loop.

SMTP_INGRESS_PORT offers STARTTLS when a certificate is configured
(SMTP_INGRESS_TLS_CERT / SMTP_INGRESS_TLS_KEY); SMTP_INGRESS_TLS_PORT, when
set, speaks TLS from the first byte (implicit TLS, port 465). The sockets are
bound once and shared by SMTP_INGRESS_PROCESSES processes. SIGTERM or SIGINT
stop listening and end the processes; a session cut there never got its
250, so its client sends the message again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import ssl

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from emailsvc.smtp_ingress.session import SubmissionHandler, SubmissionSMTP

logger = logging.getLogger(__name__)


def tls_context() -> ssl.SSLContext | None:
    """The server's TLS context, or None without a configured certificate."""
    if not settings.SMTP_INGRESS_TLS_CERT:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.SMTP_INGRESS_TLS_CERT, settings.SMTP_INGRESS_TLS_KEY or None)
    return context


def _listening_socket(port: int) -> socket.socket:
    """A listening socket bound before the processes fork: they all accept on it."""
    family = socket.AF_INET6 if ":" in settings.SMTP_INGRESS_BIND else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.SMTP_INGRESS_BIND, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


async def _serve(plain: socket.socket, implicit: socket.socket | None) -> None:
    loop = asyncio.get_running_loop()
    handler = SubmissionHandler()
    context = tls_context()
    servers = [await loop.create_server(lambda: SubmissionSMTP(handler, tls_context=context, loop=loop), sock=plain)]
    if implicit is not None:
        servers.append(await loop.create_server(lambda: SubmissionSMTP(handler, loop=loop), sock=implicit, ssl=context))
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()
    for server in servers:
        server.close()
    handler.executor.shutdown(wait=True, cancel_futures=False)


def _die_with_parent() -> None:
    """A forked server process ends with the one that started it, even a SIGKILLed one (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:
        os._exit(0)


_PR_SET_PDEATHSIG = 1


def serve() -> None:
    """Run the SMTP submission servers until SIGTERM / SIGINT, in
    SMTP_INGRESS_PROCESSES processes sharing the listening sockets (one
    asyncio loop each: the GIL holds a process to one core)."""
    # aiosmtpd logs every command of every session at INFO: a line (and its
    # formatting) per command is most of a process's CPU under load.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    context = tls_context()
    if settings.SMTP_INGRESS_TLS_PORT and context is None:
        raise ImproperlyConfigured("SMTP_INGRESS_TLS_PORT needs SMTP_INGRESS_TLS_CERT and SMTP_INGRESS_TLS_KEY")
    plain = _listening_socket(settings.SMTP_INGRESS_PORT)
    implicit = _listening_socket(settings.SMTP_INGRESS_TLS_PORT) if settings.SMTP_INGRESS_TLS_PORT else None
    listening = [f"{settings.SMTP_INGRESS_BIND}:{settings.SMTP_INGRESS_PORT}" + (" (STARTTLS)" if context else "")]
    if implicit is not None:
        listening.append(f"{settings.SMTP_INGRESS_BIND}:{settings.SMTP_INGRESS_TLS_PORT} (implicit TLS)")
    connections.close_all()  # nothing a forked process could share
    children = []
    for _ in range(settings.SMTP_INGRESS_PROCESSES - 1):
        pid = os.fork()
        if pid == 0:
            _die_with_parent()
            try:
                asyncio.run(_serve(plain, implicit))
            finally:
                os._exit(0)
        children.append(pid)
    logger.info(
        "smtp submission listening on %s (%d processes)", ", ".join(listening), settings.SMTP_INGRESS_PROCESSES
    )
    try:
        asyncio.run(_serve(plain, implicit))
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        logger.info("smtp submission stopped")
