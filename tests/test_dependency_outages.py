"""The API while PostgreSQL or the broker is unreachable (SPEC §4, §9).

Database down: every call under /api/ and /webhooks/ answers 503
`service_unavailable` with Retry-After — not a 500 per request — and the web
process logs one line when the outage starts and one when the database answers
again, never a traceback per request; the first request after it returns
succeeds (the broken connection was discarded). Broker down: emails are still
accepted (202, stored; the sweeper publishes their tasks later), quickly, with
one log line; each is delivered once when the broker is back.

Real servers only: a private stack (tests/stack.py) whose processes reach the
test database through a TCP proxy (tests/faultproxy.py) that is cut and
restored, its own Redis stopped and started, and an aiosmtpd server counting
what arrives.
"""

import json
import logging
import time
import uuid
from urllib.parse import quote

import pytest
from django.db import close_old_connections, connection, connections
from django.test import Client

from emailsvc.keys import api_key_create
from emailsvc.models import Message, Status
from tests.conftest import wait_until
from tests.faultproxy import TcpFaultProxy
from tests.invariants import histories_replay
from tests.stack import SmtpServer, Stack

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="cuts the connection to PostgreSQL (the test database is SQLite)"
)


@pytest.fixture(autouse=True)
def status_histories_replay(transactional_db):
    """Whatever a test here broke on the way, at its end every recipient's
    status history replays to its status (tests/invariants.py)."""
    yield
    histories_replay()

FAST = {
    "SEND_RATE_PER_SECOND": "0",
    "DELIVERY_RETRY_BASE_SECONDS": "0.2",
    "DELIVERY_RETRY_MAX_SECONDS": "1",
    "SWEEPER_INTERVAL_SECONDS": "1",
    "SWEEP_QUEUED_AFTER_SECONDS": "1",
    "SCHEDULED_RELEASE_INTERVAL_SECONDS": "1",
}
DATABASE_DOWN = "the database is unavailable"
DATABASE_BACK = "the database is available again"
BROKER_DOWN = "the Celery broker is unavailable"
BROKER_BACK = "the Celery broker is available again"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def email(email_id: str) -> dict:
    return {"to": "someone@example.org", "subject": "Outage test", "text": f"Hello {email_id}.", "email_id": email_id}


def log_records(text: str) -> list[dict]:
    """The JSON lines of a log (gunicorn's own plain lines left out)."""
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def lines_with(records: list[dict], needle: str) -> list[dict]:
    return [record for record in records if needle in record.get("message", "")]


def tracebacks(text: str) -> list[str]:
    return [line for line in text.splitlines() if "Traceback" in line or '"exception"' in line]


def _database_target() -> tuple[str, int]:
    settings_dict = connections["default"].settings_dict
    return settings_dict["HOST"] or "127.0.0.1", int(settings_dict["PORT"] or 5432)


def _database_url_through(proxy: TcpFaultProxy) -> str:
    settings_dict = connections["default"].settings_dict
    credentials = quote(settings_dict["USER"] or "", safe="")
    if settings_dict["PASSWORD"]:
        credentials += ":" + quote(settings_dict["PASSWORD"], safe="")
    return f"postgres://{credentials}@{proxy.host}:{proxy.port}/{settings_dict['NAME']}"


# --- fixtures --------------------------------------------------------------------


