"""Celery entry points of the tracking side."""

from celery import shared_task

from core import metrics
from core.taskbase import ResilientTask
from tracking.drain import events_drain
from tracking.queueing import webhook_send_enqueue
from tracking.webhooks.outbox import webhooks_dispatch
from tracking.webhooks.sender import webhook_deliveries_send


@shared_task(name="tracking.drain_events", base=ResilientTask, ignore_result=True)
def events_drain_task() -> dict:
    """Beat runs this every SES_EVENTS_DRAIN_INTERVAL_SECONDS on the `events` queue."""
    result = events_drain()
    metrics.drain_observe(result)
    return vars(result)


@shared_task(name="tracking.webhooks_dispatch", base=ResilientTask, ignore_result=True)
def webhooks_dispatch_task() -> dict:
    """Beat runs this every WEBHOOK_DISPATCH_INTERVAL_SECONDS: new status changes
    become deliveries, and each endpoint with deliveries due gets a sender."""
    result = webhooks_dispatch()
    for endpoint_pk in result.due_endpoints:
        webhook_send_enqueue(endpoint_pk=endpoint_pk)
    return vars(result)


@shared_task(name="tracking.webhook_send", base=ResilientTask, ignore_result=True)
def webhook_send_task(endpoint_pk: int) -> dict:
    """POST one endpoint's due deliveries (published by the dispatcher or a re-send)."""
    return vars(webhook_deliveries_send(endpoint_pk=endpoint_pk))
