"""A web process started as the Procfile starts it, and raw HTTP clients for it
(tests/config/test_gunicorn.py, tests/config/test_bodies.py); `make run` on the
test database (MakeRun)."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.db import connections

from config.devservices import BASE_DIR, free_port
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


def _proc_stats() -> dict[int, list[str]]:
    """Every process's /proc/<pid>/stat fields after its name: state, parent's pid, …, start time ([19])."""
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stats[int(entry.name)] = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
    return stats


def _database_url() -> str:
    db = connections["default"].settings_dict
    if connections["default"].vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class MakeRun:
    """`make run` in its own process group; every line it prints, with when it came."""

    def __init__(
        self, tmp_path: Path, *, command: list[str] | None = None, cwd: Path = BASE_DIR, fresh: bool = False,
        **variables: str,
    ) -> None:
        """`command` (default: this checkout's `python -m config.devservices run`) in `cwd`. On
        the test database, with its state in tmp_path; `fresh`: with nothing set but free ports,
        as a new user runs it (SQLite, embedded Redis, moto, state in `cwd`)."""
        env = {
            name: value
            for name, value in os.environ.items()
            # Its own Redis, moto and settings, as on a fresh checkout.
            if name not in {"REDIS_URL", "CELERY_BROKER_URL", "AWS_ENDPOINT_URL", "DJANGO_SETTINGS_MODULE",
                            "TESTS_DB_NAME", "EMAIL_PROVIDER", "PROMETHEUS_MULTIPROC_DIR"}
        }
        self.web_port = free_port()
        self.sandbox_dir = (cwd / ".sandbox") if fresh else tmp_path / "sandbox"  # its state (SANDBOX_DIR)
        env.update(WEB_PORT=str(self.web_port), FLOWER_PORT=str(free_port()))
        if fresh:  # and nothing that `make test` (this suite's make) exported
            for name in ("DATABASE_URL", "SANDBOX_DIR", "CELERY_BEAT_SCHEDULE_FILE", "VIRTUAL_ENV",
                         "MAKE_STARTED_AT", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"):
                env.pop(name, None)
        else:
            env.update(
                DATABASE_URL=_database_url(),
                CELERY_BEAT_SCHEDULE_FILE=str(tmp_path / "celerybeat-schedule"),
                PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
                SANDBOX_DIR=str(self.sandbox_dir),
            )
        env.update(variables)
        self.lines: list[tuple[float, str]] = []
        self.process = subprocess.Popen(
            command or [sys.executable, "-m", "config.devservices", "run"], cwd=cwd, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.seen: set[tuple[int, str]] = set()  # (pid, start time) of the processes under it: remember()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def remember(self) -> set[tuple[int, str]]:
        """Note every process running under make run now (Redis, moto, the Procfile's and
        theirs, in whatever session or group), as (pid, start time); the ones seen so far."""
        parents: dict[int, list[tuple[int, str]]] = {}
        for pid, stat in _proc_stats().items():
            parents.setdefault(int(stat[1]), []).append((pid, stat[19]))
        pending = [self.process.pid]
        while pending:
            for child in parents.get(pending.pop(), []):
                self.seen.add(child)
                pending.append(child[0])
        return self.seen

    def left_running(self) -> list[str]:
        """The remembered processes that still run (not zombies), with their command lines."""
        stats = _proc_stats()
        left = []
        for pid, started in self.seen:
            if pid in stats and stats[pid][19] == started and stats[pid][0] != "Z":
                with contextlib.suppress(OSError):
                    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    left.append(f"{pid}: {command}")
        return left

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def since(self, started: float, until: float | None = None) -> list[str]:
        return [line for at, line in self.lines if at >= started and (until is None or at < until)]

    def wait_for(self, pattern: str, *, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"make run never printed {pattern!r}:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.remember()
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        for left in self.left_running():  # after a failed test: nothing it started outlives it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(left.partition(":")[0]), signal.SIGKILL)
        self._reader.join(timeout=5)
