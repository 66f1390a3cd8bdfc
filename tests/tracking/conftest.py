import pytest

from emailsvc.redisclient import redis_client
from tracking.services import DRAIN_LOCK_NAME


@pytest.fixture(autouse=True)
def no_stale_drain_lock():
    """A drain killed by an earlier test must not make this test's drain skip."""
    redis_client().delete(DRAIN_LOCK_NAME)
