"""/healthz and /readyz, and the readings of shared state they report (SPEC §7)."""

from __future__ import annotations

from celery import current_app
from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from core.sql import database_ping


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
            checks["database"] = f"error: {type(error).__name__}"
        try:
            with current_app.connection_for_write() as broker:
                broker.ensure_connection(max_retries=1, timeout=2)
            checks["broker"] = "ok"
        except Exception as error:  # readiness reports any failure, it does not raise
            checks["broker"] = f"error: {type(error).__name__}"
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
    """{queue_depth, dlq_depth} of the SES events queue; None when no queue is configured."""
    from core import sqs
    from tracking.drain import drain_report

    try:
        queue_url = sqs.events_queue_url()
        if not queue_url:
            return None
        client = sqs.sqs_client(timeout_seconds=2)
        return {
            "queue_depth": sqs.queue_depth(queue_url, client=client),
            "dlq_depth": sqs.events_dlq_depth(queue_url, client=client),
            # Drain lag: the age of the oldest event the last drain received, and
            # how long ago that drain ran.
            "last_drain": drain_report(),
        }
    except Exception as error:  # readiness reports any failure, it does not raise
        return {"error": f"error: {type(error).__name__}"}


def _sending_detail() -> dict:
    """Active sending pauses (a paused account or domain is reported, not unready:
    the API keeps accepting and the emails wait)."""
    try:
        from emailsvc.models import SendingPause

        active = SendingPause.objects.filter(resumed_at__isnull=True).values("domain", "cause", "reason", "paused_at", "until")
        return {"paused": [{**p, "paused_at": p["paused_at"].isoformat(), "until": p["until"] and p["until"].isoformat()} for p in active]}
    except Exception as error:  # readiness reports any failure, it does not raise
        return {"error": f"error: {type(error).__name__}"}
