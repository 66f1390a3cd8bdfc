"""RabbitMQ as the Celery broker: the same web and worker processes, tasks over AMQP.

Runs when RabbitMQ answers at RABBITMQ_URL (default amqp://guest:guest@127.0.0.1:5672//);
CI starts it and sets RABBITMQ_URL, and then a broken AMQP path fails instead of skipping.
Redis stays the home of the rate limiter and locks (REDIS_URL), as docs/settings.md says.
"""

import os
import socket
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.db import connections
from django.utils import timezone
from kombu import Connection

from emailsvc.keys import api_key_create
from emailsvc.models import Status
from tests.conftest import wait_for_status
from tests.stack import Stack

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
QUEUES = ("emails.high", "emails.normal", "emails.low", "events")


def _rabbitmq_answers() -> bool:
    parts = urlsplit(RABBITMQ_URL)
    try:
        with socket.create_connection((parts.hostname, parts.port or 5672), timeout=2):
            return True
    except OSError:
        return False


if not os.environ.get("RABBITMQ_URL") and not _rabbitmq_answers():
    pytestmark.append(pytest.mark.skip(reason="no RabbitMQ at amqp://127.0.0.1:5672 (set RABBITMQ_URL to require it)"))


@pytest.fixture
def amqp_stack(transactional_db, tmp_path, smtp_server):
    with Connection(RABBITMQ_URL) as connection:  # tasks of an earlier run point at rows that are gone
        channel = connection.channel()
        for queue in QUEUES:
            try:
                channel.queue_purge(queue)
            except Exception:  # the queue does not exist yet
                channel = connection.channel()
    mail = smtp_server
    stack = Stack(
        directory=tmp_path / "amqp",
        db_name=str(connections["default"].settings_dict["NAME"]),
        env={
            "CELERY_BROKER_URL": RABBITMQ_URL,
            "EMAIL_PROVIDER": "smtp",
            "SMTP_HOST": mail.host,
            "SMTP_PORT": str(mail.port),
            "SEND_RATE_PER_SECOND": "0",
            "DELIVERY_RETRY_BASE_SECONDS": "0.2",
            "DELIVERY_RETRY_MAX_SECONDS": "1",
            "SCHEDULED_RELEASE_INTERVAL_SECONDS": "1",
        },
        name="amqp",
    )
    stack.start()
    try:
        yield stack, mail
    finally:
        stack.stop()


def test_emails_are_delivered_once_over_rabbitmq_including_retries_and_scheduled_ones(amqp_stack):
    stack, mail = amqp_stack
    key = api_key_create(name="amqp", permission="sending")[1]
    run = uuid.uuid4().hex[:12]
    stack.start_worker(beat=True)

    # A temporary SMTP refusal: the retry travels through RabbitMQ with a countdown.
    mail.refuse_next("451 4.3.0 Try again later")
    retried = send(stack, key, f"amqp-retry-{run}")
    message = wait_for_status(retried, timeout=60)
    assert (message.status, message.attempts) == (Status.SENT, 2), stack.logs()

    plain = send(stack, key, f"amqp-{run}")
    due = send(stack, key, f"amqp-due-{run}", send_at="2000-01-01T00:00:00Z")  # queued at once
    later = send(stack, key, f"amqp-later-{run}", send_at=(timezone.now() + timedelta(seconds=2)).isoformat())
    for email_id in (plain, due, later):
        assert wait_for_status(email_id, timeout=60, pending={"queued", "sending", "scheduled"}).status == Status.SENT, stack.logs()
    for email_id in (retried, plain, due, later):
        assert len(mail.wait_for(email_id)) == 1


def send(stack: Stack, key: str, email_id: str, **fields) -> str:
    body = {"to": "a@example.org", "subject": "AMQP", "text": "hi", "email_id": email_id, **fields}
    status, answer = stack.post("/api/v1/emails", body, key)
    assert status == 202, answer
    return email_id
