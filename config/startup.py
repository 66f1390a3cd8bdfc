"""
How long `make run` took, said in its output (config/devservices.py): once the
web process answers `/readyz` and a Celery worker is consuming, one line gives
the seconds since make started (the Makefile exports MAKE_STARTED_AT) and how
many of them went to creating the virtualenv and installing; in the sandbox,
when the drain first applies SES events (the first email sent shows
`delivered`, or bounced), another line gives that moment too.

It watches the Procfile's output on its way to the terminal (StartupClock is
the stream `supervise` writes to), so it costs the processes nothing.
"""

import contextlib
import os
import re
import threading
import time
import urllib.request
from typing import TextIO

PROCESS_STARTED = time.time()  # this interpreter's start, near enough: the module is imported at once
WORKER_READY = re.compile(r"celery@\S+ ready\.")
EVENTS_APPLIED = re.compile(r"drain received=\d+ applied=[1-9]")


def make_started_at(environ=os.environ) -> float | None:
    """When `make` started (MAKE_STARTED_AT, seconds since the epoch); None when
    unset or implausible (a stale value exported by hand)."""
    with contextlib.suppress(ValueError):
        started = float(environ.get("MAKE_STARTED_AT", ""))
        if 0 <= PROCESS_STARTED - started < 3600:
            return started
    return None


def startup_summary(started_at: float | None) -> str:
    """For the banner: the seconds so far, and what follows."""
    now = time.time()
    if started_at is None:
        so_far = f"{now - PROCESS_STARTED:.1f} s ago"
    else:
        so_far = (f"{now - started_at:.1f} s ago with `make run` ({PROCESS_STARTED - started_at:.1f} s of it"
                  " virtualenv and installs)")
    return f"{so_far}; `emailsvc: ready` below says when the API and a worker answer"


class StartupClock:
    """A text stream that passes everything to `stream`, whole lines at a time,
    and adds the lines that say when the service was ready and when the first
    events were applied. Call watch() once the processes are starting."""

    def __init__(self, *, stream: TextIO, web_url: str, started_at: float | None) -> None:
        self._stream = stream
        self._web_url = web_url
        self._started_at = started_at
        self._lock = threading.Lock()
        self._partial = ""
        self.worker_ready = threading.Event()
        self.events_applied = False
        self.ready_after: float | None = None  # seconds from the start to ready

    def isatty(self) -> bool:  # honcho colours its prefixes only on a terminal
        return self._stream.isatty()

    def flush(self) -> None:
        self._stream.flush()

    def write(self, text: str) -> int:
        with self._lock:
            self._partial += text
            if "\n" not in self._partial:
                return len(text)
            lines, self._partial = self._partial.rsplit("\n", 1)
            self._stream.write(lines + "\n")
            if WORKER_READY.search(lines):
                self.worker_ready.set()
            if not self.events_applied and self.ready_after is not None and EVENTS_APPLIED.search(lines):
                self.events_applied = True
                self._stream.write(
                    f"emailsvc: first SES events applied {self._since()} (GET /api/v1/emails/EMAIL_ID shows"
                    " the email `delivered`, or what else the sandbox answered)\n"
                )
            self._stream.flush()
        return len(text)

    def _since(self) -> str:
        now = time.time()
        if self._started_at is None:
            return f"{now - PROCESS_STARTED:.1f} s after this command started"
        return f"{now - self._started_at:.1f} s after `make run` started"

    def _web_ready(self) -> bool:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{self._web_url}/readyz", timeout=2) as answer:
                return answer.status == 200
        return False

    def _announce_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._web_ready():
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)
        if not self.worker_ready.wait(timeout=max(0.0, deadline - time.monotonic())):
            return
        installing = ""
        if self._started_at is not None:
            installing = f"; {PROCESS_STARTED - self._started_at:.1f} s of it before the service started: virtualenv and installs"
        with self._lock:
            self.ready_after = time.time() - (self._started_at or PROCESS_STARTED)
            self._stream.write(
                f"emailsvc: ready {self._since()} (the API answers /readyz and a worker is consuming{installing})\n"
            )
            self._stream.flush()

    def watch(self, *, timeout: float = 600) -> None:
        threading.Thread(target=self._announce_ready, args=(timeout,), daemon=True).start()
