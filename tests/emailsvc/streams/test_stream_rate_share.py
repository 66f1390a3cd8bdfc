"""A broadcast backlog never delays a transactional email beyond its share of
the send rate (docs/streams.md): a private stack with the limiter on, arrivals
timed at a real SMTP server."""

import gc
import time
import uuid

import pytest

from emailsvc.keys import api_key_create
from tests.conftest import wait_until
from tests.emailsvc.conftest import _test_db_name
from tests.stack import SmtpServer, Stack

pytestmark = [pytest.mark.worker, pytest.mark.timing, pytest.mark.django_db(transaction=True)]

RATE = 20  # SEND_RATE_PER_SECOND; broadcast's rate_share is 0.5 by default: 10/s at most
BACKLOG = 50  # broadcast emails: five seconds of its share


@pytest.fixture(scope="module")
def mail():
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def stack(tmp_path, mail, transactional_db):
    env = {
        "EMAIL_PROVIDER": "smtp", "SMTP_HOST": mail.host, "SMTP_PORT": str(mail.port),
        "SEND_RATE_PER_SECOND": str(RATE), "SEND_RATE_BURST": "1", "UNSUBSCRIBE_BASE_URL": "https://mail.example.com",
    }
    stack = Stack(directory=tmp_path / "stack", db_name=_test_db_name(), env=env, name="shares").start()
    try:
        stack.start_worker(concurrency=2)
        yield stack
    finally:
        stack.stop()


def test_a_broadcast_backlog_leaves_transactional_email_its_share_of_the_rate(stack, mail):
    key = api_key_create(name="shares", permission="sending")[1]
    run = f"bulk-{uuid.uuid4().hex[:10]}"
    emails = [
        {"to": f"reader{i}@example.org", "subject": f"{run} #{i}", "text": "News.", "stream": "broadcast"}
        for i in range(BACKLOG)
    ]
    gc.disable()  # the SMTP server answers from this process: no collection pause in the measurement
    try:
        status, answer = stack.post("/api/v1/emails/batch", {"emails": emails}, key)
        assert status == 200 and not answer["errors"], answer
        wait_until(lambda: len(mail.matching(run)) >= 10, timeout=20)  # the backlog is being sent

        latencies = []
        for n in range(3):
            reset = f"reset-{uuid.uuid4().hex[:10]}"
            asked = time.monotonic()
            status, answer = stack.post("/api/v1/emails", {"to": f"user{n}@example.org", "subject": reset, "text": "Code: 1"}, key)
            assert status == 202, answer
            arrival = mail.wait_for(reset, timeout=20)[0]
            latencies.append(arrival.at - asked)
            time.sleep(0.3)  # spread over the backlog
        backlog_left = BACKLOG - len(mail.matching(run))
        bulk = sorted(arrival.at for arrival in mail.wait_for(run, count=BACKLOG, timeout=30))
    finally:
        gc.enable()

    assert backlog_left > 0, "the transactional emails were sent while broadcast ones were still waiting"
    assert max(latencies) < 1.5, latencies  # behind a backlog holding the whole rate: about RATE_LIMIT_MAX_WAIT_SECONDS
    # Broadcast kept to its half of the rate: 50 emails at 10/s take about five seconds.
    assert bulk[-1] - bulk[0] >= (BACKLOG - 2) / (RATE * 0.5) * 0.9, bulk[-1] - bulk[0]
