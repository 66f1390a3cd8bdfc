"""A web process started as the Procfile starts it, and raw HTTP clients for it
(tests/config/test_gunicorn.py, tests/config/test_bodies.py)."""

import contextlib
import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from django.db import connections

from tests.stack import Stack

# Short bounds for the web process under test (docs/settings.md: WEB_READ_TIMEOUT, WEB_KEEPALIVE).
READ_TIMEOUT = 3
KEEPALIVE = 3
# Small limits (config/wsgi.py reads bodies up to 1.5 × MAX_MESSAGE_BYTES whole), so a
# body over them is quick to send; a stalled upload's 100,000 bytes are under them.
MAX_MESSAGE_BYTES = 120_000
SUPPRESSION_IMPORT_MAX_BYTES = 50_000


@pytest.fixture(scope="module")
def web(django_db_setup, django_db_blocker, tmp_path_factory):
    """The Procfile's `web` (one gevent worker) on the test database, EMAIL_PROVIDER=console."""
    stack = Stack(
        directory=tmp_path_factory.mktemp("web"),
        db_name=str(connections["default"].settings_dict["NAME"]),
        env={
            "EMAIL_PROVIDER": "console",
            "DEBUG": "false",
            "WEB_READ_TIMEOUT": str(READ_TIMEOUT),
            "WEB_KEEPALIVE": str(KEEPALIVE),
            "MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
            "SUPPRESSION_IMPORT_MAX_BYTES": str(SUPPRESSION_IMPORT_MAX_BYTES),
        },
        name="web",
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def address(stack: Stack) -> tuple[str, int]:
    parts = urlsplit(stack.web_url)
    return parts.hostname, parts.port


def open_request(stack: Stack, head: str, body: bytes = b"", *, head_ends: bool = True) -> socket.socket:
    """A connection that has sent `head` (request line and headers; the blank line
    after them unless not `head_ends`) and `body`."""
    sock = socket.create_connection(address(stack), timeout=30)
    sock.sendall(head.encode() + (b"\r\n\r\n" if head_ends else b"") + body)
    return sock


def stalled_upload(stack: Stack, path: str = "/api/v1/emails", *, length: int = 100_000) -> socket.socket:
    """An upload that announced `length` bytes, sent a few, and then nothing."""
    return open_request(
        stack,
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {length}",
        b'{"to": "',
    )


@dataclass
class Answer:
    status: int
    body: dict | None
    closed_after: float  # seconds from the call until the server closed the connection


def read_answer(sock: socket.socket, *, timeout: float = 30) -> Answer:
    """The server's answer on `sock`, read until the server closes the connection."""
    start = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    closed_after = time.monotonic() - start
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return Answer(status=status, body=json.loads(body) if body.strip() else None, closed_after=closed_after)
