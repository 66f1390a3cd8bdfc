"""/healthz and /readyz, and the probes of outside systems (SPEC §7).

One reader per thing to look at — the database, the broker, the SES events
queue, the drain's report, the rate limiter, the sending pauses — shared by
/readyz, the /metrics scrape (console.metrics) and the operations pages
(console.selectors.operations_probes). A reader reads and raises; each caller
decides its own timeout, caching and what a failure looks like in its answer.
"""

from __future__ import annotations

import json
import time

from celery import current_app
from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from core.sql import database_ping

# --- The readers ----------------------------------------------------------------------------


def broker_ping(*, timeout: float) -> None:
    """The broker takes a connection within `timeout` seconds (one retry)."""
    with current_app.connection_for_write() as broker:
        broker.ensure_connection(max_retries=1, timeout=timeout)


def broker_depths() -> dict[str, int]:
    """Delivery tasks waiting in each priority's broker queue."""
    from emailsvc.delivery.queueing import delivery_queue_depths

    return delivery_queue_depths()


def _events_queue_url_looked_up(client) -> str:
    """The events queue's URL without creating anything (the sandbox's is looked up, not made)."""
    if settings.SES_EVENTS_QUEUE_URL:
        return settings.SES_EVENTS_QUEUE_URL
    if settings.EMAIL_PROVIDER == "sandbox":
        return client.get_queue_url(QueueName=settings.SANDBOX_EVENTS_QUEUE_NAME)["QueueUrl"]
    return ""


def events_queue(*, timeout: float, make_sandbox_queues: bool = False) -> dict | None:
    """{url, waiting, in_flight, dlq} of the SES events queue (dlq: None without a
    redrive policy), over connections that give up after `timeout` seconds; None
    when no queue is configured. `make_sandbox_queues`: the sandbox's queues are
    created if missing (core.sqs.events_queue_url), else only looked up."""
    from core import sqs

    client = sqs.sqs_client(timeout_seconds=timeout)
    url = sqs.events_queue_url() if make_sandbox_queues else _events_queue_url_looked_up(client)
    if not url:
        return None
    attributes = client.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return {
        "url": url,
        "waiting": int(attributes.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        "dlq": sqs.events_dlq_depth(url, client=client),
    }


def _short_redis(timeout: float):
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=timeout, socket_connect_timeout=timeout)


def drain_report(*, timeout: float | None = None) -> dict | None:
    """The last drain's report with its age in seconds (`age_seconds`), or None if
    no drain ran in a day. Through the process's Redis client, or with `timeout`
    through a connection of its own that gives up after that many seconds."""
    from core.redisclient import redis_client
    from tracking.drain import DRAIN_REPORT_KEY

    client = redis_client() if timeout is None else _short_redis(timeout)
    raw = client.get(DRAIN_REPORT_KEY)
    if raw is None:
        return None
    report = json.loads(raw)
    report["age_seconds"] = round(time.time() - report.pop("at", time.time()), 1)
    return report


def tracking_hits(*, timeout: float | None = None) -> dict:
    """emailsvc's own open and click hits waiting in Redis to be applied (tracking.hits)."""
    from core.redisclient import redis_client
    from tracking.hits import hits_backlog

    return hits_backlog(redis_client() if timeout is None else _short_redis(timeout))


def rate_limiter(*, timeout: float) -> dict:
    """The send rate limit's settings and its backlog in seconds, read from Redis within `timeout` seconds."""
    from emailsvc.sending_control.ratelimit import rate_limit_backlog, rate_limit_from_settings

    limit = rate_limit_from_settings()
    backlog = rate_limit_backlog(limit=limit, client=_short_redis(timeout)) if limit.enabled else 0.0
    return {"per_second": limit.per_second, "burst": limit.burst, "enabled": limit.enabled, "backlog_seconds": round(backlog, 3)}


def sending_pauses() -> list[dict]:
    """The pauses not resumed: {domain, stream, cause, reason, paused_at, until}
    each ("*" is the account; stream "": the domain as a whole). One whose `until` has passed is listed until the
    breaker lifts it."""
    from emailsvc.models import SendingPause

    return list(
        SendingPause.objects.filter(resumed_at__isnull=True).values(
            "domain", "stream", "cause", "reason", "paused_at", "until"
        )
    )


# --- The views ------------------------------------------------------------------------------

READINESS_TIMEOUT_SECONDS = 2


def _failure(error: Exception) -> str:
    return f"error: {type(error).__name__}"


class HealthApi(APIView):
    """The process is up."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(exclude=True)
    def get(self, request):
        return Response({"status": "ok"})


class ReadinessApi(APIView):
    """The database and the broker answer."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(exclude=True)
    def get(self, request):
        checks = {}
        try:
            database_ping()
            checks["database"] = "ok"
        except Exception as error:  # readiness reports any failure, it does not raise
            checks["database"] = _failure(error)
        try:
            broker_ping(timeout=READINESS_TIMEOUT_SECONDS)
            checks["broker"] = "ok"
        except Exception as error:  # readiness reports any failure, it does not raise
            checks["broker"] = _failure(error)
        ready = all(value == "ok" for value in checks.values())
        body = {"status": "ok" if ready else "unavailable", "checks": checks, "provider": settings.EMAIL_PROVIDER}
        # The events queue is reported, never decides readiness: a DLQ holding
        # messages or an unreachable SQS is something to look at, not a reason
        # to stop taking emails (events wait on the queue).
        events = _events_queue_detail()
        if events is not None:
            body["events"] = events
        body["sending"] = _sending_detail()
        response = Response(body, status=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE)
        # A probe polls every few seconds: its 503s are an answer, not an error line each (the outage logs once).
        response._has_been_logged = True
        return response


def _events_queue_detail() -> dict | None:
    """{queue_depth, dlq_depth, last_drain} of the SES events queue; None when no queue is configured."""
    try:
        queue = events_queue(timeout=READINESS_TIMEOUT_SECONDS, make_sandbox_queues=True)
        if queue is None:
            return None
        # Drain lag: the age of the oldest event the last drain received, and
        # how long ago that drain ran.
        return {"queue_depth": queue["waiting"], "dlq_depth": queue["dlq"], "last_drain": drain_report()}
    except Exception as error:  # readiness reports any failure, it does not raise
        return {"error": _failure(error)}


def _sending_detail() -> dict:
    """Active sending pauses (a paused account or domain is reported, not unready:
    the API keeps accepting and the emails wait)."""
    try:
        return {
            "paused": [
                {**p, "paused_at": p["paused_at"].isoformat(), "until": p["until"] and p["until"].isoformat()}
                for p in sending_pauses()
            ]
        }
    except Exception as error:  # readiness reports any failure, it does not raise
        return {"error": _failure(error)}
