"""Logs are JSON lines from web, worker and beat alike, with request and task ids,
and never show a recipient address (`j***@example.com`) — read from the output of
real processes, not only from the formatter."""

import io
import json
import logging
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import structlog
from django.conf import settings as django_settings
from django.db import connections

from config.devservices import free_port, start_redis, stop
from core import logs
from emailsvc.keys import api_key_create
from tests.conftest import BASE_DIR, wait_for_status, wait_until
from tests.stack import Stack

ADDRESS = "jane@example.com"
REDACTED = "j***@example.com"


def json_lines(text: str) -> list[dict]:
    """Every line that opens a JSON object, parsed (one that does not parse fails the test)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def assert_structured(line: dict) -> None:
    assert {"timestamp", "level", "logger", "message"} <= line.keys(), line
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"]), line


def _process_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        TESTS_DB_NAME=str(connections["default"].settings_dict["NAME"]),
        REDIS_URL=django_settings.REDIS_URL,
        CELERY_BROKER_URL=django_settings.CELERY_BROKER_URL,
        PYTHONUNBUFFERED="1",
        LOG_FORMAT="json",
    )
    env.update(overrides)
    return env


# --- worker ------------------------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_worker_log_lines_are_json_and_never_show_the_address(tmp_path_factory):
    key = api_key_create(name="logging", permission="sending")[1]
    stack = Stack(
        directory=tmp_path_factory.mktemp("logging-stack"),
        db_name=str(connections["default"].settings_dict["NAME"]),
        env={"EMAIL_PROVIDER": "console", "LOG_FORMAT": "json"},
        name="logging",
    )
    stack.start()
    try:
        # At DEBUG, Django logs every SQL statement with its parameters (the
        # recipients' addresses among them) and Celery logs its own details.
        worker = stack.start_worker(env={"DEBUG": "true", "LOG_LEVEL": "debug"})
        status, body = stack.post(
            "/api/v1/emails", {"to": [f"Jane Doe <{ADDRESS}>"], "subject": "Hello", "text": "Hi"}, key=key
        )
        assert status == 202, body
        assert wait_for_status(body["email_id"]).status == "sent", stack.logs()
        # Two in one chunk: sent from the worker's send slots (threads), not the task's own thread.
        status, batch = stack.post(
            "/api/v1/emails/batch",
            {"emails": [{"to": [f"Jane Doe <{ADDRESS}>"], "subject": "Hello", "text": "Hi"}] * 2}, key=key,
        )
        assert status == 200 and len(batch["data"]) == 2, batch
        for item in batch["data"]:
            assert wait_for_status(item["email_id"]).status == "sent", stack.logs()
        # The task's own lines, then Celery's, are written once it returns.
        assert wait_until(lambda: "emailsvc.deliver" in worker.log() and "succeeded" in worker.log(), timeout=20)
        log = worker.log()
    finally:
        stack.stop()

    assert ADDRESS not in log.lower(), [line for line in log.splitlines() if ADDRESS in line.lower()][:3]
    lines = json_lines(log)
    for line in lines:
        assert_structured(line)
    assert any(REDACTED in json.dumps(line) for line in lines), "no line names the recipient (redacted)"
    # Lines written inside a task carry its id and name, the library's (SQL) included.
    deliver = [line for line in lines if line.get("task_name") == "emailsvc.deliver"]
    assert deliver and all(line["task_id"] for line in deliver)
    assert {"django.db.backends", "emailsvc.delivery.engine"} <= {line["logger"] for line in deliver}
    # The send slots' lines too (the console provider logs each send).
    sends = [line for line in lines if line["logger"] == "emailsvc.providers.console"]
    assert len(sends) == 3 and all(line.get("task_id") and line.get("task_name") == "emailsvc.deliver" for line in sends)
    assert any(line["logger"] == "celery.app.trace" and "succeeded" in line["message"] for line in lines)
    # What is not JSON is Celery's start-up banner, printed (not logged) before the worker runs.
    ready = next(i for i, line in enumerate(log.splitlines()) if line.startswith("{") and "ready." in line)
    assert all(line.startswith("{") or not line.strip() for line in log.splitlines()[ready:])


# --- beat --------------------------------------------------------------------------------


def test_beat_log_lines_are_json(tmp_path):
    # beat's own broker: the tasks it publishes reach no worker of the test session.
    redis_process, redis_url = start_redis(directory=str(tmp_path))
    log_path = tmp_path / "beat.log"
    # At DEBUG: beat's INFO "Sending due task" lines of housekeeping are dropped, its DEBUG "sent" lines are not.
    env = _process_env(
        REDIS_URL=redis_url, CELERY_BROKER_URL=redis_url, SCHEDULED_RELEASE_INTERVAL_SECONDS="1", LOG_LEVEL="debug"
    )
    with open(log_path, "w") as log:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO",
             "--schedule", str(tmp_path / "beat-schedule")],
            cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        assert wait_until(lambda: "emailsvc.release_scheduled sent" in log_path.read_text(), timeout=60), (
            log_path.read_text()
        )
    finally:
        stop(beat)
        stop(redis_process)

    lines = json_lines(log_path.read_text())
    for line in lines:
        assert_structured(line)
    loggers = {line["logger"] for line in lines}
    assert {"celery.beat"} <= loggers, loggers
    assert any("emailsvc.release_scheduled sent" in line["message"] for line in lines)
    assert not any("Sending due task" in line["message"] for line in lines)


# --- web ---------------------------------------------------------------------------------


def _get(url: str, request_id: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"X-Request-ID": request_id} if request_id is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def test_web_lines_are_json_with_the_request_id_echoed(tmp_path):
    """gunicorn as the Procfile runs it (-c config/gunicorn.py): its own lines and the app's."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "web.log"
    with open(log_path, "w") as log:
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi", "-c", "config/gunicorn.py", "--no-control-socket",
             "--bind", f"127.0.0.1:{port}", "--workers", "1"],
            cwd=BASE_DIR, env=_process_env(ALLOWED_HOSTS="127.0.0.1"), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        def answers() -> bool:
            if web.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{log_path.read_text()}")
            try:
                return _get(f"{url}/healthz")[0] == 200
            except OSError:
                return False

        assert wait_until(answers, timeout=60, interval=0.1), log_path.read_text()

        given = _get(f"{url}/healthz", "trace-4bf92f3577b34da6")
        made = _get(f"{url}/healthz")
        refused = _get(f"{url}/healthz", f"<{ADDRESS}>")  # not an id: replaced by a new one
        lookup = _get(f"{url}/api/v1/suppressions/{ADDRESS}", "lookup-1")  # no key: 401
    finally:
        stop(web)  # SIGTERM: gunicorn logs its shutdown too

    assert given[1]["X-Request-ID"] == "trace-4bf92f3577b34da6"
    assert re.fullmatch(r"[0-9a-f]{32}", made[1]["X-Request-ID"])
    assert re.fullmatch(r"[0-9a-f]{32}", refused[1]["X-Request-ID"])
    assert lookup[0] == 401 and lookup[1]["X-Request-ID"] == "lookup-1"

    text = log_path.read_text()
    assert ADDRESS not in text, text
    assert all(line.startswith("{") for line in text.splitlines() if line.strip()), text
    lines = json_lines(text)
    for line in lines:
        assert_structured(line)
    assert any(line["logger"] == "gunicorn.error" and "Booting worker" in line["message"] for line in lines)
    requests = {line["request_id"]: line for line in lines if line["logger"] == "emailsvc.request"}
    assert requests["trace-4bf92f3577b34da6"]["path"] == "/healthz"
    assert requests["trace-4bf92f3577b34da6"]["status"] == 200
    assert requests["lookup-1"]["path"] == f"/api/v1/suppressions/{REDACTED}"
    assert requests["lookup-1"]["status"] == 401
    assert isinstance(requests["lookup-1"]["duration_ms"], float)
    # Other loggers' lines written during the request carry its id too.
    assert any(
        line["logger"] == "django.request" and line.get("request_id") == "lookup-1" and REDACTED in line["message"]
        for line in lines
    )


