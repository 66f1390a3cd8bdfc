"""The Celery app: queues, routing and the beat schedule live in settings (CELERY_*)."""

import logging
import os

from celery import Celery

# Registered for redis:// before any broker connection: a worker survives a Redis outage
# while it runs a task (kombu 5.7.0 exits with "Unrecoverable error"; see the module).
import config.kombu_redis  # noqa: F401

# Connects the receivers that keep Django's LOGGING in workers and beat and bind task ids to log lines.
import core.logs  # noqa: F401

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("emailsvc", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class HousekeepingQuiet(logging.Filter):
    """Drops Celery's INFO lines about housekeeping — the tasks beat runs (settings.
    CELERY_BEAT_SCHEDULE): beat's "Sending due task", the worker's "received" and
    "succeeded". Such a task logs what it did itself and nothing when it did
    nothing; its failures and retries (WARNING and up) are still written. Set on
    the loggers celery.beat, celery.worker.strategy and celery.app.trace (settings.LOGGING)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        args = record.args
        if isinstance(args, dict):  # the worker's received / succeeded: {"name": …, "id": …}
            task = args.get("name")
        elif isinstance(args, tuple) and len(args) == 2 and record.msg.startswith("Scheduler: Sending due task"):
            task = args[1]
        else:
            return True
        return task not in _housekeeping()


def _housekeeping() -> frozenset[str]:
    from django.conf import settings

    return frozenset(entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values())
