"""SMTP submission when things break: 250 only after commit. The `smtp`
process reaches PostgreSQL through a TCP proxy that is cut (a real outage:
451, never 250), and is SIGKILLed while clients send (nothing lost, nothing
sent twice, counted at the SMTP sink)."""

import signal
import smtplib
import threading
import time
import uuid
from email.message import EmailMessage

import pytest
from django.db import connection, connections

from emailsvc.keys import api_key_create
from emailsvc.models import Message
from tests.conftest import PENDING, wait_until
from tests.emailsvc.smtp_ingress.conftest import start_ingress
from tests.faultproxy import TcpFaultProxy

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="cuts the connection to PostgreSQL (the test database is SQLite)"
)


@pytest.fixture(scope="module")
def database_proxy(django_db_setup):
    if connection.vendor != "postgresql":
        yield None
        return
    database = connections["default"].settings_dict
    proxy = TcpFaultProxy(database["HOST"] or "127.0.0.1", int(database["PORT"] or 5432)).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def private_ingress(django_db_setup, django_db_blocker, database_proxy, tmp_path_factory):
    """An `smtp` process of this module's own, on PostgreSQL through the proxy."""
    overrides = {}
    if database_proxy is not None:
        database = connections["default"].settings_dict
        overrides["DATABASE_URL"] = f"postgres://{database['USER']}@127.0.0.1:{database_proxy.port}/{database['NAME']}"
    server = start_ingress(tmp_path_factory.mktemp("smtp-faults"), **overrides)
    yield server
    server.kill()


@pytest.fixture
def key(transactional_db) -> str:
    return api_key_create(name="smtp faults", permission="sending")[1]


def mime(run: str, number: int) -> bytes:
    message = EmailMessage()
    message["From"] = "app@example.com"
    message["To"] = "reader@example.org"
    message["Subject"] = f"{run} #{number}"
    message["Message-ID"] = f"<{run}-{number:04d}@app.example.com>"
    message["Date"] = "Mon, 07 Dec 2026 10:00:00 +0000"
    message.set_content(f"Body {run}-{number:04d}.\n")
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


@postgres_only
def test_database_outage_is_answered_451_and_the_retry_is_stored(private_ingress, database_proxy, key):
    run = uuid.uuid4().hex[:12]
    with private_ingress.client(key) as client:
        database_proxy.down()
        try:
            client.mail("app@example.com")
            client.rcpt("reader@example.org")
            code, text = client.data(mime(run, 1))
            assert (code, text[:5]) == (451, b"4.3.0"), text
            with private_ingress.client() as other:  # no key can be checked either: try later
                assert other.docmd("AUTH", "PLAIN AGFwaWtleQBlc194X3k=")[0] == 454
        finally:
            database_proxy.up()
        assert not Message.objects.filter(subject=f"{run} #1").exists()
        client.rset()
        client.mail("app@example.com")
        client.rcpt("reader@example.org")
        code, text = client.data(mime(run, 1))  # what the client does after a 451
    assert code == 250, text
    assert Message.objects.filter(subject=f"{run} #1", source="smtp").count() == 1


def test_sigkill_of_the_smtp_process_mid_session_loses_and_duplicates_nothing(
    private_ingress, celery_worker, smtp_server, key
):
    run, count = uuid.uuid4().hex[:12], 120
    accepted: list[int] = []
    failures: list[str] = []

    def client_loop() -> None:
        """A client as any MTA or library behaves: no 250, send the message again."""
        client = None
        number = 0
        deadline = time.monotonic() + 120
        while number < count and time.monotonic() < deadline:
            try:
                if client is None:
                    client = private_ingress.client(key)
                client.mail("app@example.com")
                client.rcpt("reader@example.org")
                code, text = client.data(mime(run, number))
                if code == 250:
                    accepted.append(number)
                    number += 1
                    continue
                failures.append(f"{code} {text!r}")
            except (smtplib.SMTPException, OSError) as error:
                failures.append(repr(error))
                client = None
                time.sleep(0.05)  # the process is restarting
        if client is not None:
            client.quit()

    thread = threading.Thread(target=client_loop)
    thread.start()
    assert wait_until(lambda: len(accepted) >= count // 3, timeout=60)
    private_ingress.kill(signal.SIGKILL)
    private_ingress.start()
    thread.join(timeout=150)
    assert len(accepted) == count, (failures[-5:], private_ingress.log()[-3000:])
    assert failures, "the kill did not cut a session"

    bodies = [f"Body {run}-{number:04d}." for number in range(count)]
    wait_until(lambda: all(smtp_server.matching(body) for body in bodies), timeout=60)
    copies = {body: len(smtp_server.matching(body)) for body in bodies}
    assert set(copies.values()) == {1}, {body: n for body, n in copies.items() if n != 1}
    assert Message.objects.filter(subject__startswith=f"{run} #").count() == count
    assert wait_until(lambda: not Message.objects.filter(subject__startswith=f"{run} #", status__in=PENDING).exists())
