"""Celery entry points of the sending side: call the service, retry only what is transient."""

from celery import shared_task
from django.db import close_old_connections

from emailsvc.models import Priority
from emailsvc.services.delivery import deliver_due
from emailsvc.services.queueing import chunk_follow_up
from emailsvc.services.scheduling import messages_sweep, scheduled_publish


@shared_task(bind=True, name="emailsvc.deliver", max_retries=None, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def deliver_due_task(self, priority: str = Priority.NORMAL) -> dict:
    """Deliver one chunk of due messages, the most urgent first (see deliver_due)."""
    # Workers keep their database connection across tasks (CELERY_DB_REUSE_MAX);
    # this closes it only when it is broken or older than CONN_MAX_AGE.
    close_old_connections()
    # A task published before chunked delivery carries a message id: any due work will do.
    priority = priority if priority in Priority.values else Priority.LOW
    result = deliver_due(priority=priority)
    if result.retry_in is not None:
        raise self.retry(countdown=result.retry_in)
    chunk_follow_up(priority=priority, claimed=result.claimed, chunk_size=result.chunk_size, due_later=result.due_later)
    return {"claimed": result.claimed, "sent": result.sent, "failed": result.failed, "deferred": result.deferred}


@shared_task(name="emailsvc.release_scheduled", ignore_result=True)
def scheduled_publish_task() -> int:
    close_old_connections()
    return scheduled_publish()


@shared_task(name="emailsvc.sweep", ignore_result=True)
def messages_sweep_task() -> dict:
    close_old_connections()
    return vars(messages_sweep())
