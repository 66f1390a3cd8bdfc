"""An idle service is quiet: `make run` (python -m config.devservices run — web,
worker, beat and Flower from the Procfile, sandbox provider) on the test
database writes at most 20 log lines a minute once started, while beat keeps
running its housekeeping; an email sent then is still logged by the worker."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from django.db import connections

from config.devservices import BASE_DIR, free_port

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

IDLE_SECONDS = 45
MAX_LINES_PER_MINUTE = 20


def _database_url() -> str:
    db = connections["default"].settings_dict
    if connections["default"].vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class MakeRun:
    """`make run` in its own process group; every line it prints, with when it came."""

    def __init__(self, tmp_path: Path) -> None:
        env = {
            name: value
            for name, value in os.environ.items()
            # Its own Redis, moto and settings, as on a fresh checkout.
            if name not in {"REDIS_URL", "CELERY_BROKER_URL", "AWS_ENDPOINT_URL", "DJANGO_SETTINGS_MODULE",
                            "TESTS_DB_NAME", "EMAIL_PROVIDER", "PROMETHEUS_MULTIPROC_DIR"}
        }
        self.web_port = free_port()
        env.update(
            DATABASE_URL=_database_url(),
            WEB_PORT=str(self.web_port),
            FLOWER_PORT=str(free_port()),
            CELERY_BEAT_SCHEDULE_FILE=str(tmp_path / "celerybeat-schedule"),
            PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
        )
        self.lines: list[tuple[float, str]] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "config.devservices", "run"], cwd=BASE_DIR, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def since(self, started: float, until: float | None = None) -> list[str]:
        return [line for at, line in self.lines if at >= started and (until is None or at < until)]

    def wait_for(self, pattern: str, *, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"make run never printed {pattern!r}:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._reader.join(timeout=5)


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
