"""One log line per outage of a dependency, not one per failed call.

When PostgreSQL, Redis or the broker is unreachable, every request, send slot
and task that touches it fails the same way. Logging each failure (with its
traceback) buries the one fact an operator needs under hundreds of lines. An
`Outage` per dependency and process logs the first failure as a warning, only
counts the following ones, reminds every REMINDER_SECONDS while it lasts, and
logs once when the dependency answers again, with how long it was away and how
many calls failed meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time

REMINDER_SECONDS = 300.0

_logger = logging.getLogger(__name__)
_registry: dict[str, Outage] = {}
_registry_lock = threading.Lock()


def outage(what: str) -> Outage:
    """This process's one `Outage` of `what` ("the database", "Redis", "the
    Celery broker"): the API, the send slots, the recorder and the tasks of a
    process that all lose the database log one line between them, not one each."""
    found = _registry.get(what)
    if found is None:
        with _registry_lock:
            found = _registry.setdefault(what, Outage(what, _logger))
    return found


class Outage:
    """The state of one dependency as this process sees it (thread-safe)."""

    def __init__(self, what: str, logger: logging.Logger, *, reminder_seconds: float = REMINDER_SECONDS):
        self.what = what
        self.logger = logger
        self.reminder_seconds = reminder_seconds
        self._lock = threading.Lock()
        self._since: float | None = None  # time.monotonic() of the first failure of this outage
        self._failures = 0
        self._reminded_at = 0.0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException | str, *, action: str = "") -> bool:
        """Count one failed call; True when it starts an outage (the one logged).

        `action` says what the service does meanwhile ("emails wait", ...),
        written on the first line only."""
        now = time.monotonic()
        with self._lock:
            self._failures += 1
            if self._since is None:
                self._since, self._reminded_at, self._failures = now, now, 1
                started = True
            elif now - self._reminded_at >= self.reminder_seconds:
                self._reminded_at = now
                started = False
                self.logger.warning(
                    "%s is still unavailable after %.0fs (%d failed calls): %s",
                    self.what, now - self._since, self._failures, _describe(error),
                )
                return False
            else:
                return False
        if started:
            self.logger.warning(
                "%s is unavailable: %s%s", self.what, _describe(error), f"; {action}" if action else ""
            )
        return started

    def succeeded(self) -> None:
        """A call went through: ends the outage (logged once) if there was one."""
        if self._since is None:  # the common case: no lock taken
            return
        with self._lock:
            if self._since is None:
                return
            lasted, failures = time.monotonic() - self._since, self._failures
            self._since, self._failures = None, 0
        self.logger.warning("%s is available again after %.1fs (%d failed calls meanwhile)", self.what, lasted, failures)


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    text = str(error).strip().splitlines()
    # The first line only, without a closing full stop ("Connection refused.; ..." reads badly).
    return f"{type(error).__name__}: {text[0].rstrip('.')}" if text else type(error).__name__
