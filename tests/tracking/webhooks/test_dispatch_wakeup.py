"""The webhook dispatcher is woken by a committed status change that has a
subscriber, not by a short periodic task: real web and worker processes
(tests.stack), a real receiver, the broker's queues looked at directly.

- delivery within a couple of seconds of the change with beat's dispatch far away;
- a burst of changes publishes one wake-up, not one per change;
- a wake-up that was lost is made up for by beat's slow safety net;
- changes nobody subscribed to publish nothing.
"""

import time

import pytest
from django.db import close_old_connections, connections

from emailsvc.keys import api_key_create
from emailsvc.models import StatusChange
from tests.conftest import wait_until
from tests.stack import Stack
from tests.tracking.test_webhooks import receiver, verified  # noqa: F401 (receiver: a fixture)
from tracking.queueing import DISPATCH_QUEUED_KEY

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stack(tmp_path, request):
    """Web process on a private Redis; the test starts the worker it needs."""
    env = getattr(request, "param", {})
    stack = Stack(
        directory=tmp_path / "stack",
        db_name=str(connections["default"].settings_dict["NAME"]),
        env={
            "EMAIL_PROVIDER": "console",
            "SEND_RATE_PER_SECOND": "0",
            "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
            "WEBHOOK_ALLOW_HTTP": "true",
            "WEBHOOK_DISPATCH_INTERVAL_SECONDS": "3600",
            **env,
        },
        name="wakeup",
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        close_old_connections()


def _subscribe(stack: Stack, url: str, event_types: list[str]) -> tuple[str, dict]:
    _, key = api_key_create(name="wake-up", permission="full")
    status, webhook = stack.post("/api/v1/webhooks", {"url": url, "event_types": event_types}, key)
    assert status == 201, webhook
    return key, webhook


def _events_queued(stack: Stack) -> int:
    return stack.queue_lengths()["events"]


def test_a_status_change_is_posted_within_seconds_with_beat_far_away(stack, receiver):  # noqa: F811
    key, webhook = _subscribe(stack, receiver.url(), ["sent"])
    stack.start_worker()  # no beat at all: only the wake-up can dispatch

    status, email = stack.post("/api/v1/emails", {"to": "jane@example.com", "subject": "Hi", "text": "Hello"}, key)
    assert status == 202, email
    assert wait_until(lambda: receiver.received, timeout=60), stack.logs()
    arrived = time.time()

    event = verified(webhook["secret"], receiver.received[0])
    assert (event["type"], event["data"]["email_id"]) == ("email.sent", email["email_id"])
    change = StatusChange.objects.get(message__email_id=email["email_id"], to_status="sent")
    assert arrived - change.at.timestamp() < 3.0, stack.logs()


def test_a_burst_of_subscribed_changes_publishes_one_wake_up(stack, receiver):  # noqa: F811
    """Emails to a suppressed address change status at the door (web process)."""
    key, webhook = _subscribe(stack, receiver.url(), ["suppressed"])
    status, body = stack.post("/api/v1/suppressions", {"email": "gone@example.com"}, key)
    assert status in (200, 201), body

    for n in range(20):
        status, email = stack.post("/api/v1/emails", {"to": "gone@example.com", "subject": f"#{n}", "text": "x"}, key)
        assert status == 202, email
    assert StatusChange.objects.filter(to_status="suppressed").count() == 20
    assert _events_queued(stack) == 1  # no worker yet: the one wake-up waits

    stack.start_worker()
    assert wait_until(lambda: len(receiver.received) == 20, timeout=60), stack.logs()
    assert {verified(webhook["secret"], r)["type"] for r in receiver.received} == {"email.suppressed"}


def test_changes_nobody_subscribed_to_publish_nothing(stack, receiver):  # noqa: F811
    key, _ = _subscribe(stack, receiver.url(), ["delivered"])
    stack.post("/api/v1/suppressions", {"email": "gone@example.com"}, key)

    status, email = stack.post("/api/v1/emails", {"to": "gone@example.com", "subject": "Hi", "text": "x"}, key)
    assert status == 202, email
    assert StatusChange.objects.filter(to_status="suppressed").count() == 1
    assert _events_queued(stack) == 0


@pytest.mark.parametrize("stack", [{"WEBHOOK_DISPATCH_INTERVAL_SECONDS": "3"}], indirect=True)
def test_a_lost_wake_up_is_made_up_for_by_the_periodic_dispatch(stack, receiver):  # noqa: F811
    """A wake-up published but never run (its flag still set, its task gone):
    the next change publishes none, and beat's dispatch sends it anyway."""
    key, webhook = _subscribe(stack, receiver.url(), ["sent"])
    client = stack.redis()
    try:
        client.set(DISPATCH_QUEUED_KEY, 1, ex=600)
    finally:
        client.close()
    stack.start_worker(beat=True)

    status, email = stack.post("/api/v1/emails", {"to": "jane@example.com", "subject": "Hi", "text": "Hello"}, key)
    assert status == 202, email
    assert wait_until(lambda: receiver.received, timeout=60), stack.logs()
    event = verified(webhook["secret"], receiver.received[0])
    assert (event["type"], event["data"]["email_id"]) == ("email.sent", email["email_id"])
