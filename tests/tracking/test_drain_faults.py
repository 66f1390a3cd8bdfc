"""A drain process killed between receiving and committing loses nothing and applies once."""

import json
import os
import subprocess
import sys
import time

import pytest
from django.db import connections, transaction

from core.redisclient import redis_client
from emailsvc.models import Recipient
from tests.conftest import BASE_DIR, deliver_now, wait_for_status, wait_until
from tests.invariants import histories_replay
from tests.tracking.sesevents import ses_event, sns_envelope
from tracking.drain import drain_lock_name, events_drain
from tracking.models import EngagementEvent

pytestmark = pytest.mark.django_db(transaction=True)

VISIBILITY_TIMEOUT = 2


def drain_process(events_queue, moto_server, settings) -> subprocess.Popen:
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="tests.settings",
        TESTS_DB_NAME=str(connections["default"].settings_dict["NAME"]),
        REDIS_URL=settings.REDIS_URL,
        AWS_ENDPOINT_URL=moto_server.url,
        SES_EVENTS_QUEUE_URL=events_queue.url,
        SES_EVENTS_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
        SES_EVENTS_WAIT_SECONDS="1",
        SES_EVENTS_DRAIN_MAX_SECONDS="1",
    )
    return subprocess.Popen(
        [sys.executable, "manage.py", "drain_events", "--once"],
        cwd=BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def test_drain_killed_before_commit_leaves_events_queued_and_next_drain_applies_them_once(
    api, events_queue, moto_server, settings
):
    response = api.post("/api/v1/emails", json.dumps({"to": "kill@example.com", "subject": "s", "text": "t"}), content_type="application/json")
    email_id = response.json()["email_id"]
    # Delivered here, or by the suite's worker if one is running and was quicker.
    deliver_now()
    message = wait_for_status(email_id)
    recipient = message.recipients.get()
    events_queue.put(sns_envelope(ses_event("Delivery", message_id=message.provider_message_id, recipients=[recipient.email])))

    # Hold the recipient's row (and on SQLite the database's write lock) so the
    # drain process blocks after receiving, before it can commit; then kill it.
    with transaction.atomic():
        Recipient.objects.select_for_update().filter(pk=recipient.pk).update(name="held")
        process = drain_process(events_queue, moto_server, settings)
        received = wait_until(lambda: _in_flight(events_queue) == 1)
        time.sleep(0.5)
        process.kill()
        output = process.communicate()[0].decode(errors="replace")
    assert received, output

    recipient.refresh_from_db()
    assert recipient.status == "sent" and recipient.delivered_at is None
    assert not EngagementEvent.objects.exists()
    # The killed run's slot stays taken until its lock expires on its own.
    lock_name = drain_lock_name(events_queue.url, 0)
    assert redis_client().exists(lock_name), output
    settings.SES_EVENTS_DRAIN_CONCURRENCY = 1
    assert events_drain().skipped == "all 1 drain slots are taken", output
    assert wait_until(lambda: not redis_client().exists(lock_name), timeout=15)
    # The message was never deleted: it becomes visible again after its timeout.
    assert wait_until(lambda: _visible(events_queue) == 1, timeout=VISIBILITY_TIMEOUT + 5)

    settings.SES_EVENTS_WAIT_SECONDS = 0
    first, second = events_drain(), events_drain()

    assert (first.applied, first.deleted) == (1, 1)
    assert (second.received, second.applied) == (0, 0)
    assert events_queue.depth() == 0
    recipient.refresh_from_db()
    assert recipient.status == "delivered"
    assert EngagementEvent.objects.count() == 1
    histories_replay()


def _attributes(events_queue) -> dict:
    return events_queue.sqs.get_queue_attributes(
        QueueUrl=events_queue.url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]


def _in_flight(events_queue) -> int:
    return int(_attributes(events_queue)["ApproximateNumberOfMessagesNotVisible"])


def _visible(events_queue) -> int:
    return int(_attributes(events_queue)["ApproximateNumberOfMessages"])
