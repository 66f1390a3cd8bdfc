"""Every task tracking publishes goes out here: a webhook sender per endpoint (at most one
waiting or running), and a helper drain when the events queue holds a backlog."""

from __future__ import annotations

import logging

from django.conf import settings
from redis.exceptions import RedisError

from core.redisclient import redis_client

logger = logging.getLogger(__name__)


SEND_LOCK_PREFIX = "emailsvc:lock:webhook-send:"
SEND_QUEUED_PREFIX = "emailsvc:webhook-send-queued:"


def webhook_send_enqueue(*, endpoint_pk: int) -> bool:
    """Publish a sender task for the endpoint unless one is already waiting or running."""
    from tracking.tasks import webhook_send_task

    expires = max(settings.WEBHOOK_DISPATCH_INTERVAL_SECONDS * 5, 10)
    try:
        client = redis_client()
        if client.exists(f"{SEND_LOCK_PREFIX}{endpoint_pk}"):
            return False
        if not client.set(f"{SEND_QUEUED_PREFIX}{endpoint_pk}", 1, nx=True, ex=int(expires)):
            return False
    except RedisError:
        logger.warning("webhook sender not published: Redis unavailable endpoint=%s", endpoint_pk)
        return False
    webhook_send_task.apply_async(args=[endpoint_pk], expires=expires)
    return True


def drain_helper_enqueue() -> None:
    """Publish one more drain task to help with a backlog (it runs if a drain slot is free when it starts)."""
    from tracking.tasks import events_drain_task

    events_drain_task.apply_async(expires=settings.SES_EVENTS_DRAIN_INTERVAL_SECONDS)
