"""`make run` (python -m config.devservices run) on the test database, delivering
to the suite's SMTP server: a management command run beside it with no variables
uses its settings; Ctrl-C stops web, beat and the worker first — the worker
finishes the chunk it is sending — and the embedded Redis last, with no
traceback, no process left and no email lost or left `sending`; a second Ctrl-C
forces the stop and still leaves no process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from config.devservices import BASE_DIR
from emailsvc.models import Message
from tests.config.conftest import MakeRun
from tests.conftest import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

COUNT = 60
NOISE = ("Traceback", "WorkerLostError", "Couldn't reject", "Connection refused")


@pytest.fixture
def make_run(tmp_path, smtp_server):
    """`make run` with EMAIL_PROVIDER=smtp (no moto), 20 recipients a second."""
    run = MakeRun(
        tmp_path, EMAIL_PROVIDER="smtp", SMTP_HOST=smtp_server.host, SMTP_PORT=str(smtp_server.port),
        SEND_RATE_PER_SECOND="20",
    )
    try:
        yield run
    finally:
        run.stop()


def started(run: MakeRun) -> str:
    """Wait until web and worker are up; the demo API key."""
    key = run.wait_for(r"Demo API key (\S+)", timeout=180).group(1)
    for ready in (r"celery@\S+ ready", r"Booting worker"):
        run.wait_for(ready, timeout=180)
    run.remember()
    return key


def post(run: MakeRun, path: str, body: dict, key: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{run.web_port}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, json.loads(answer.read())


def beside(run: MakeRun, *args: str) -> subprocess.CompletedProcess:
    """`python manage.py …` in another terminal: nothing set but PATH (and where the run keeps its state)."""
    env = {"PATH": os.environ["PATH"], "SANDBOX_DIR": str(run.sandbox_dir)}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, text=True, capture_output=True, timeout=120
    )


def interrupt(run: MakeRun, *, again_after: float | None = None) -> tuple[int, float]:
    """Ctrl-C (SIGINT to make run's process group), and once more after `again_after`
    seconds; (exit code, seconds until it exited)."""
    run.remember()
    began = time.monotonic()
    os.killpg(run.process.pid, signal.SIGINT)
    if again_after is not None:
        time.sleep(again_after)
        os.killpg(run.process.pid, signal.SIGINT)
    returncode = run.process.wait(timeout=120)
    run._reader.join(timeout=5)
    return returncode, time.monotonic() - began


def test_a_key_created_beside_make_run_with_no_variables_works_against_it(make_run, smtp_server):
    started(make_run)

    created = beside(make_run, "create_api_key", "--name", "beside make run")
    resumed = beside(make_run, "resume_sending")

    assert created.returncode == 0, created.stderr
    [key] = created.stdout.splitlines()
    assert created.stderr.startswith("Created API key 'beside make run' (sending).")
    assert (resumed.returncode, resumed.stdout) == (0, "Nothing to resume (paused: none).\n"), resumed.stderr
    status, answer = post(make_run, "/api/v1/emails", {"to": "reader@example.org", "subject": "s", "text": "t"}, key)
    assert status == 202
    assert smtp_server.wait_for(answer["email_id"], timeout=60)


def test_ctrl_c_while_sending_finishes_the_chunk_stops_redis_last_and_leaves_nothing(make_run, smtp_server):
    key = started(make_run)
    run = f"stop-{time.time_ns()}"
    emails = [
        {"to": f"reader{i}@example.org", "subject": f"{run} #{i}", "text": "Hello.", "email_id": f"{run}-{i:03d}"}
        for i in range(COUNT)
    ]
    status, answer = post(make_run, "/api/v1/emails/batch", {"emails": emails}, key)
    assert status == 200 and len(answer["data"]) == COUNT, answer
    assert smtp_server.wait_for(run, timeout=60)  # a delivery task is sending

    returncode, _ = interrupt(make_run)

    output = make_run.output()
    assert returncode == 0, output
    assert not [noise for noise in NOISE if noise in output], output
    assert make_run.left_running() == [], output
    assert "worker.1 stopped (exit code 0)" in output
    # Every accepted email was sent once (the SMTP server has it) or is still queued: none lost, none `sending`.
    messages = {m.email_id: (m.state, m.status) for m in Message.objects.filter(email_id__startswith=run)}
    assert len(messages) == COUNT
    copies = {email_id: len(smtp_server.matching(email_id)) for email_id in messages}
    sent = {email_id for email_id, (_, status) in messages.items() if status == "sent"}
    assert sent and {email_id for email_id, n in copies.items() if n} == sent
    assert set(copies.values()) <= {0, 1}
    assert {messages[email_id] for email_id in messages.keys() - sent} <= {("queued", "queued")}


def test_a_second_ctrl_c_forces_the_stop_and_leaves_nothing(tmp_path):
    """The worker is stuck in an SMTP session (a server that never answers): a
    warm shutdown would wait for it; the second Ctrl-C does not."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        run = MakeRun(tmp_path, EMAIL_PROVIDER="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=str(silent.getsockname()[1]))
        try:
            key = started(run)
            status, _ = post(run, "/api/v1/emails", {"to": "reader@example.org", "subject": "s", "text": "t"}, key)
            assert status == 202
            run.wait_for(r"Task emailsvc\.deliver\[\S+\] received", timeout=60)

            returncode, seconds = interrupt(run, again_after=1.0)

            output = run.output()
            assert returncode == 130, output
            assert seconds < 20, output
            assert "stop forced: sending SIGKILL to every process still running" in output
            assert wait_until(lambda: run.left_running() == [], timeout=5), run.left_running()
        finally:
            run.stop()
