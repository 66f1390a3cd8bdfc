"""SMTP submission on a message stream (docs/smtp.md, docs/streams.md): the
`X-Emailsvc-Stream` and `X-Emailsvc-Unsubscribe` headers do what a request's
`stream` and `"unsubscribe": true` do. The `smtp` process, a real Celery
worker and a real SMTP sink; what the sink received and the API shows."""

import email
import signal
from email import policy
from email.message import EmailMessage

import pytest
from django.test import Client

from emailsvc.keys import api_key_create
from tests.conftest import _worker_env, start_worker, stop, wait_for_status
from tests.console.test_metrics import TOKEN, scrape, value
from tests.emailsvc.smtp_ingress.conftest import start_ingress

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

BASE = "https://mail.example.com"


@pytest.fixture(scope="module")
def ingress(django_db_setup, django_db_blocker, tmp_path_factory):
    server = start_ingress(tmp_path_factory.mktemp("smtp-streams"), UNSUBSCRIBE_BASE_URL=BASE)
    yield server
    server.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, smtp_server, moto_server, tmp_path_factory):
    env = {**_worker_env(smtp_server, moto_server), "UNSUBSCRIBE_BASE_URL": BASE, "UNSUBSCRIBE_MAILTO": "leave@example.com"}
    started = start_worker(env, tmp_path_factory.mktemp("streams-worker") / "worker.log")
    yield started
    stop(started.process)


def mime(run: str, *, to: str = "reader@example.org", **headers: str) -> bytes:
    message = EmailMessage()
    message["From"] = "news@example.com"
    message["To"] = to
    message["Subject"] = f"Digest {run}"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(f"Body of {run}.\n")
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def data(ingress, key: str, recipients: list[str], content: bytes) -> tuple[int, str]:
    with ingress.client(key) as client:
        code, text = client.mail("news@example.com")
        assert code == 250, text
        for recipient in recipients:
            assert client.rcpt(recipient)[0] == 250
        code, text = client.data(content)
    return code, text.decode()


def received(smtp_server, run: str) -> email.message.EmailMessage:
    (arrived,) = smtp_server.wait_for(f"Body of {run}.")
    message = email.message_from_bytes(arrived.data, policy=policy.default)
    message.raw = arrived.data
    return message


def accepted_over_smtp(client: Client, stream: str) -> float:
    """emailsvc_emails_accepted_total of SMTP submissions on `stream` (the smtp
    process counts in the metrics directory this process's /metrics adds up)."""
    return value(scrape(client), "emailsvc_emails_accepted_total", priority="low", endpoint="smtp", stream=stream)


def test_a_broadcast_submission_carries_the_services_one_click_headers_only(
    ingress, worker, smtp_server, key, api, settings
):
    settings.METRICS_TOKEN, settings.METRICS_PUBLIC = TOKEN, False
    counted = accepted_over_smtp(Client(), "broadcast")
    run = "broadcast-smtp"
    content = mime(
        run, X_Emailsvc_Stream="broadcast", List_Unsubscribe="<mailto:old@example.com>", X_SES_Configuration_Set="elsewhere"
    )
    code, reply = data(ingress, key, ["reader@example.org"], content)
    assert code == 250, reply
    assert accepted_over_smtp(Client(), "broadcast") == counted + 1
    email_id = reply.split(" as ", 1)[1].split()[0]

    message = received(smtp_server, run)
    assert len(message.get_all("List-Unsubscribe")) == 1, message.get_all("List-Unsubscribe")
    links = [link.strip().strip("<>") for link in message["List-Unsubscribe"].split(",")]
    assert any(link.startswith(f"{BASE}/u/") for link in links), links
    assert "mailto:old@example.com" not in links  # the submitter's own is replaced
    assert any(link.startswith("mailto:leave@example.com?subject=") for link in links), links
    assert b",\r\n <mailto:leave@example.com" in message.raw  # folded between its links
    assert all(len(line) <= 998 for line in message.raw.split(b"\r\n"))
    assert message["X-SES-Configuration-Set"] is None  # the service names the set: its events reach it
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["X-Emailsvc-Stream"] is None

    wait_for_status(email_id)
    detail = api.get(f"/api/v1/emails/{email_id}").json()
    assert (detail["stream"], detail["priority"], detail["source"]) == ("broadcast", "low", "smtp"), detail


def test_a_transactional_submission_is_sent_as_written_unless_it_asks_for_unsubscribe(ingress, worker, smtp_server, key):
    plain = "transactional-smtp"
    assert data(ingress, key, ["reader@example.org"], mime(plain, List_Unsubscribe="<mailto:own@example.com>"))[0] == 250
    message = received(smtp_server, plain)
    assert message.get_all("List-Unsubscribe") == ["<mailto:own@example.com>"]  # the submitter's, untouched
    assert message["List-Unsubscribe-Post"] is None

    asked = "transactional-unsubscribe-smtp"
    assert data(ingress, key, ["reader@example.org"], mime(asked, X_Emailsvc_Unsubscribe="true"))[0] == 250
    message = received(smtp_server, asked)
    assert message["List-Unsubscribe"].startswith(f"<{BASE}/u/") and message["X-Emailsvc-Unsubscribe"] is None
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


@pytest.mark.parametrize(
    "headers, recipients, expected",
    [
        ({"X_Emailsvc_Stream": "no-such-stream"}, 1, "550 5.6.0 [stream_not_found]"),
        ({"X_Emailsvc_Stream": "broadcast"}, 2, "550 5.5.3 [unsubscribe_needs_one_recipient]"),
        ({"X_Emailsvc_Unsubscribe": "yes"}, 1, "550 5.6.0 [invalid_field]"),
    ],
)
def test_a_stream_the_api_would_refuse_is_refused_at_data(ingress, key, headers, recipients, expected):
    to = ["reader@example.org", "other@example.org"][:recipients]
    code, reply = data(ingress, key, to, mime("refused", to=", ".join(to), **headers))
    code_expected, enhanced, error = expected.split()
    assert (str(code), reply.split()[0], reply.split()[-1]) == (code_expected, enhanced, error), reply


def test_a_key_limited_to_broadcast_submits_there_and_not_on_the_transactional_stream(ingress, worker, smtp_server):
    newsletters = api_key_create(name="newsletters", permission="sending", streams=["broadcast"])[1]
    code, reply = data(ingress, newsletters, ["reader@example.org"], mime("limited-key", X_Emailsvc_Stream="broadcast"))
    assert code == 250, reply
    assert received(smtp_server, "limited-key")["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    code, reply = data(ingress, newsletters, ["reader@example.org"], mime("limited-key-refused"))
    assert (code, reply.split()[0], reply.split()[-1]) == (550, "5.7.1", "[key_stream_not_allowed]"), reply
