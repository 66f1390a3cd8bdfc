"""Fixtures of the fault tests: a private copy of the service's processes per test
module (tests/stack.py) with its own SMTP server, SES fault proxy and helpers."""

import uuid

import pytest
from django.db import connections

from emailsvc.keys import api_key_create
from tests.sesproxy import SesFaultProxy
from tests.stack import SmtpServer, Stack

# Every stack: no rate limit unless a test asks for one, short retries, and a
# sweeper / scheduled release that run every second (when a worker runs beat).
FAST = {
    "SEND_RATE_PER_SECOND": "0",
    "DELIVERY_RETRY_BASE_SECONDS": "0.2",
    "DELIVERY_RETRY_MAX_SECONDS": "1",
    "SWEEPER_INTERVAL_SECONDS": "1",
    "SWEEP_QUEUED_AFTER_SECONDS": "1",
    "SWEEP_SENDING_AFTER_SECONDS": "3",
    "SCHEDULED_RELEASE_INTERVAL_SECONDS": "1",
    "PROVIDER_PROBE_INTERVAL_SECONDS": "1",
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def send(stack: Stack, key: str, **fields) -> dict:
    body = {"to": "someone@example.org", "subject": "Fault test", "text": "Hello.", **fields}
    status, answer = stack.post("/api/v1/emails", body, key)
    assert status == 202, answer
    return answer


def cancel(stack: Stack, key: str, email_id: str):
    return stack.post(f"/api/v1/emails/{email_id}/cancel", None, key)


# --- fixtures --------------------------------------------------------------------


def _test_db_name() -> str:
    return str(connections["default"].settings_dict["NAME"])


@pytest.fixture
def key(transactional_db) -> str:
    """A committed API key that may send (the web process reads it from the database)."""
    return api_key_create(name="delivery faults", permission="sending")[1]


@pytest.fixture(scope="module")
def mail():
    """The private SMTP server the `smtp` stack delivers to."""
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ses_proxy(moto_server):
    proxy = SesFaultProxy(moto_server.url)
    proxy.start()
    yield proxy
    proxy.stop()


def _module_stack(tmp_path_factory, name: str, env: dict[str, str]):
    stack = Stack(directory=tmp_path_factory.mktemp(f"{name}-stack"), db_name=_test_db_name(), env=env, name=name)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def _ses_stack(django_db_setup, django_db_blocker, moto_server, ses_proxy, tmp_path_factory):
    env = {**FAST, "EMAIL_PROVIDER": "ses", "AWS_ENDPOINT_URL": moto_server.url, "AWS_ENDPOINT_URL_SESV2": ses_proxy.url}
    yield from _module_stack(tmp_path_factory, "ses", env)


@pytest.fixture(scope="module")
def _smtp_stack(django_db_setup, django_db_blocker, mail, moto_server, tmp_path_factory):
    env = {**FAST, "EMAIL_PROVIDER": "smtp", "SMTP_HOST": mail.host, "SMTP_PORT": str(mail.port), "AWS_ENDPOINT_URL": moto_server.url}
    yield from _module_stack(tmp_path_factory, "smtp", env)


@pytest.fixture(scope="module")
def _console_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    yield from _module_stack(tmp_path_factory, "console", {**FAST, "EMAIL_PROVIDER": "console"})


def _fresh(stack: Stack):
    """No worker and no task left over from another test, before and after the test
    (workers stop before the transactional teardown empties the tables)."""
    stack.kill_workers()
    stack.drop_tasks()
    try:
        yield stack
    finally:
        stack.kill_workers()
        stack.start_redis()  # a test that failed while Redis was away
        stack.drop_tasks()


@pytest.fixture
def ses_stack(_ses_stack, ses_proxy, key):
    ses_proxy.clear()
    yield from _fresh(_ses_stack)
    ses_proxy.clear()


@pytest.fixture
def smtp_stack(_smtp_stack, mail, key):
    mail.reset()
    yield from _fresh(_smtp_stack)
    mail.reset()


@pytest.fixture
def console_stack(_console_stack, key):
    yield from _fresh(_console_stack)


def moto_copies(moto_server, needle: str) -> int:
    return sum(1 for message in moto_server.sent_raw_messages() if needle in message["raw_data"])



def batch_send(stack: Stack, key: str, run: str, count: int, **fields) -> list[str]:
    """Accept `count` emails in one batch; their email ids (`<run>-000`, …, all of one length)."""
    emails = [
        {"to": f"reader{i}@example.org", "subject": f"{run} #{i}", "text": "Hello.", "email_id": f"{run}-{i:03d}", **fields}
        for i in range(count)
    ]
    status, answer = stack.post("/api/v1/emails/batch", {"emails": emails}, key)
    assert status == 200 and len(answer["data"]) == count, answer
    return [email["email_id"] for email in emails]


def copies(mail: SmtpServer, email_ids: list[str]) -> dict[str, int]:
    """Messages the SMTP server took per email id (ids of one length: no prefixes)."""
    return {email_id: len(mail.matching(email_id)) for email_id in email_ids}
