"""One-click unsubscribe end to end (RFC 8058; docs/streams.md): a web process,
a Celery worker and an SMTP server of this module's own; the headers are read in
the bytes the SMTP server received, the link is used over HTTP as a mailbox
provider would, and its webhook reaches a real receiver."""

import email
import email.policy
import re
import urllib.error
import urllib.request

import pytest
from standardwebhooks import Webhook

from emailsvc.keys import api_key_create
from emailsvc.models import Message, Suppression
from emailsvc.streams.models import StreamSuppression
from tests.conftest import poll, wait_until
from tests.emailsvc.conftest import FAST, _test_db_name, unique
from tests.stack import SmtpServer, Stack
from tests.webhook_receiver import local_receiver

ENV = {
    **FAST, "EMAIL_PROVIDER": "smtp", "DEBUG": "true", "WEBHOOK_ALLOW_HTTP": "true",
    "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true", "WEBHOOK_DISPATCH_INTERVAL_SECONDS": "1",
    "UNSUBSCRIBE_MAILTO": "unsubscribe@example.com", "METRICS_PUBLIC": "true",
}


@pytest.fixture(scope="module")
def mail():
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, mail, tmp_path_factory):
    env = {**ENV, "SMTP_HOST": mail.host, "SMTP_PORT": str(mail.port), "UNSUBSCRIBE_BASE_URL": "http://127.0.0.1"}
    stack = Stack(directory=tmp_path_factory.mktemp("streams-stack"), db_name=_test_db_name(), env=env, name="streams")
    stack.start()
    try:
        # The worker builds the links: they point at this stack's web process.
        stack.start_worker(env={"UNSUBSCRIBE_BASE_URL": stack.web_url}, beat=True)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def key(transactional_db, mail) -> str:
    mail.reset()
    return api_key_create(name="streams", permission="full")[1]


def send(stack: Stack, key: str, **fields) -> str:
    body = {"to": "reader@example.org", "subject": "News", "text": "Hello.", "email_id": unique("s"), **fields}
    status, answer = stack.post("/api/v1/emails", body, key)
    assert status == 202, answer
    return body["email_id"]


def received(mail: SmtpServer, email_id: str) -> email.message.EmailMessage:
    arrival = mail.wait_for(email_id)[0]
    return email.message_from_bytes(arrival.data, policy=email.policy.default)


def unsubscribe_url(message) -> str:
    return re.search(r"<(http[^>]+)>", str(message["List-Unsubscribe"])).group(1)


def http(method: str, url: str, data: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def one_click(url: str) -> tuple[int, str]:
    """What Gmail and Yahoo do (RFC 8058 §3.2): a POST with this body, no cookies."""
    return http("POST", url, b"List-Unsubscribe=One-Click")


def test_broadcast_carries_rfc8058_headers_and_transactional_only_when_asked(stack, key, mail):
    broadcast = received(mail, send(stack, key, stream="broadcast"))
    plain = received(mail, send(stack, key))
    asked = received(mail, send(stack, key, unsubscribe=True))

    assert broadcast["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    links = re.findall(r"<([^>]+)>", str(broadcast["List-Unsubscribe"]))
    assert links[0].startswith(f"{stack.web_url}/u/") and links[1].startswith("mailto:unsubscribe@example.com?subject=")
    assert plain["List-Unsubscribe"] is None and plain["List-Unsubscribe-Post"] is None
    assert asked["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert unsubscribe_url(asked) != unsubscribe_url(broadcast)  # one token per email and recipient
    # Raw header lines, as a mailbox provider parses them: each link in angle brackets.
    raw = mail.matching(broadcast["Message-ID"].strip("<>"))[0].data
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw


def test_one_click_unsubscribes_from_that_stream_only_once_and_fires_a_webhook(stack, key, mail):
    address = f"{unique('reader')}@example.org"
    with local_receiver() as receiver:
        status, hook = stack.post("/api/v1/webhooks", {"url": receiver.url(), "event_types": ["unsubscribed"]}, key)
        assert status == 201, hook
        url = unsubscribe_url(received(mail, send(stack, key, to=address, stream="broadcast")))

        status, page = http("GET", url)  # a link scanner, or the person opening the link
        assert status == 200 and "Unsubscribe?" in page
        assert not StreamSuppression.objects.filter(email=address).exists()  # a GET never unsubscribes

        assert one_click(url)[0] == 200
        assert one_click(url)[0] == 200  # a repeat changes nothing
        assert list(StreamSuppression.objects.filter(email=address).values_list("stream", flat=True)) == ["broadcast"]
        assert not Suppression.objects.filter(email=address).exists()  # not every stream

        events = poll(lambda: [Webhook(hook["secret"]).verify(p.body, p.headers) for p in list(receiver.posted)],
                      until=lambda found: found, timeout=20)
        assert [(e["type"], e["data"]["recipient"], e["data"]["detail"]) for e in events] == [
            ("email.unsubscribed", address, {"stream": "broadcast"})
        ]

    # The suppression list shows it under its stream only; /stats and /metrics count per stream.
    status, listed = stack.get(f"/api/v1/suppressions?stream=broadcast&search={address}", key)
    assert status == 200, listed
    assert [(row["email"], row["stream"], row["reason"]) for row in listed["results"]] == [(address, "broadcast", "unsubscribe")]
    status, everywhere = stack.get(f"/api/v1/suppressions?search={address}", key)
    assert everywhere["results"] == []
    status, stats = stack.get("/api/v1/stats?stream=broadcast", key)
    assert status == 200, stats
    assert stats["totals"]["sent"] >= 1
    status, stats = stack.get("/api/v1/stats?stream=nope", key)
    assert stats["totals"]["sent"] == 0
    metrics = urllib.request.urlopen(f"{stack.web_url}/metrics", timeout=30).read().decode()
    assert re.search(r'^emailsvc_unsubscribes_total\{stream="broadcast"\} [1-9]', metrics, re.M), metrics[:2000]

    # The same address still gets transactional email; a broadcast one is recorded suppressed.
    receipt = send(stack, key, to=address)
    newsletter = send(stack, key, to=address, stream="broadcast")
    received(mail, receipt)
    status, detail = stack.get(f"/api/v1/emails/{newsletter}", key)
    assert detail["status"] == "suppressed" and "unsubscribed from broadcast" in detail["recipients"][0]["failed_reason"]
    assert not mail.matching(newsletter)

    # The page offers the way back: re-subscribing lifts the stream's suppression.
    status, page = http("GET", url)
    assert status == 200 and "You are unsubscribed" in page and "Re-subscribe" in page
    assert http("POST", f"{url}/resubscribe", b"Resubscribe=One-Click")[0] == 200
    assert not StreamSuppression.objects.filter(email=address).exists()
    received(mail, send(stack, key, to=address, stream="broadcast"))


def test_forged_or_tampered_tokens_are_refused(stack, key, mail):
    url = unsubscribe_url(received(mail, send(stack, key, stream="broadcast")))
    token = url.rsplit("/", 1)[1]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (tampered, "1:abc:def", token.split(":")[0], "x" * 40):
        assert one_click(f"{stack.web_url}/u/{bad}")[0] == 404, bad
        assert http("GET", f"{stack.web_url}/u/{bad}")[0] == 404, bad
    assert not StreamSuppression.objects.exists()
