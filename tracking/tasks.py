"""Celery entry points of the tracking side."""

from celery import shared_task

from tracking.drain import events_drain


@shared_task(name="tracking.drain_events", ignore_result=True)
def events_drain_task() -> dict:
    """Beat runs this every SES_EVENTS_DRAIN_INTERVAL_SECONDS on the `events` queue."""
    return vars(events_drain())
