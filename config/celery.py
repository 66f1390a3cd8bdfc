"""The Celery app: queues, routing and the beat schedule live in settings (CELERY_*)."""

import os

from celery import Celery
from celery.signals import worker_process_shutdown

# Registered for redis:// before any broker connection: a worker survives a Redis outage
# while it runs a task (kombu 5.7.0 exits with "Unrecoverable error"; see the module).
import config.kombu_redis  # noqa: F401
# Connects the receivers that keep Django's LOGGING in workers and beat and bind task ids to log lines.
import core.logs  # noqa: F401

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("emailsvc", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_shutdown.connect
def _metrics_process_dead(pid=None, **kwargs):
    """A pool process exits: the chunk its recorder holds is recorded first (else
    the sweeper records it from the journal); its live gauges leave /metrics
    (emailsvc.metrics, multiprocess mode)."""
    from emailsvc.metrics import process_dead
    from emailsvc.delivery.engine import recordings_stop

    recordings_stop(timeout=30)
    process_dead(pid=pid)
