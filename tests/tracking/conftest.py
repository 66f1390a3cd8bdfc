import pytest

from core.redisclient import redis_client
from tracking.drain import DRAIN_LOCK_PREFIX


@pytest.fixture(autouse=True)
def no_stale_drain_lock():
    """A drain killed by an earlier test must not make this test's drain skip."""
    client = redis_client()
    for key in client.scan_iter(match=DRAIN_LOCK_PREFIX + "*"):
        client.delete(key)
