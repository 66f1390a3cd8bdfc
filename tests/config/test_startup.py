"""config/startup.py: the lines `make run` adds to its output saying how long it took."""

import http.server
import io
import threading
import time

import pytest

from config import startup
from config.startup import StartupClock, make_started_at


@pytest.fixture
def readyz():
    """A web server whose /readyz answers 200."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_make_started_at_takes_a_plausible_moment_only():
    assert make_started_at({"MAKE_STARTED_AT": str(startup.PROCESS_STARTED - 4.5)}) == startup.PROCESS_STARTED - 4.5
    assert make_started_at({}) is None
    assert make_started_at({"MAKE_STARTED_AT": "soon"}) is None
    assert make_started_at({"MAKE_STARTED_AT": str(startup.PROCESS_STARTED - 7200)}) is None  # a stale export
    assert make_started_at({"MAKE_STARTED_AT": str(startup.PROCESS_STARTED + 60)}) is None


def test_ready_is_said_once_web_and_worker_answer_then_the_first_applied_events(readyz):
    out = io.StringIO()
    clock = StartupClock(stream=out, web_url=readyz, started_at=startup.PROCESS_STARTED - 3.0)
    clock.watch(timeout=30)
    clock.write("12:00:00 web.1    | Booting worker")  # a line arrives in pieces, as print writes it
    clock.write("\n")
    time.sleep(0.5)
    assert "emailsvc: ready" not in out.getvalue()  # the web answers, no worker yet

    clock.write("12:00:01 worker.1 | [info] celery@host ready.\n")
    deadline = time.monotonic() + 10
    while "emailsvc: ready" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    clock.write("12:00:09 worker.1 | [info] drain received=2 applied=2 duplicates=0\n")
    clock.write("12:00:19 worker.1 | [info] drain received=1 applied=1 duplicates=0\n")

    lines = out.getvalue().splitlines()
    assert lines[0] == "12:00:00 web.1    | Booting worker"
    [ready] = [line for line in lines if line.startswith("emailsvc: ready")]
    assert "s after `make run` started (the API answers /readyz and a worker is consuming;" in ready
    assert "s of it before the service started: virtualenv and installs)" in ready
    assert float(ready.split()[2]) >= 3.0
    assert len([line for line in lines if line.startswith("emailsvc: first SES events applied")]) == 1