# --- the formatter -----------------------------------------------------------------------


@pytest.fixture
def captured():
    """A logger whose lines go through the service's JSON formatter into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("json"))
    logger = logging.getLogger("tests.logging.captured")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_every_field_is_redacted_and_email_id_is_lifted_out(captured):
    logger, stream = captured
    try:
        raise ValueError(f"550 5.1.1 <{ADDRESS}>: no such user")
    except ValueError:
        logger.warning("delivery failed email_id=%s: refused %s", "5626e90f-aa", ADDRESS, exc_info=True)
    with structlog.contextvars.bound_contextvars(task_id="t-1", task_name="emailsvc.deliver"):
        structlog.get_logger("tests.logging.captured").info(
            "refused", recipients=[ADDRESS, {"cc": "Bob.Smith@Example.org"}], reply=ValueError(ADDRESS)
        )

    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == f"delivery failed email_id=5626e90f-aa: refused {REDACTED}"
    assert first["email_id"] == "5626e90f-aa"
    assert first["level"] == "warning" and first["logger"] == "tests.logging.captured"
    assert "ValueError: 550 5.1.1 <j***@example.com>: no such user" in first["exception"]
    assert second["recipients"] == [REDACTED, {"cc": "B***@Example.org"}]
    assert second["reply"] == REDACTED
    assert (second["task_id"], second["task_name"]) == ("t-1", "emailsvc.deliver")
    assert ADDRESS not in stream.getvalue()


def test_text_format_is_for_people_and_redacted_too():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("text"))
    record = logging.LogRecord("emailsvc.x", logging.INFO, __file__, 1, "refused %s email_id=%s", (ADDRESS, "e-1"), None)

    handler.emit(record)

    line = stream.getvalue()
    assert REDACTED in line and ADDRESS not in line
    assert "[info" in line and "email_id=e-1" in line and not line.startswith("{")