@pytest.fixture(scope="module")
def mail():
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def database_proxy():
    if connection.vendor != "postgresql":
        pytest.skip("cuts the connection to PostgreSQL (the test database is SQLite)")
    proxy = TcpFaultProxy(*_database_target()).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def _stack(django_db_setup, django_db_blocker, database_proxy, mail, moto_server, tmp_path_factory):
    """web, Redis and (per test) workers whose every database connection goes through the proxy."""
    stack = Stack(
        directory=tmp_path_factory.mktemp("outage-stack"),
        db_name=str(connections["default"].settings_dict["NAME"]),
        env={
            **FAST, "EMAIL_PROVIDER": "smtp", "SMTP_HOST": mail.host, "SMTP_PORT": str(mail.port),
            # Lifted suppressions go to SES's account-level list (moto's answers 404: it has none).
            "SES_SUPPRESSION_SYNC": "true", "AWS_ENDPOINT_URL": moto_server.url,
        },
        name="outage",
        database_url=_database_url_through(database_proxy),
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def key(transactional_db) -> str:
    return api_key_create(name="outages", permission="sending")[1]


@pytest.fixture
def stack(_stack, database_proxy, mail, key):
    """The stack with its database and Redis up and no worker or task left over, before and after."""
    mail.reset()
    _stack.kill_workers()
    _stack.drop_tasks()
    try:
        yield _stack
    finally:
        database_proxy.up()
        _stack.start_redis()
        _stack.kill_workers()
        _stack.drop_tasks()
        mail.reset()


@pytest.fixture
def database_through_proxy(transactional_db):
    """This process's own database connection, through a TcpFaultProxy (restored after)."""
    database = connections["default"]
    address = database.settings_dict["HOST"], database.settings_dict["PORT"]
    proxy = TcpFaultProxy(*_database_target()).start()
    database.close()
    database.settings_dict["HOST"], database.settings_dict["PORT"] = proxy.host, str(proxy.port)
    try:
        database.ensure_connection()
        yield proxy
    finally:
        database.close()
        database.settings_dict["HOST"], database.settings_dict["PORT"] = address
        proxy.stop()


class WebLog:
    """The web process's log lines written since this was made."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.start = len(stack.web_log())

    def text(self) -> str:
        return self.stack.web_log()[self.start:]

    def records(self) -> list[dict]:
        return log_records(self.text())


# --- the database ----------------------------------------------------------------------


@postgres_only
def test_database_outage_answers_503_with_retry_after_logs_once_and_the_next_post_is_accepted(
    stack, database_proxy, mail, key
):
    before = unique("before-outage")
    assert stack.post("/api/v1/emails", email(before), key)[0] == 202  # the web process holds an open connection now
    log = WebLog(stack)

    database_proxy.down()
    calls = [
        ("POST", "/api/v1/emails", email(unique("during-outage"))),
        ("GET", "/api/v1/emails", None),
        ("GET", f"/api/v1/emails/{before}", None),
    ]
    answers = [stack.exchange(method, path, body, key=key, timeout=30) for _ in range(7) for method, path, body in calls]
    ready_status, _, ready = stack.exchange("GET", "/readyz", timeout=30)

    for status, headers, body in answers:
        assert status == 503, (status, body, stack.logs())
        assert body["error"] == "service_unavailable"
        assert "database" in body["detail"] and "retry" in body["detail"]
        assert 1 <= int(headers["Retry-After"]) <= 30
    assert (ready_status, ready["checks"]["database"]) == (503, "error: OperationalError")
    records = log.records()
    assert len(lines_with(records, DATABASE_DOWN)) == 1, log.text()
    (down,) = lines_with(records, DATABASE_DOWN)
    assert down["level"] == "warning" and "Retry-After" in down["message"]
    assert tracebacks(log.text()) == [], log.text()
    assert not [r for r in records if r["logger"] == "django.request" and "/api/" in r["message"]], log.text()

    database_proxy.up()
    after = unique("after-outage")
    status, body = stack.post("/api/v1/emails", email(after), key)
    assert status == 202, (body, stack.logs())
    back = lines_with(log.records(), DATABASE_BACK)
    assert len(back) == 1 and "21 failed calls" in back[0]["message"], log.text()

    stack.start_worker(beat=True)
    for email_id in (before, after):
        assert len(mail.wait_for(email_id, timeout=60)) == 1, stack.logs()
    assert not Message.objects.filter(email_id__startswith="during-outage").exists()
    time.sleep(2)  # two sweeper runs: nothing is sent twice
    assert [len(mail.matching(email_id)) for email_id in (before, after)] == [1, 1]


@postgres_only
def test_a_connection_broken_mid_request_is_a_503_and_is_replaced_when_the_request_ends(key, database_through_proxy, caplog):
    """The connection breaks after its health check (as when PostgreSQL stops
    mid-request): 503, and Django's end-of-request cleanup discards it, so the
    first request once the database is back gets a new one and succeeds."""
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    database_through_proxy.down()
    with caplog.at_level(logging.INFO):
        broken = client.get("/api/v1/emails")
        database_through_proxy.up()
        # The test client leaves out Django's end-of-request cleanup; a server runs it after every request.
        close_old_connections()
        healed = client.get("/api/v1/emails")

    assert broken.status_code == 503, broken.content
    assert broken.json() == {"error": "service_unavailable", "detail": "The database is unavailable; retry in a few seconds."}
    assert broken["Retry-After"] == "5"
    assert healed.status_code == 200, healed.content
    down, back = [record.getMessage() for record in caplog.records if record.name == "core.outages"]
    assert down.startswith(f"{DATABASE_DOWN}: OperationalError: ") and "closed the connection" in down, down
    assert back.startswith(DATABASE_BACK) and back.endswith("(1 failed calls meanwhile)"), back
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@postgres_only
def test_sns_webhook_answers_503_while_the_database_is_unreachable(database_through_proxy, settings, caplog):
    """/webhooks/ses/ is a plain Django view (not DRF): the middleware answers for it.
    SNS retries a notification answered 5xx, so the event is not lost."""
    from tests.tracking.sesevents import ses_event, sns_envelope
    from tests.tracking.snssign import TOPIC_ARN, sns_sign, trust_test_certificate

    settings.SNS_ALLOWED_TOPIC_ARNS = [TOPIC_ARN]
    trust_test_certificate()
    event = ses_event("Delivery", message_id="ses-message-id", recipients=["jane@example.com"])
    notification = sns_sign(sns_envelope(event, topic_arn=TOPIC_ARN))

    database_through_proxy.down()
    with caplog.at_level(logging.INFO):
        responses = [Client().post("/webhooks/ses/", json.dumps(notification), content_type="text/plain") for _ in range(3)]

    for response in responses:
        assert response.status_code == 503, response.content
        assert response.json()["error"] == "service_unavailable"
        assert int(response["Retry-After"]) >= 1
    assert len([r for r in caplog.records if DATABASE_DOWN in r.getMessage()]) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_crash_under_the_api_is_logged_once_with_its_traceback(make_client, monkeypatch, caplog):
    """Not an outage: still a 500 with its traceback, but one line, not a second
    "Internal Server Error" for the JSON answer that replaced Django's page."""
    from emailsvc.api import emails as apis

    def broken_selector(*, email_id):
        raise RuntimeError("selector exploded")

    monkeypatch.setattr(apis, "message_get", broken_selector)
    client = make_client()
    client.raise_request_exception = False
    with caplog.at_level(logging.INFO):
        response = client.get("/api/v1/emails/some-id")

    assert response.status_code == 500
    logged = [record for record in caplog.records if record.name == "django.request"]
    assert len(logged) == 1 and logged[0].exc_info, [record.getMessage() for record in logged]


# --- the broker ----------------------------------------------------------------------------


@postgres_only
def test_broker_outage_accepts_emails_quickly_logs_once_and_the_sweeper_delivers_each_once(stack, mail, key):
    log = WebLog(stack)
    stack.stop_redis()
    accepted, seconds = [], []
    for _ in range(5):
        email_id = unique("broker-down")
        started = time.monotonic()
        status, body = stack.post("/api/v1/emails", email(email_id), key, timeout=30)
        seconds.append(round(time.monotonic() - started, 3))
        assert (status, body["status"]) == (202, "queued"), (body, stack.logs())
        accepted.append(email_id)
    print(f"POST /api/v1/emails with the broker down took {seconds} s")
    # kombu's publish retries (retry_policy: 2 retries, 0.1 s then 0.6 s apart) and nothing more.
    assert max(seconds) < 3, seconds
    records = log.records()
    assert len(lines_with(records, BROKER_DOWN)) == 1, log.text()
    assert tracebacks(log.text()) == [], log.text()
    assert Message.objects.filter(email_id__in=accepted, status=Status.QUEUED).count() == 5

    stack.start_redis()  # empty: none of their tasks exists
    stack.start_worker(beat=True)  # the sweeper publishes for due emails no task will take
    last = unique("broker-back")
    assert stack.post("/api/v1/emails", email(last), key)[0] == 202
    for email_id in [*accepted, last]:
        assert len(mail.wait_for(email_id, timeout=60)) == 1, stack.logs()
    assert len(lines_with(log.records(), BROKER_BACK)) == 1, log.text()
    time.sleep(3)  # three sweeper runs: nothing is sent twice
    assert [len(mail.matching(email_id)) for email_id in [*accepted, last]] == [1] * 6


def test_a_suppression_lifted_while_the_broker_is_down_is_lifted_and_waits_for_ses_in_the_database(stack):
    """Lifting publishes a task that takes the address off SES's list; with the
    broker down the lift still answers at once, and what SES must be told is kept
    for the periodic sync instead of being lost with the task."""
    from emailsvc.models import SesSuppressionLift, Suppression
    from emailsvc.suppressions.services import suppression_add

    full = api_key_create(name="outages full", permission="full")[1]
    suppression_add(email="lift-me@example.org", reason="hard_bounce")
    log = WebLog(stack)
    stack.stop_redis()

    status, _body = stack.request("DELETE", "/api/v1/suppressions/lift-me@example.org", key=full, timeout=30)

    assert status in (200, 204), (status, stack.logs())
    assert not Suppression.objects.filter(email="lift-me@example.org").exists()
    assert list(SesSuppressionLift.objects.values_list("email", flat=True)) == ["lift-me@example.org"]
    assert len(lines_with(log.records(), BROKER_DOWN)) == 1, log.text()
    assert tracebacks(log.text()) == [], log.text()


# --- the delivery engine while the database is away -----------------------------------


def test_database_outage_mid_chunk_stops_sends_and_the_recorder_records_them_when_it_returns(stack, database_proxy, mail, key):
    """PostgreSQL goes away while a worker sends a chunk. The send slots start no
    more sends once the journal cannot take an answer; the recorder keeps the
    chunk and records it as soon as the database answers again — no sweeper
    runs here — and what was not sent goes out afterwards: each email once,
    none left `sending`, one outage line in the worker's log and no traceback."""
    from tests.emailsvc.conftest import batch_send, copies
    from tests.invariants import sent_but_never_received, status_history_problems

    mail.data_delay = 0.05
    run = unique("db-down")
    email_ids = batch_send(stack, key, run, 80)
    worker = stack.start_worker(concurrency=1, env={"DELIVERY_SEND_CONCURRENCY": "4"})  # no beat: no sweeper
    assert wait_until(lambda: len(mail.matching(run)) >= 20, timeout=60), stack.logs()

    database_proxy.down()
    time.sleep(2)
    arrived_at_cut = len(mail.matching(run))
    time.sleep(13)
    assert len(mail.matching(run)) == arrived_at_cut, "sends went on while nothing could record them"
    assert arrived_at_cut < 80, "the chunk was sent before the cut: nothing was tested"
    database_proxy.up()
    back_at = time.monotonic()

    arrived = {email_id for email_id, n in copies(mail, email_ids).items() if n}
    assert wait_until(
        lambda: Message.objects.filter(email_id__in=arrived, status=Status.SENT, state="done").count() == len(arrived),
        timeout=30, interval=0.2,
    ), stack.logs()
    recorded_after = time.monotonic() - back_at
    assert wait_until(
        lambda: not Message.objects.filter(email_id__in=email_ids).exclude(state="done").exists(), timeout=60, interval=0.2
    ), stack.logs()
    print(f"\n{arrived_at_cut} of 80 sent before the cut; recorded {recorded_after:.1f}s after the database returned")
    assert recorded_after < 15
    assert set(copies(mail, email_ids).values()) == {1}
    problems = sent_but_never_received(mail.arrivals, email_ids=email_ids) + status_history_problems(email_ids=email_ids)
    assert not problems, problems
    log = worker.log()
    assert len(log_lines_with(log, DATABASE_DOWN)) == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def log_lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]
