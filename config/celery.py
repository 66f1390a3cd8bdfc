"""The Celery app: queues, routing and the beat schedule live in settings (CELERY_*)."""

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
