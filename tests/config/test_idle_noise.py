"""An idle service is quiet: `make run` (python -m config.devservices run — web,
worker, beat and Flower from the Procfile, sandbox provider) on the test
database writes at most 20 log lines a minute once started, while beat keeps
running its housekeeping; an email sent then is still logged by the worker."""

import json
import time
import urllib.request

import pytest

from tests.config.conftest import MakeRun

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

IDLE_SECONDS = 45
MAX_LINES_PER_MINUTE = 20


@pytest.fixture
def make_run(tmp_path):
    run = MakeRun(tmp_path)
    try:
        yield run
    finally:
        run.stop()


def test_an_idle_service_writes_at_most_20_lines_a_minute_and_still_logs_a_delivery(make_run):
    key = make_run.wait_for(r"Demo API key (\S+)", timeout=120).group(1)
    for ready in (r"celery@\S+ ready", r"beat: Starting", r"Booting worker", r"Connected to redis"):
        make_run.wait_for(ready, timeout=120)
    time.sleep(5)  # the last start-up lines (Flower asking the worker, mingle)

    started = time.monotonic()
    time.sleep(IDLE_SECONDS)
    idle = make_run.since(started, time.monotonic())
    assert len(idle) <= MAX_LINES_PER_MINUTE * IDLE_SECONDS / 60, "\n".join(idle)

    request = urllib.request.Request(
        f"http://127.0.0.1:{make_run.web_port}/api/v1/emails",
        data=json.dumps({"to": "success@simulator.amazonses.com", "subject": "Hello", "text": "Hi!"}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 202
    # A delivery task's lines are not housekeeping: the worker still says it ran.
    make_run.wait_for(r"Task emailsvc\.deliver\[\S+\] succeeded", timeout=60)
