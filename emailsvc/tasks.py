"""Celery entry points of the sending side: call the service, retry only what is transient."""

from celery import shared_task
from celery.signals import worker_init
from django.db import close_old_connections

from core import metrics
from core.taskbase import ResilientTask
from emailsvc.delivery.chunks import ChunkResult
from emailsvc.delivery.engine import deliver_due
from emailsvc.delivery.queueing import chunk_follow_up, delivery_enqueue, retries_enqueue
from emailsvc.delivery.scheduling import messages_sweep, scheduled_publish
from emailsvc.domains.services import domains_refresh_due
from emailsvc.models import Priority
from emailsvc.sending_control.breaker import breaker_check, provider_probe

# While the database is away a delivery task cannot claim: it publishes its
# successor this many seconds ahead, so delivery resumes within that time of
# the database's return (the sweeper would take SWEEP_QUEUED_AFTER_SECONDS).
DATABASE_WAIT_SECONDS = 5.0

# In a worker a chunk is recorded by the process's recorder thread while the
# task takes its next chunk. Set when this process starts as a worker, before
# its pool starts (the pool's processes inherit it); anywhere else (`apply()`
# in a shell, a test, the bench) a delivery task records its chunk before it
# returns, with nothing left running behind it.
_record_in_background = False


@worker_init.connect(weak=False, dispatch_uid="emailsvc.record_in_background")
def _worker_started(**kwargs) -> None:
    global _record_in_background
    _record_in_background = True


class DeliveryTask(ResilientTask):
    abstract = True

    def on_unavailable(self, error: BaseException, priority: str = Priority.NORMAL, *args, **kwargs):
        delivery_enqueue(priority=priority if priority in Priority.values else Priority.LOW, countdown=DATABASE_WAIT_SECONDS)
        return {"claimed": 0}


@shared_task(
    bind=True, name="emailsvc.deliver", base=DeliveryTask, max_retries=None, acks_late=True,
    reject_on_worker_lost=True, ignore_result=True,
)
def deliver_due_task(self, priority: str = Priority.NORMAL) -> dict:
    """Deliver one chunk of due messages, the most urgent first (see deliver_due)."""
    # Workers keep their database connection across tasks (CELERY_DB_REUSE_MAX);
    # this closes it only when it is broken or older than CONN_MAX_AGE.
    close_old_connections()
    # A task published before chunked delivery carries a message id: any due work will do.
    priority = priority if priority in Priority.values else Priority.LOW

    def recorded(result: ChunkResult) -> None:
        metrics.delivery_chunk_observe(result)
        retries_enqueue(due_later=result.due_later)

    def next_chunk() -> None:
        delivery_enqueue(priority=priority)

    # With the recorder, and with the limiter on, the next chunk's task is
    # published before this chunk's last sends.
    recorder = recorded if _record_in_background else None
    result = deliver_due(priority=priority, recorded=recorder, next_chunk=next_chunk if recorder else None)
    if result.retry_in is not None:
        metrics.delivery_chunk_observe(result)
        raise self.retry(countdown=result.retry_in)
    if recorder is None or not result.claimed:
        recorded(result)
    if not result.next_published:
        chunk_follow_up(priority=priority, claimed=result.claimed, chunk_size=result.chunk_size, due_later=[])
    if recorder is not None:  # what was sent is known once the recorder has recorded it
        return {"claimed": result.claimed}
    return {"claimed": result.claimed, "sent": result.sent, "failed": result.failed, "deferred": result.deferred}


@shared_task(name="emailsvc.release_scheduled", base=ResilientTask, ignore_result=True, send_events=False)
def scheduled_publish_task() -> int:
    close_old_connections()
    return scheduled_publish()


@shared_task(name="emailsvc.sweep", base=ResilientTask, ignore_result=True, send_events=False)
def messages_sweep_task() -> dict:
    close_old_connections()
    return vars(messages_sweep())


@shared_task(name="emailsvc.breaker_check", base=ResilientTask, ignore_result=True, send_events=False)
def breaker_check_task() -> list[str]:
    close_old_connections()
    return breaker_check().paused


@shared_task(name="emailsvc.provider_probe", base=ResilientTask, ignore_result=True, send_events=False)
def provider_probe_task() -> bool:
    close_old_connections()
    return provider_probe()


@shared_task(name="emailsvc.ses_suppressions_sync", base=ResilientTask, ignore_result=True, send_events=False)
def ses_suppressions_sync_task() -> dict:
    """Pull SES's account-level suppression list (SES_SUPPRESSION_SYNC) and push ours (SES_SUPPRESSION_PUSH)."""
    from django.conf import settings

    from emailsvc.suppressions.services import ses_suppressions_sync

    close_old_connections()
    return ses_suppressions_sync(pull=settings.SES_SUPPRESSION_SYNC, push=settings.SES_SUPPRESSION_PUSH)


@shared_task(bind=True, name="emailsvc.ses_suppression_delete", max_retries=8, ignore_result=True)
def ses_suppression_delete_task(self, email: str) -> bool:
    """Take a lifted address off SES's account-level list; retried while SES is busy or unreachable."""
    import logging

    from emailsvc.suppressions.services import ses_suppression_forget
    from emailsvc.suppressions.ses_sync import SesSuppressionListError

    try:
        return ses_suppression_forget(email=email)
    except SesSuppressionListError as error:
        if error.transient or error.status is None:
            raise self.retry(countdown=min(60 * 2**self.request.retries, 3600)) from None
        logging.getLogger(__name__).warning("lifted address not taken off SES's suppression list: %s", error)
        return False


@shared_task(name="emailsvc.domains_refresh", base=ResilientTask, ignore_result=True, send_events=False)
def domains_refresh_task() -> int:
    """Check the sending domains that are due (SES status and public DNS)."""
    close_old_connections()
    return domains_refresh_due()
