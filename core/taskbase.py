"""The base of the periodic and delivery tasks: a dependency that is away is an
outage to wait out, not an error per task.

While PostgreSQL or Redis is unreachable, every beat tick (sweeper, scheduled
release, breaker check, event drain, webhook dispatch) would fail with a
traceback, and so would every delivery task that finds its chunk unclaimable.
None of that is a fault of the task: the work stays in the database and the
next tick, or the task republished by the delivery engine, does it once the
dependency answers. `ResilientTask` turns those failures into one warning per
outage and process (core.outages) and a quiet return; any other error
still fails the task as usual.
"""

from __future__ import annotations

from celery.contrib.django.task import DjangoTask
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.outages import Outage, outage

database_outage = outage("the database")
redis_outage = outage("Redis")
broker_outage = outage("the Celery broker")


def unavailable(error: BaseException) -> Outage | None:
    """The outage `error` is a sign of (a dependency that cannot be reached), or None."""
    if isinstance(error, OperationalError | InterfaceError):
        return database_outage
    if isinstance(error, RedisConnectionError | RedisTimeoutError):
        return redis_outage
    if isinstance(error, BrokerOperationalError):
        return broker_outage
    return None


class ResilientTask(DjangoTask):
    """A task whose run, when a dependency is unreachable, logs the outage once
    and returns None instead of failing (`on_unavailable` may do more)."""

    abstract = True

    def __call__(self, *args, **kwargs):
        try:
            result = super().__call__(*args, **kwargs)
        except Exception as error:
            outage = unavailable(error)
            if outage is None:
                raise
            outage.failed(error, action=f"{self.name} tries again on its next run")
            return self.on_unavailable(error, *args, **kwargs)
        # The end of an outage is logged by what sees the dependency answer
        # again (a new database connection, a publish that goes through).
        return result

    def on_unavailable(self, error: BaseException, *args, **kwargs):
        return None
