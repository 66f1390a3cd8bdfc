"""/metrics: what the web process reads when it is scraped (SPEC §7), and the view.

The counters and histograms themselves are defined in core.metrics; the gauges of shared
state here are read at scrape time, each source at most every `SCRAPE_CACHE_SECONDS`."""

from __future__ import annotations

import hmac
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_safe

# isort: off
import core.metrics  # noqa: F401 (prepares PROMETHEUS_MULTIPROC_DIR before prometheus-client loads)
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.exposition import choose_encoder  # noqa: E402
# isort: on

from console import probes  # noqa: E402
from core.threads import process_pool  # noqa: E402

logger = logging.getLogger(__name__)

# --- Read at scrape time, in the web process ---------------------------------------------

SCRAPE_READ_TIMEOUT_SECONDS = 2.0
SCRAPE_CACHE_SECONDS = 5.0

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
                self.pending, self.pending_pid = process_pool("metrics", workers=4).submit(self._read), os.getpid()
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


def _paused_domains() -> set[tuple[str, str]]:
    """The (domain, stream) paused now (stream "": the domain as a whole): a pause whose wait has ended
    is not shown (the breaker lifts it)."""
    from django.db import connections

    try:
        now = timezone.now()
        return {
            (p["domain"], p["stream"]) for p in probes.sending_pauses() if p["until"] is None or p["until"] > now
        }
    finally:
        connections.close_all()  # this thread's connection: a scrape every few seconds does not need one kept


SOURCES = (
    ScrapeSource("broker", probes.broker_depths),
    ScrapeSource("drain", probes.drain_report),
    ScrapeSource("breaker", _paused_domains),
    ScrapeSource("hits", probes.tracking_hits),
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
            "event drain's report in Redis, breaker: paused domains in the database, hits: the tracking hits buffer "
            "in Redis)",
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

        hits = readings.get("hits")
        for name, key, documentation in (
            ("emailsvc_tracking_hits_waiting", "waiting", "Open and click hits (own tracking) buffered in Redis, not yet applied"),
            ("emailsvc_tracking_hits_oldest_age_seconds", "oldest_age_seconds",
             "Age of the oldest buffered open or click hit (absent when none waits)"),
            ("emailsvc_tracking_hits_dead", "dead", "Open and click hits that could not be applied, kept aside in Redis"),
        ):
            gauge = GaugeMetricFamily(name, documentation)
            if hits and hits.get(key) is not None:
                gauge.add_metric([], float(hits[key]))
            yield gauge

        paused = GaugeMetricFamily(
            "emailsvc_sending_paused",
            'Sending domains the breaker (or an operator, or the provider) has paused: 1 per paused domain, "*" for '
            'the whole account; stream: the one message stream of the domain paused, "" for every stream',
            labels=["domain", "stream"],
        )
        for domain, stream in sorted(readings.get("breaker") or ()):
            paused.add_metric([domain, stream], 1)
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
