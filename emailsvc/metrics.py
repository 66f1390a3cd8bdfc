"""Prometheus metrics (SPEC §7): their definitions, the scrape-time figures and `/metrics`.

Counters and histograms are kept in prometheus-client's multiprocess mode when
PROMETHEUS_MULTIPROC_DIR is set (it must be, before prometheus-client is first
imported, in every gunicorn, Celery worker and beat process of a host, all with
the same directory): each process writes its own files there and `/metrics`
adds them up, so the gunicorn workers and the Celery pool processes count as one
service. Without it (runserver, a shell) `/metrics` shows only the process it
runs in.

Gauges of shared state — broker queue depths, the SES event drain's lag, the
paused sending domains — are not kept by any process: the web process reads
them when it is scraped (`ScrapeTimeCollector`), each source at most every
`SCRAPE_CACHE_SECONDS`, never waiting longer than `SCRAPE_READ_TIMEOUT_SECONDS`
for one, so a scrape never hangs on a broker or database that does not answer.

Writers call the small `*_observe` functions below; every figure that follows a
database write is counted once its transaction commits.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if _MULTIPROC_DIR:
    # prometheus-client opens its files in it from the first metric on.
    os.makedirs(_MULTIPROC_DIR, exist_ok=True)

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess, values  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.exposition import choose_encoder  # noqa: E402

if TYPE_CHECKING:
    from emailsvc.models import StatusChange
    from emailsvc.services.delivery import ChunkResult
    from tracking.drain import DrainResult

logger = logging.getLogger(__name__)

if _MULTIPROC_DIR and values.ValueClass is values.MutexValue:
    logger.warning(
        "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: this process's figures stay out of /metrics"
    )

PRIORITIES = ("high", "normal", "low")
STATUSES = (
    "scheduled", "queued", "sending", "sent", "delayed", "soft_bounced", "delivered", "opened", "clicked",
    "bounced", "complained", "failed", "suppressed", "cancelled",
)
DELIVERY_ERROR_CLASSES = ("transient", "permanent", "internal", "suppressed", "released")
DRAIN_OUTCOMES = ("received", "applied", "duplicate", "unmatched", "malformed", "failed")

# --- Counted by the process where it happens (added up across processes) -------------

EMAILS_ACCEPTED = Counter(
    "emailsvc_emails_accepted",
    "Emails accepted by the API (202 from POST /emails, or an accepted item of POST /emails/batch), by priority",
    ["priority", "endpoint"],
)
STATUS_CHANGES = Counter(
    "emailsvc_recipient_status_changes",
    "Recipient status transitions, by the status moved to (sent, delivered, bounced, complained, failed, suppressed, …)",
    ["status"],
)
DELIVERY_ATTEMPTS = Counter(
    "emailsvc_delivery_attempts",
    "Recipients handed to the provider in a send attempt (sent, refused or failed)",
)
DELIVERY_ERRORS = Counter(
    "emailsvc_delivery_errors",
    "Delivery outcomes other than sent: transient (recipients put back for a retry), permanent (recipients failed: "
    "the provider refused, or attempts given up), internal (recipients failed by our own error: a bug), suppressed (recipients found suppressed at send time), "
    "released (messages put back unattempted: rate limit, pause, chunk out of time)",
    ["class"],
)
RATE_LIMIT_WAIT = Histogram(
    "emailsvc_rate_limit_wait_seconds",
    "Waits for the global send-rate limiter: granted (the sender slept this long, then sent) or refused (the message "
    "was put back: its turn was further away than RATE_LIMIT_MAX_WAIT_SECONDS)",
    ["outcome"],
    buckets=(0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, math.inf),
)
DRAIN_EVENTS = Counter(
    "emailsvc_drain_events",
    "SES events through the SQS drain: received (SQS messages), applied, duplicate (seen before), unmatched "
    "(no known recipient), malformed, failed",
    ["outcome"],
)
WEBHOOK_DELIVERIES = Counter(
    "emailsvc_webhook_deliveries",
    "Status webhook POSTs, by outcome (ok: a 2xx answer)",
    ["outcome"],
)


def _series_create() -> None:
    """Every known label set from 0, so a rate over an idle series reads 0, not nothing."""
    for priority in PRIORITIES:
        for endpoint in ("single", "batch"):
            EMAILS_ACCEPTED.labels(priority=priority, endpoint=endpoint)
    for status in STATUSES:
        STATUS_CHANGES.labels(status=status)
    for error_class in DELIVERY_ERROR_CLASSES:
        DELIVERY_ERRORS.labels(error_class)
    for outcome in ("granted", "refused"):
        RATE_LIMIT_WAIT.labels(outcome=outcome)
    for outcome in DRAIN_OUTCOMES:
        DRAIN_EVENTS.labels(outcome=outcome)
    for outcome in ("ok", "failed"):
        WEBHOOK_DELIVERIES.labels(outcome=outcome)


_series_create()


def emails_accepted_observe(*, priorities: Iterable[str], endpoint: str) -> None:
    """Count accepted emails (their priorities) once the transaction that stored them commits.
    endpoint: "single" (POST /emails) or "batch" (POST /emails/batch)."""
    tally = Tally(priorities)
    if tally:
        transaction.on_commit(partial(_count, EMAILS_ACCEPTED, "priority", tally, endpoint=endpoint))


def status_changes_observe(changes: Iterable[StatusChange]) -> None:
    """Count recipient status transitions (emailsvc.status.changes_apply) once they commit."""
    tally = Tally(change.to_status for change in changes)
    if tally:
        transaction.on_commit(partial(_count, STATUS_CHANGES, "status", tally))


def _count(counter: Counter, label: str, tally: Tally, **labels: str) -> None:
    for value, count in tally.items():
        counter.labels(**{label: value}, **labels).inc(count)


def delivery_chunk_observe(result: ChunkResult) -> None:
    """Count what one delivery chunk did (its outcomes are committed when deliver_due returns)."""
    attempted = result.sent + result.failed + result.deferred
    if attempted:
        DELIVERY_ATTEMPTS.inc(attempted)
    for error_class, count in (
        ("transient", result.deferred),
        ("permanent", result.failed - result.internal),
        ("internal", result.internal),
        ("suppressed", result.suppressed),
        ("released", result.released),
    ):
        if count:
            DELIVERY_ERRORS.labels(error_class).inc(count)


def rate_limit_wait_observe(*, granted: bool, wait: float) -> None:
    """One answer of the send-rate limiter (emailsvc.ratelimit.rate_limit_reserve)."""
    RATE_LIMIT_WAIT.labels(outcome="granted" if granted else "refused").observe(wait)


def drain_observe(result: DrainResult) -> None:
    """Count what one SES event drain run received and applied (committed when it returns)."""
    for outcome, count in (
        ("received", result.received),
        ("applied", result.applied),
        ("duplicate", result.duplicates),
        ("unmatched", result.unmatched),
        ("malformed", result.malformed),
        ("failed", result.failed),
    ):
        if count:
            DRAIN_EVENTS.labels(outcome=outcome).inc(count)


def webhook_delivery_observed(*, ok: bool) -> None:
    """One status webhook POST: ok (a 2xx answer) or failed (any other answer, or none)."""
    WEBHOOK_DELIVERIES.labels(outcome="ok" if ok else "failed").inc()


def process_dead(*, pid: int) -> None:
    """A gunicorn worker or Celery pool process exited: drop its live gauges (its counters stay counted)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


