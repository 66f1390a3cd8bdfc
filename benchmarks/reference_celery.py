"""The service's Celery app with Celery's own per-task rate limit on delivery,
for the reference row of figure 4 (`celery -A benchmarks.reference_celery worker`).

Celery enforces `rate_limit` with a token bucket inside each worker process's
consumer, so N workers together may send N times the limit. The bench runs
these workers with SEND_RATE_PER_SECOND=0 (the service's global limiter off) to
show what the service's Redis limiter is for. Nothing in the project is changed:
the annotation is applied here, before the worker finalizes its tasks.
"""

import os

from config.celery import app

RATE_LIMIT = os.environ.get("BENCH_CELERY_RATE_LIMIT", "14/s")
app.conf.task_annotations = {"emailsvc.deliver": {"rate_limit": RATE_LIMIT}}

__all__ = ["app"]
