"""gunicorn's settings for the web process: `gunicorn config.wsgi -c config/gunicorn.py` (the Procfile).

- gevent workers: each connection is a greenlet, so clients that send slowly
  or stall cost a socket and a little memory, not a worker. A worker serves up
  to WEB_CONNECTIONS connections at once; request headers must arrive within
  WEB_KEEPALIVE seconds (also how long an idle kept-alive connection stays
  open), and config.bodies bounds each wait for body bytes (WEB_READ_TIMEOUT).
  gevent patches the standard library when a worker starts, before the
  application (and psycopg, which then waits cooperatively) is imported. A
  client's database connections are closed when its connection ends (Worker).
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
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from gunicorn.workers.ggevent import GeventWorker  # noqa: E402


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name) or str(default)
    if not raw.isdigit() or int(raw) < 1:
        raise ImproperlyConfigured(f"{name} must be a positive whole number, not {raw!r}")
    return int(raw)


class Worker(GeventWorker):
    """gunicorn's gevent worker, closing a connection's database connections when it ends.

    Django keeps its database connections per greenlet (context-local), and
    each client connection is served by a greenlet of its own: kept open after
    a request (DATABASE_CONN_MAX_AGE) for that client's next one, they are
    closed when the client goes, not left open until garbage-collected.
    """

    def handle(self, listener, client, addr):
        try:
            super().handle(listener, client, addr)
        finally:
            from django.db import connections  # imported after gevent's patching, as the app is

            connections.close_all()


worker_class = Worker
worker_connections = _positive_int("WEB_CONNECTIONS", 1000)
keepalive = _positive_int("WEB_KEEPALIVE", 5)

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
