"""Slow and stalled clients against the web process as the Procfile runs it
(config/gunicorn.py: gevent workers; config/bodies.py: bounded body reads).

A stalled upload (headers with Content-Length: 100000, a few body bytes, then
nothing) must cost the service a connection, not a worker: /healthz and the API
keep answering, and the server answers and closes the stalled connection within
WEB_READ_TIMEOUT. A body that arrives slowly but steadily is still accepted.
"""

import http.client
import os
import signal
import threading
import time
import urllib.request

import pytest
from django.db import connection

from emailsvc.keys import api_key_create
from emailsvc.models import Message
from tests.config.conftest import KEEPALIVE, READ_TIMEOUT, address, open_request, read_answer, stalled_upload
from tests.conftest import wait_until
from tests.stack import Stack

pytestmark = [pytest.mark.timing, pytest.mark.django_db(transaction=True)]


def _healthz_seconds(web) -> float:
    start = time.monotonic()
    with urllib.request.urlopen(f"{web.web_url}/healthz", timeout=30) as response:
        assert response.status == 200
    return time.monotonic() - start


@pytest.mark.parametrize("stalled", [30, 100])
def test_stalled_uploads_leave_healthz_and_sending_answering(web, stalled):
    _, key = api_key_create(name="slow", permission="full")
    connections = [stalled_upload(web) for _ in range(stalled)]
    try:
        time.sleep(0.5)  # every stalled upload is being read by now
        assert max(_healthz_seconds(web) for _ in range(5)) < 1
        start = time.monotonic()
        email = {"email_id": f"beside-{stalled}", "to": "jane@example.com", "subject": "Hi", "text": "Hi"}
        status, answer = web.post("/api/v1/emails", email, key, timeout=30)
        assert status == 202, answer
        assert time.monotonic() - start < 1
        assert Message.objects.filter(email_id=f"beside-{stalled}").exists()
    finally:
        for sock in connections:
            sock.close()


def test_stalled_uploads_are_answered_408_and_closed_within_the_read_timeout(web):
    connections = [stalled_upload(web) for _ in range(30)]
    answers = [read_answer(sock) for sock in connections]
    assert {answer.status for answer in answers} == {408}
    assert {answer.body["error"] for answer in answers} == {"request_timeout"}
    # read one after the other: the last waited for the first's timeout too
    assert max(answer.closed_after for answer in answers) < READ_TIMEOUT + 2
    assert _healthz_seconds(web) < 1


def test_stalled_request_headers_are_closed_within_the_keepalive_timeout(web):
    sock = open_request(web, "POST /api/v1/emails HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-", head_ends=False)
    answer = read_answer(sock)
    assert answer.status == 0  # nothing to answer: the request never arrived whole
    assert answer.closed_after < KEEPALIVE + 2


def test_a_slow_but_steady_upload_is_accepted(web):
    _, key = api_key_create(name="slow", permission="full")
    body = b'{"email_id": "slow-steady", "to": "jane@example.com", "subject": "Slow", "text": "' + b"x" * 80 + b'"}'
    sock = open_request(
        web,
        "POST /api/v1/emails HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}",
    )
    started = time.monotonic()
    step = len(body) // 4 + 1
    for offset in range(0, len(body), step):  # about twice the read timeout in all, never a whole one idle
        sock.sendall(body[offset:offset + step])
        time.sleep(READ_TIMEOUT * 0.6)
    assert time.monotonic() - started > READ_TIMEOUT * 2
    answer = read_answer(sock)
    assert answer.status == 202, answer
    assert Message.objects.get(email_id="slow-steady").text == "x" * 80


def _database_sessions() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return cursor.fetchone()[0]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="counts PostgreSQL sessions")
def test_database_connections_are_closed_when_their_clients_go(web):
    """Each client connection is served by a greenlet with its own database connection."""
    _, key = api_key_create(name="clients", permission="full")
    before = _database_sessions()
    host, port = address(web)
    served, leave = threading.Barrier(31), threading.Event()

    def client():
        keep_alive = http.client.HTTPConnection(host, port, timeout=30)
        for _ in range(2):
            keep_alive.request("GET", "/api/v1/emails?limit=1", headers={"Authorization": f"Bearer {key}"})
            assert keep_alive.getresponse().read()
        served.wait(timeout=30)
        leave.wait(timeout=30)
        keep_alive.close()

    clients = [threading.Thread(target=client) for _ in range(30)]
    for thread in clients:
        thread.start()
    served.wait(timeout=30)
    during = _database_sessions()
    leave.set()
    for thread in clients:
        thread.join()

    assert during > before
    assert wait_until(lambda: _database_sessions() <= before, timeout=10), _database_sessions()


def test_sigterm_finishes_requests_in_flight_and_stops_despite_stalled_uploads(django_db_setup, tmp_path):
    stack = Stack(
        directory=tmp_path / "stack", db_name=str(connection.settings_dict["NAME"]), name="sigterm",
        env={"EMAIL_PROVIDER": "console", "WEB_READ_TIMEOUT": str(READ_TIMEOUT)},
    ).start()
    try:
        _, key = api_key_create(name="sigterm", permission="full")
        stalled = [stalled_upload(stack) for _ in range(30)]
        body = b'{"email_id": "in-flight", "to": "jane@example.com", "subject": "Hi", "text": "Hi"}'
        in_flight = open_request(
            stack,
            "POST /api/v1/emails HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}",
            body[:10],
        )
        time.sleep(0.5)
        stopping = time.monotonic()
        os.kill(stack.web_process.pid, signal.SIGTERM)
        time.sleep(0.5)
        in_flight.sendall(body[10:])

        assert read_answer(in_flight).status == 202
        assert stack.web_process.wait(timeout=READ_TIMEOUT + 10) == 0
        assert time.monotonic() - stopping < READ_TIMEOUT + 5
        for sock in stalled:
            sock.close()
    finally:
        stack.stop()
