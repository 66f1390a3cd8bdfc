"""The Redis connection used for cross-process coordination (locks, rate limits).

Always Redis (REDIS_URL), whatever the Celery broker is: RabbitMQ can carry the
tasks but cannot hold a lock shared by every worker on every machine.
"""

from functools import lru_cache

import redis
from django.conf import settings


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    # redis-py's pool notices a fork and reconnects in the child, so one
    # client per process is safe under Celery's prefork pool and gunicorn.
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
