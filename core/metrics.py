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

import logging
import math
import os
from collections import Counter as Tally
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING

from django.db import transaction

_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if _MULTIPROC_DIR:
    # prometheus-client opens its files in it from the first metric on.
    os.makedirs(_MULTIPROC_DIR, exist_ok=True)

from prometheus_client import Counter, Histogram, multiprocess, values  # noqa: E402

if TYPE_CHECKING:
    from emailsvc.delivery.chunks import ChunkResult
    from tracking.drain import DrainResult

logger = logging.getLogger(__name__)

if _MULTIPROC_DIR and values.ValueClass is values.MutexValue:
    logger.warning(
        "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: this process's figures stay out of /metrics"
    )

PRIORITIES = ("high", "normal", "low")
# The message streams every install has (emailsvc.streams); operators may create
# more, each a name they chose: the `stream` label stays a short list.
STREAMS = ("transactional", "broadcast")
STATUSES = (
    "scheduled", "queued", "sending", "sent", "delayed", "soft_bounced", "delivered", "opened", "clicked",
    "bounced", "complained", "failed", "suppressed", "cancelled",
)
DELIVERY_ERROR_CLASSES = ("transient", "permanent", "internal", "suppressed", "released")
DRAIN_OUTCOMES = ("received", "applied", "duplicate", "unmatched", "malformed", "failed")

# --- Counted by the process where it happens (added up across processes) -------------

EMAILS_ACCEPTED = Counter(
    "emailsvc_emails_accepted",
    "Emails accepted by the API (202 from POST /emails, or an accepted item of POST /emails/batch) or by SMTP "
    "submission (endpoint smtp), by priority and message stream",
    ["priority", "endpoint", "stream"],
)
STATUS_CHANGES = Counter(
    "emailsvc_recipient_status_changes",
    "Recipient status transitions, by the status moved to (sent, delivered, bounced, complained, failed, suppressed, …) "
    "and the message stream of the email",
    ["status", "stream"],
)
UNSUBSCRIBES = Counter(
    "emailsvc_unsubscribes",
    "One-click unsubscribes (RFC 8058), by message stream; a repeated one is not counted",
    ["stream"],
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


SMTP_AUTH_FAILURES = Counter(
    "emailsvc_smtp_auth_failures",
    "SMTP submission AUTH attempts refused (535): a bad, revoked, expired or read-only API key",
)


def _series_create() -> None:
    """Every known label set from 0, so a rate over an idle series reads 0, not nothing."""
    for stream in STREAMS:
        for priority in PRIORITIES:
            for endpoint in ("single", "batch", "smtp"):
                EMAILS_ACCEPTED.labels(priority=priority, endpoint=endpoint, stream=stream)
        for status in STATUSES:
            STATUS_CHANGES.labels(status=status, stream=stream)
    for stream in STREAMS:
        UNSUBSCRIBES.labels(stream=stream)
    for error_class in DELIVERY_ERROR_CLASSES:
        DELIVERY_ERRORS.labels(error_class)
    for outcome in ("granted", "refused"):
        RATE_LIMIT_WAIT.labels(outcome=outcome)
    for outcome in DRAIN_OUTCOMES:
        DRAIN_EVENTS.labels(outcome=outcome)
    for outcome in ("ok", "failed"):
        WEBHOOK_DELIVERIES.labels(outcome=outcome)


_series_create()


def smtp_auth_failure_observe() -> None:
    SMTP_AUTH_FAILURES.inc()


def emails_accepted_observe(*, emails: Iterable[tuple[str, str]], endpoint: str) -> None:
    """Count accepted emails, each (priority, stream), once the transaction that stored them commits.
    endpoint: "single" (POST /emails), "batch" (POST /emails/batch) or "smtp" (SMTP submission)."""
    tally = Tally(emails)
    if tally:
        transaction.on_commit(partial(_count, EMAILS_ACCEPTED, ("priority", "stream"), tally, endpoint=endpoint))


def unsubscribe_observe(*, stream: str) -> None:
    """Count a one-click unsubscribe once its transaction commits."""
    transaction.on_commit(lambda: UNSUBSCRIBES.labels(stream=stream).inc())


def status_changes_observe(changes: Iterable[tuple[str, str]]) -> None:
    """Count committed recipient status transitions, each (status moved to, the
    email's stream): called once their transaction has committed
    (emailsvc.status.status_changes_committed)."""
    # `unsubscribed` is no status (emailsvc.streams): emailsvc_unsubscribes_total counts it.
    _count(STATUS_CHANGES, ("status", "stream"), Tally(change for change in changes if change[0] in STATUSES))


def _count(counter: Counter, names: tuple[str, ...], tally: Tally, **labels: str) -> None:
    for label_values, count in tally.items():
        counter.labels(**dict(zip(names, label_values, strict=True)), **labels).inc(count)


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
    """One answer of the send-rate limiter (emailsvc.sending_control.ratelimit.rate_limit_reserve)."""
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
