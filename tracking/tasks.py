"""Celery entry points of the tracking side."""

from celery import shared_task
from django.conf import settings

from core import metrics
from core.taskbase import ResilientTask
from tracking.drain import events_drain
from tracking.hits import hits_apply
from tracking.queueing import webhook_send_enqueue, webhooks_dispatch_enqueue, webhooks_dispatch_started
from tracking.webhooks.outbox import webhooks_dispatch
from tracking.webhooks.sender import RETRY_DELAYS, webhook_deliveries_send, webhook_next_due_seconds


# Housekeeping run by beat sends no task events (send_events=False): Flower's
# task list shows the work (deliveries, webhook senders), not the periodic checks.
@shared_task(name="tracking.drain_events", base=ResilientTask, ignore_result=True, send_events=False)
def events_drain_task() -> dict:
    """Beat runs this every SES_EVENTS_DRAIN_INTERVAL_SECONDS on the `events` queue."""
    result = events_drain()
    metrics.drain_observe(result)
    return vars(result)


@shared_task(name="tracking.hits_apply", base=ResilientTask, ignore_result=True, send_events=False)
def hits_apply_task() -> dict:
    """Woken by the first hit after a quiet spell (tracking.queueing), and run by
    beat every TRACKING_HITS_APPLY_INTERVAL_SECONDS: apply the buffered open and click hits."""
    return vars(hits_apply())


@shared_task(name="tracking.webhooks_dispatch", base=ResilientTask, ignore_result=True, send_events=False)
def webhooks_dispatch_task() -> dict:
    """Published after a commit whose status changes have a subscriber
    (tracking.queueing), and run by beat every WEBHOOK_DISPATCH_INTERVAL_SECONDS
    as a safety net: new status changes become deliveries, and each endpoint
    with deliveries due gets a sender."""
    webhooks_dispatch_started()
    result = webhooks_dispatch()
    if result.skipped:  # the running dispatcher may have read before the changes that woke this one
        webhooks_dispatch_enqueue(countdown=1)
    for endpoint_pk in result.due_endpoints:
        webhook_send_enqueue(endpoint_pk=endpoint_pk)
    return vars(result)


@shared_task(name="tracking.webhook_send", base=ResilientTask, ignore_result=True)
def webhook_send_task(endpoint_pk: int) -> dict:
    """POST one endpoint's due deliveries (published by the dispatcher or a re-send).
    Once its lock is released, a delivery due now (created while it ran, or left
    at its time limit) or soon (a retry) gets the next sender — after a failure
    not before RETRY_DELAYS[0]; later ones are the dispatcher's."""
    result = webhook_deliveries_send(endpoint_pk=endpoint_pk)
    if not result.skipped:
        due_in = webhook_next_due_seconds(endpoint_pk=endpoint_pk)
        if due_in is not None and result.failed:  # a failing receiver gets no burst of the others
            due_in = max(due_in, RETRY_DELAYS[0])
        if due_in is not None and due_in < settings.WEBHOOK_DISPATCH_INTERVAL_SECONDS:
            webhook_send_enqueue(endpoint_pk=endpoint_pk, countdown=due_in)
    return vars(result)
