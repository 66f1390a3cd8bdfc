"""gunicorn's settings for the web process: `gunicorn config.wsgi -c config/gunicorn.py` (the Procfile).

- gunicorn's own lines (start, workers booting and exiting, timeouts) go through
  the service's log formatter: JSON (LOG_FORMAT), addresses redacted. Requests
  are logged by core.logs.RequestIdMiddleware, with their request id, so
  gunicorn's access log stays off (its logger is kept at WARNING).
- A worker that exits is marked dead for prometheus-client's multiprocess mode
  (PROMETHEUS_MULTIPROC_DIR): its live gauges leave /metrics, its counters stay.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.conf import settings  # noqa: E402 - needs DJANGO_SETTINGS_MODULE

# Django's LOGGING, with gunicorn's loggers handing their records to its root
# handler; its access lines (INFO) are left out: the app logs each request.
logconfig_dict = {
    **settings.LOGGING,
    "loggers": {
        **settings.LOGGING.get("loggers", {}),
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
    },
}


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
