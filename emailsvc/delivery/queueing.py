"""Publishing delivery tasks (SPEC §5.2, §5.5).

A delivery task carries no message id: it delivers one chunk of whatever is
due, most urgent first. So one task is published per chunk of new work (one
for a single email, four for a batch of 1,000 at chunk size 250), and a task
that finds its work taken by another is a cheap no-op. A publish that is lost
(broker down, Redis restarted) loses no email: the sweeper publishes again for
due work that no queued task will take.
"""

import contextlib
import logging
import math
from collections import Counter
from datetime import datetime

from celery import current_app
from django.conf import settings

from core.outages import outage
from emailsvc.delivery.engine import chunk_size
from emailsvc.models import Priority
from emailsvc.sending_control.ratelimit import rate_limit_from_settings

logger = logging.getLogger(__name__)
# One line when publishing starts failing and one when it works again, per
# process, however many requests and tasks publish meanwhile.
_broker_outage = outage("the Celery broker")


def delivery_queue(priority: str) -> str:
    return f"emails.{priority}"


def delivery_enqueue(*, priority: str, tasks: int = 1, countdown: float | None = None, eta: datetime | None = None) -> int:
    """Publish `tasks` delivery tasks on the priority's queue; how many went out.

    A broker failure is not raised: the work is committed and the sweeper
    publishes for it later. The first failure of an outage is logged (one
    line), the following ones only counted.
    """
    from emailsvc.tasks import deliver_due_task

    options = {"countdown": countdown} if countdown else {"eta": eta} if eta else {}
    for published in range(tasks):
        try:
            deliver_due_task.apply_async(
                args=[priority],
                queue=delivery_queue(priority),
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.5},
                **options,
            )
        except Exception as error:  # any broker failure: the work stays due in the database for the sweeper
            _broker_outage.failed(error, action="delivery tasks are not published; the sweeper publishes them once it is back")
            logger.debug("delivery task not published priority=%s", priority, exc_info=True)
            return published
    if tasks:
        _broker_outage.succeeded()
    return tasks


def deliveries_enqueue(*, priorities: list[str], eta: datetime | None = None) -> int:
    """Publish tasks for new work of these priorities (one entry per message):
    one per chunk, at most DELIVERY_PARALLEL_CHUNKS per priority — each task
    that finds a full chunk publishes the next, so that many run in parallel
    through any backlog. Returns how many went out."""
    size = chunk_size(rate_limit_from_settings())
    published = 0
    for priority, count in Counter(priorities).items():
        tasks = min(math.ceil(count / size), settings.DELIVERY_PARALLEL_CHUNKS)
        published += delivery_enqueue(priority=priority, tasks=tasks, eta=eta)
    return published


def delivery_queue_depths() -> dict[str, int]:
    """Tasks waiting in each priority's broker queue (Redis or RabbitMQ)."""
    depths = {}
    with current_app.connection_for_read() as connection:
        for priority in Priority.values:
            # A channel per queue: RabbitMQ closes a channel whose passive declare fails.
            channel = connection.channel()
            try:
                depths[priority] = channel.queue_declare(queue=delivery_queue(priority), passive=True).message_count
            except connection.channel_errors:  # never declared (no worker consumed it yet): nothing waits there
                depths[priority] = 0
            finally:
                with contextlib.suppress(*connection.connection_errors, *connection.channel_errors):
                    channel.close()
    return depths


def chunk_follow_up(*, priority: str, claimed: int, chunk_size: int, due_later: list[tuple[str, float]]) -> int:
    """After a chunk: keep going while there is a backlog (a full chunk means
    more may be due: one task more for this priority), and publish tasks for
    the retries the chunk put back. How many tasks went out."""
    published = delivery_enqueue(priority=priority) if claimed >= chunk_size else 0
    return published + retries_enqueue(due_later=due_later)


def retries_enqueue(*, due_later: list[tuple[str, float]]) -> int:
    """Publish tasks for messages put back for a retry, per priority at the time
    the last of them is due (their jittered delays differ). Waits longer than
    CELERY_LONGEST_COUNTDOWN_SECONDS stay in the database for the sweeper."""
    by_priority: dict[str, list[float]] = {}
    for priority, delay in due_later:
        if delay <= settings.CELERY_LONGEST_COUNTDOWN_SECONDS:
            by_priority.setdefault(priority, []).append(delay)
    size = chunk_size(rate_limit_from_settings())
    published = 0
    for priority, delays in by_priority.items():
        tasks = min(math.ceil(len(delays) / size), settings.DELIVERY_PARALLEL_CHUNKS)
        published += delivery_enqueue(priority=priority, tasks=tasks, countdown=max(delays) + 0.05)
    return published


def due_work_enqueue() -> int:
    """Publish tasks for every priority with due work (after the account was
    resumed: every task meanwhile found sending paused and claimed nothing)."""
    from django.db.models import Count
    from django.utils import timezone

    from emailsvc.models import CLAIMABLE_STATES, Message

    due = dict(
        Message.objects.filter(state__in=CLAIMABLE_STATES, next_attempt_at__lte=timezone.now())
        .values("priority").annotate(n=Count("pk")).values_list("priority", "n").order_by()
    )
    return deliveries_enqueue(priorities=[p for p, n in due.items() for _ in range(min(n, 100_000))])


def ses_suppression_delete_enqueue(*, email: str) -> None:
    """Ask a worker to take the address off SES's account-level suppression list."""
    from emailsvc.tasks import ses_suppression_delete_task

    ses_suppression_delete_task.delay(email=email)
