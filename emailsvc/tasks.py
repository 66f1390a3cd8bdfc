"""Celery entry points of the sending side: load by id, call the service."""

from celery import shared_task
from django.conf import settings

from emailsvc.services.delivery import DeliveryDeferred, message_deliver
from emailsvc.services.scheduling import messages_sweep, scheduled_release


@shared_task(bind=True, name="emailsvc.deliver", max_retries=None, acks_late=True, reject_on_worker_lost=True)
def message_deliver_task(self, message_id: int) -> None:
    try:
        message_deliver(message_id=message_id)
    except DeliveryDeferred as deferred:
        if deferred.countdown > settings.CELERY_LONGEST_COUNTDOWN_SECONDS:
            return  # due time is in next_attempt_at: the sweeper enqueues it then
        raise self.retry(countdown=deferred.countdown, exc=deferred) from None


@shared_task(name="emailsvc.release_scheduled", ignore_result=True)
def scheduled_release_task() -> int:
    return scheduled_release()


@shared_task(name="emailsvc.sweep", ignore_result=True)
def messages_sweep_task() -> dict:
    return vars(messages_sweep())