# --- Read at scrape time, in the web process ---------------------------------------------

SCRAPE_READ_TIMEOUT_SECONDS = 2.0
SCRAPE_CACHE_SECONDS = 5.0

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _reader_pool() -> ThreadPoolExecutor:
    """The threads that read scrape-time sources (made after fork: threads do not survive one)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="metrics")
            _pool_pid = os.getpid()
        return _pool


@dataclass
class ScrapeSource:
    """One thing read at scrape time, cached for `SCRAPE_CACHE_SECONDS`, with
    at most one read in flight: a read that hangs is waited for only
    `SCRAPE_READ_TIMEOUT_SECONDS` per scrape, and no second one is started
    beside it."""

    name: str
    read: Callable[[], Any]
    value: Any = None
    ok: bool = False
    read_at: float = -math.inf
    pending: Future | None = None
    pending_pid: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Future | None:
        """Begin a read unless a fresh value is cached or one is under way."""
        with self.lock:
            if time.monotonic() - self.read_at < SCRAPE_CACHE_SECONDS:
                return None
            if self.pending is None or self.pending_pid != os.getpid():  # a read begun before a fork never ends here
                self.pending, self.pending_pid = _reader_pool().submit(self._read), os.getpid()
            return self.pending

    def _read(self) -> None:
        try:
            value, ok = self.read(), True
        except Exception as error:  # a scrape reports the source as down; it never fails the scrape
            logger.warning("metrics source %s could not be read: %s: %s", self.name, type(error).__name__, error)
            value, ok = None, False
        with self.lock:
            self.value, self.ok, self.read_at, self.pending = value, ok, time.monotonic(), None

    def current(self) -> tuple[bool, Any]:
        with self.lock:
            if time.monotonic() - self.read_at >= SCRAPE_CACHE_SECONDS + SCRAPE_READ_TIMEOUT_SECONDS:
                return False, None  # the last read is too old to show: it did not finish in time
            return self.ok, self.value


def _queue_depths() -> dict[str, int]:
    from emailsvc.services.queueing import delivery_queue_depths

    return delivery_queue_depths()


def _drain_report() -> dict | None:
    from emailsvc.sqs import drain_report

    return drain_report()


def _paused_domains() -> set[str]:
    from django.db import connections

    from emailsvc.services.breaker import paused_domains

    try:
        return paused_domains()
    finally:
        connections.close_all()  # this thread's connection: a scrape every few seconds does not need one kept


SOURCES = (
    ScrapeSource("broker", _queue_depths),
    ScrapeSource("drain", _drain_report),
    ScrapeSource("breaker", _paused_domains),
)


class ScrapeTimeCollector:
    """Gauges of state shared by every process, read when /metrics is scraped."""

    def collect(self):
        started = [(source, source.start()) for source in SOURCES]
        deadline = time.monotonic() + SCRAPE_READ_TIMEOUT_SECONDS
        for _source, future in started:
            if future is not None:
                try:
                    future.result(timeout=max(deadline - time.monotonic(), 0))
                except FutureTimeout:
                    pass
        up = GaugeMetricFamily(
            "emailsvc_metrics_source_up",
            "Whether the last scrape-time read of a source answered in time (broker: queue depths, drain: the SES "
            "event drain's report in Redis, breaker: paused domains in the database)",
            labels=["source"],
        )
        readings = {}
        for source in SOURCES:
            ok, value = source.current()
            up.add_metric([source.name], 1 if ok else 0)
            if ok:
                readings[source.name] = value
        yield up

        depth = GaugeMetricFamily(
            "emailsvc_delivery_queue_depth",
            "Delivery tasks waiting in each priority's broker queue (each task delivers a chunk of due emails)",
            labels=["priority"],
        )
        for priority, count in sorted((readings.get("broker") or {}).items()):
            depth.add_metric([priority], count)
        yield depth

        report = readings.get("drain")
        for name, key, documentation in (
            ("emailsvc_drain_lag_seconds", "lag_seconds", "Age of the oldest SES event the last drain run received"),
            ("emailsvc_drain_waiting_events", "waiting", "SES events waiting on the SQS queue after the last drain run"),
            ("emailsvc_drain_in_flight_events", "in_flight", "SES events received by a drain and not yet deleted, after the last run"),
            ("emailsvc_drain_last_run_age_seconds", "age_seconds", "Seconds since the last drain run reported"),
        ):
            gauge = GaugeMetricFamily(name, documentation)
            if report and report.get(key) is not None:
                gauge.add_metric([], float(report[key]))
            yield gauge

        paused = GaugeMetricFamily(
            "emailsvc_sending_paused",
            'Sending domains the breaker (or an operator, or the provider) has paused: 1 per paused domain, "*" for '
            "the whole account",
            labels=["domain"],
        )
        for domain in sorted(readings.get("breaker") or ()):
            paused.add_metric([domain], 1)
        yield paused


_scrape_time_collector = ScrapeTimeCollector()


class _ThisProcess:
    """prometheus-client's default registry (this process's own figures) as one collector."""

    def collect(self):
        return REGISTRY.collect()


def metrics_exposition(*, accept: str = "") -> tuple[bytes, str]:
    """Everything /metrics shows, in the format `accept` asks for (Prometheus text
    or OpenMetrics), and its content type."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(_scrape_time_collector)
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


# --- The view ----------------------------------------------------------------------------


def _text(body: str, status: int, **headers: str) -> HttpResponse:
    response = HttpResponse(body + "\n", status=status, content_type="text/plain; charset=utf-8")
    for name, value in headers.items():
        response.headers[name] = value
    return response


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics: `Authorization: Bearer <METRICS_TOKEN>`, or anyone with METRICS_PUBLIC=true."""
    if not settings.METRICS_PUBLIC:
        if not settings.METRICS_TOKEN:
            return _text("metrics are off: set METRICS_TOKEN (or METRICS_PUBLIC=true)", 403)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), settings.METRICS_TOKEN.encode()
        ):
            return _text("a valid bearer token is required", 401, **{"WWW-Authenticate": 'Bearer realm="metrics"'})
    body, content_type = metrics_exposition(accept=request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)
