"""Every task tracking publishes goes out here: the webhook dispatcher when a
committed status change has a subscriber (at most one waiting), a webhook
sender per endpoint (at most one waiting or running), and a helper drain when
the events queue holds a backlog."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.conf import settings
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from core.redisclient import redis_client
from emailsvc.models import StatusChange
from tracking.models import WebhookEndpoint
from tracking.webhooks.events import change_statuses

logger = logging.getLogger(__name__)


SEND_LOCK_PREFIX = "emailsvc:lock:webhook-send:"
SEND_QUEUED_PREFIX = "emailsvc:webhook-send-queued:"
# Set while a dispatcher run is waiting to start; the run deletes it first thing,
# so a change committed after that publishes the next run.
DISPATCH_QUEUED_KEY = "emailsvc:webhook-dispatch-queued"
# A wake-up that was published but never ran (a lost task) blocks the next one
# for at most this long; WEBHOOK_DISPATCH_INTERVAL_SECONDS catches what it missed.
DISPATCH_WAKE_EXPIRES = 30


def status_changes_wake(*, changes: Sequence[StatusChange], **kwargs) -> bool:
    """After a commit (emailsvc.status.changes_committed): publish a dispatcher run
    if an enabled endpoint subscribes to one of the changes."""
    endpoints = list(WebhookEndpoint.objects.filter(disabled_at__isnull=True).only("id", "event_types"))
    if not endpoints:
        return False
    wanted = {(change.from_status, change.to_status) for change in changes}
    if not any(endpoint.wants(change_statuses(*pair)) for pair in wanted for endpoint in endpoints):
        return False
    return webhooks_dispatch_enqueue()


def webhooks_dispatch_enqueue(*, countdown: float = 0) -> bool:
    """Publish a dispatcher run unless one is already waiting."""
    from tracking.tasks import webhooks_dispatch_task

    try:
        if not redis_client().set(DISPATCH_QUEUED_KEY, 1, nx=True, ex=int(DISPATCH_WAKE_EXPIRES + countdown)):
            return False
    except RedisError:
        logger.warning("webhook dispatcher not woken: Redis unavailable")
        return False
    webhooks_dispatch_task.apply_async(countdown=countdown or None, expires=DISPATCH_WAKE_EXPIRES + countdown)
    return True


def webhooks_dispatch_started() -> None:
    """A dispatcher run starts: changes committed from now on publish the next one."""
    try:
        redis_client().delete(DISPATCH_QUEUED_KEY)
    except RedisError:
        pass  # the flag expires by itself (DISPATCH_WAKE_EXPIRES)


def webhook_send_enqueue(*, endpoint_pk: int, countdown: float = 0) -> bool:
    """Publish a sender task for the endpoint unless one is already waiting or running."""
    from tracking.tasks import webhook_send_task

    expires = max(settings.WEBHOOK_DISPATCH_INTERVAL_SECONDS * 5, 10) + countdown
    try:
        client = redis_client()
        if client.exists(f"{SEND_LOCK_PREFIX}{endpoint_pk}"):
            return False
        if not client.set(f"{SEND_QUEUED_PREFIX}{endpoint_pk}", 1, nx=True, ex=int(expires)):
            return False
    except RedisError:
        logger.warning("webhook sender not published: Redis unavailable endpoint=%s", endpoint_pk)
        return False
    webhook_send_task.apply_async(args=[endpoint_pk], countdown=countdown or None, expires=expires)
    return True


def drain_helper_enqueue() -> None:
    """Publish one more drain task to help with a backlog (it runs if a drain slot is free when it starts)."""
    from tracking.tasks import events_drain_task

    events_drain_task.apply_async(expires=settings.SES_EVENTS_DRAIN_INTERVAL_SECONDS)


def hits_apply_enqueue(*, countdown: float = 0) -> None:
    """Publish a run applying the buffered tracking hits (tracking.hits sets the
    flag that keeps this to one per TRACKING_HITS_APPLY_DELAY_SECONDS)."""
    from tracking.tasks import hits_apply_task

    try:
        hits_apply_task.apply_async(countdown=countdown or None, expires=countdown + settings.TRACKING_HITS_APPLY_INTERVAL_SECONDS)
    except (KombuError, RedisError, OSError) as error:  # a lost wake-up costs one beat interval, never the hit
        logger.warning("tracking hits not woken: %s", error)
