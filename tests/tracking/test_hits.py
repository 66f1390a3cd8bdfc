"""emailsvc's own open and click tracking, end to end (SPEC §4 Tracking, §6.5):
a real web process (gunicorn) serves the pixel and the redirects, a real Celery
worker delivers over SMTP to a real server and applies the buffered hits, and a
real HTTP receiver gets the status webhooks."""

import email
import http.client
import json
import re
from email import policy
from urllib.parse import urlsplit

import pytest
from django.db import connections

from emailsvc.keys import api_key_create
from tests.conftest import poll, wait_until
from tests.stack import SmtpServer, Stack
from tests.webhook_receiver import local_receiver
from tracking.hits import HITS_STREAM

pytestmark = pytest.mark.django_db(transaction=True)

TRACKING_BASE = "https://t.example.test"
HUMAN = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15"
GMAIL_PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
PRODUCT_URL = "https://shop.example.com/p/ünï?a=1&b=2&c=%20x#reviews"
HTML = (
    "<html><body><p>Hello</p>"
    '<a href="https://shop.example.com/p/ünï?a=1&amp;b=2&amp;c=%20x#reviews">product</a>'
    "<a class='b' href='https://docs.example.com/start'>docs</a>"
    '<a href="mailto:help@example.com">mail us</a><a href="tel:+15551234">call</a><a href="#top">top</a>'
    '<a href="https://unsub.example.com/u/42">unsubscribe</a>'
    '<a data-emailsvc-notrack href="https://keep.example.com/x?y=1">kept</a>'
    "</body></html>"
)
TEXT = "Hello. https://shop.example.com/text-link"


@pytest.fixture(scope="module")
def mail():
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, mail, tmp_path_factory):
    env = {
        "EMAIL_PROVIDER": "smtp", "SMTP_HOST": mail.host, "SMTP_PORT": str(mail.port), "SEND_RATE_PER_SECOND": "0",
        "TRACKING_DOMAIN": TRACKING_BASE, "TRACKING_HITS_APPLY_DELAY_SECONDS": "0.1",
        "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true", "WEBHOOK_ALLOW_HTTP": "true",
    }
    name = str(connections["default"].settings_dict["NAME"])
    stack = Stack(directory=tmp_path_factory.mktemp("track-stack"), db_name=name, env=env, name="track").start()
    try:
        stack.start_worker(concurrency=2)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def keys(transactional_db):
    return {
        "sending": api_key_create(name="tracking tests", permission="sending")[1],
        "full": api_key_create(name="tracking admin", permission="full")[1],
    }


def send(stack: Stack, key: str, mail: SmtpServer, **fields) -> tuple[str, email.message.EmailMessage]:
    """Send over the API; the email id and the message the SMTP server received."""
    body = {"to": "reader@example.org", "subject": "Tracked", "html": HTML, "text": TEXT, **fields}
    status, answer = stack.post("/api/v1/emails", body, key)
    assert status == 202, answer
    email_id = answer["email_id"]
    arrivals = mail.wait_for(email_id)
    assert arrivals, stack.logs()
    return email_id, email.message_from_bytes(arrivals[0].data, policy=policy.default)


def parts(message) -> tuple[str, str]:
    html = message.get_body(preferencelist=("html",)).get_content()
    text = message.get_body(preferencelist=("plain",)).get_content()
    return html, text


def hit(stack: Stack, url: str, user_agent: str = HUMAN) -> http.client.HTTPResponse:
    """GET a tracking URL of the email against the web process (TRACKING_DOMAIN
    names the public host; the path is what the web process serves)."""
    assert url.startswith(TRACKING_BASE + "/t/"), url
    connection = http.client.HTTPConnection("127.0.0.1", urlsplit(stack.web_url).port, timeout=30)
    connection.request("GET", urlsplit(url).path, headers={"User-Agent": user_agent})
    response = connection.getresponse()
    response.body = response.read()
    connection.close()
    return response


def record(stack: Stack, key: str, email_id: str) -> dict:
    status, answer = stack.get(f"/api/v1/emails/{email_id}", key)
    assert status == 200, answer
    return answer


def wait_record(stack: Stack, key: str, email_id: str, until) -> dict:
    answer = poll(lambda: record(stack, key, email_id), until=until, timeout=30)
    assert until(answer), (answer, stack.logs())
    return answer


def events_of(answer: dict, kind: str) -> list[dict]:
    return [event for event in answer["events"] if event["type"] == kind]


def test_tracked_email_records_each_open_and_click_once_redirects_exactly_and_reaches_webhooks(stack, mail, keys):
    with local_receiver() as receiver:
        status, hook = stack.post("/api/v1/webhooks", {"url": receiver.url(), "event_types": ["opened", "clicked"]}, keys["full"])
        assert status == 201, hook
        email_id, message = send(
            stack, keys["sending"], mail, track={"opens": True, "clicks": True},
            headers={"List-Unsubscribe": "<https://unsub.example.com/u/42>, <mailto:unsub@example.com>"},
        )
        html, text = parts(message)

        # The text part is untouched; in the HTML only the two web links are rewritten.
        assert text.strip() == TEXT
        pixels = re.findall(r'<img src="([^"]+)"', html)
        links = re.findall(r"""href=["']([^"']+)["']""", html)
        assert len(pixels) == 1 and pixels[0].startswith(f"{TRACKING_BASE}/t/o/")
        assert html.index(pixels[0]) < html.index("</body>")
        assert [link for link in links if link.startswith(TRACKING_BASE)] == links[:2]
        assert all(link.startswith(f"{TRACKING_BASE}/t/c/") for link in links[:2])
        assert links[2:] == [
            "mailto:help@example.com", "tel:+15551234", "#top", "https://unsub.example.com/u/42", "https://keep.example.com/x?y=1",
        ]

        # The pixel is a GIF; the redirects lead exactly where the links led.
        opened = hit(stack, pixels[0])
        assert (opened.status, opened.getheader("Content-Type")) == (200, "image/gif")
        assert opened.body.startswith(b"GIF89a") and "no-store" in opened.getheader("Cache-Control")
        wait_record(stack, keys["sending"], email_id, lambda a: a["status"] == "opened")
        first = hit(stack, links[0])
        assert first.status == 302
        assert first.getheader("Location") == "https://shop.example.com/p/%C3%BCn%C3%AF?a=1&b=2&c=%20x#reviews"
        second = hit(stack, links[1])
        assert (second.status, second.getheader("Location")) == (302, "https://docs.example.com/start")

        # The record is read in several statements: one may see the clicks' commit and an
        # earlier one not, so the wait is for both.
        answer = wait_record(
            stack, keys["sending"], email_id,
            lambda a: len(events_of(a, "open")) == 1 and len(events_of(a, "click")) == 2 and a["status"] == "clicked",
        )
        recipient = answer["recipients"][0]
        assert answer["status"] == recipient["status"] == "clicked"
        assert (recipient["open_count"], recipient["click_count"]) == (1, 2)
        assert sorted(event["detail"]["url"] for event in events_of(answer, "click")) == [
            "https://docs.example.com/start", PRODUCT_URL,
        ]
        open_event = events_of(answer, "open")[0]
        assert open_event["detail"]["user_agent"] == HUMAN and open_event["detail"]["machine"] is False
        assert answer["track"] == {"opens": True, "clicks": True}

        # A hit applied again (an applier that died between its commit and its
        # delete) has the same event id: it counts once.
        redis = stack.redis()
        try:
            assert wait_until(lambda: redis.xlen(HITS_STREAM) == 0, timeout=15)
            replay = {key: str(value) for key, value in open_event_raw(answer, stack, keys).items()}
            redis.xadd(HITS_STREAM, replay)
            stack.publish("tracking.hits_apply", args=[], queue="events")
            assert wait_until(lambda: redis.xlen(HITS_STREAM) == 0, timeout=15), stack.logs()
        finally:
            redis.close()
        again = record(stack, keys["sending"], email_id)
        assert len(events_of(again, "open")) == 1 and again["recipients"][0]["open_count"] == 1

        # The webhook receiver heard of both status changes.
        def heard() -> set[str]:
            return {json.loads(posted.body)["type"] for posted in receiver.posted}

        assert wait_until(lambda: {"email.opened", "email.clicked"} <= heard(), timeout=30), (heard(), stack.logs())
        data = {json.loads(p.body)["type"]: json.loads(p.body)["data"] for p in receiver.posted}
        assert data["email.opened"]["email_id"] == email_id and data["email.clicked"]["previous"] == "opened"


def open_event_raw(answer: dict, stack: Stack, keys) -> dict:
    """The buffered hit behind the email's open event, as the stream held it."""
    from tracking.models import EngagementEvent

    event_id = events_of(answer, "open")[0]["event_id"]
    return EngagementEvent.objects.get(event_id=event_id).raw


def test_untracked_sends_carry_no_pixel_and_no_rewritten_link(stack, mail, keys):
    for fields in ({}, {"track": {"opens": False, "clicks": False}}, {"track": None}):
        email_id, message = send(stack, keys["sending"], mail, **fields)
        html, text = parts(message)
        assert html.strip() == HTML and text.strip() == TEXT
        assert "/t/" not in message.as_string() and "<img" not in html
        assert record(stack, keys["sending"], email_id)["track"] == {"opens": False, "clicks": False}


def test_tampered_or_foreign_tokens_are_404(stack, mail, keys):
    _, message = send(stack, keys["sending"], mail, track={"opens": True, "clicks": True})
    html, _ = parts(message)
    pixel = re.findall(r'<img src="([^"]+)"', html)[0]
    link = re.findall(r'href="([^"]+/t/c/[^"]+)"', html)[0]
    assert hit(stack, pixel).status == 200 and hit(stack, link).status == 302

    payload, signature = urlsplit(link).path.rsplit("/", 1)[1].split("~")
    kind, message_id, recipient_id, index = payload.split(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    forged = [
        f"{TRACKING_BASE}/t/c/{payload}~{flipped}",  # a signature changed
        f"{TRACKING_BASE}/t/c/{kind}.{message_id}.{recipient_id}.{int(index) + 1}~{signature}",  # another link
        f"{TRACKING_BASE}/t/c/{kind}.{int(message_id) - 1}.{recipient_id}.{index}~{signature}",  # another email
        f"{TRACKING_BASE}/t/c/{urlsplit(pixel).path.rsplit('/', 1)[1]}",  # an open token on the redirect
        f"{TRACKING_BASE}/t/o/{payload}~{signature}",  # a click token as a pixel
        f"{TRACKING_BASE}/t/o/o.1.1~not-a-signature",
        f"{TRACKING_BASE}/t/c/https%3A%2F%2Fevil.example",
    ]
    for url in forged:
        response = hit(stack, url)
        assert response.status == 404, url
        assert response.getheader("Location") is None


def test_machine_open_is_flagged_and_not_counted_as_a_human_open(stack, mail, keys):
    email_id, message = send(stack, keys["sending"], mail, track={"opens": True}, group_id="tracking-machine")
    html, _ = parts(message)
    assert "/t/c/" not in html  # clicks were not asked for
    pixel = re.findall(r'<img src="([^"]+)"', html)[0]

    assert hit(stack, pixel, user_agent=GMAIL_PROXY).status == 200
    answer = wait_record(stack, keys["sending"], email_id, lambda a: len(events_of(a, "open")) == 1)
    machine = events_of(answer, "open")[0]["detail"]
    assert machine["machine"] is True and machine["machine_reason"] == "gmail_image_proxy"
    recipient = answer["recipients"][0]
    assert recipient["status"] == "sent" and recipient["open_count"] == 0
    assert recipient["opens"][0]["machine"] is True
    status, analytics = stack.get("/api/v1/groups/tracking-machine/analytics", keys["sending"])
    assert status == 200 and (analytics["opened"], analytics["unique_opened"]) == (0, 0), analytics

    assert hit(stack, pixel, user_agent="Mozilla/5.0").status == 200  # Apple Mail Privacy Protection
    assert hit(stack, pixel, user_agent=HUMAN).status == 200
    answer = wait_record(stack, keys["sending"], email_id, lambda a: len(events_of(a, "open")) == 3)
    recipient = answer["recipients"][0]
    assert recipient["status"] == "opened" and recipient["open_count"] == 1
    reasons = sorted(e["detail"].get("machine_reason", "") for e in events_of(answer, "open"))
    assert reasons == ["", "apple_mail_privacy", "gmail_image_proxy"]


def test_hits_while_redis_is_down_are_recorded_by_the_request_and_buffering_resumes_after(stack, mail, keys):
    """Redis (buffer and broker) stopped: the pixel and the redirect still answer,
    and each hit is recorded once, applied by the request itself; Redis back, a
    new hit goes through the buffer and the worker again. Last in the module:
    the worker lives through the outage."""
    email_id, message = send(stack, keys["sending"], mail, track={"opens": True, "clicks": True})
    html, _ = parts(message)
    pixel = re.findall(r'<img src="([^"]+)"', html)[0]
    link = re.findall(r'href="([^"]+/t/c/[^"]+)"', html)[0]

    stack.stop_redis()
    try:
        assert hit(stack, pixel).status == 200
        redirected = hit(stack, link)
        assert redirected.status == 302 and redirected.getheader("Location") == "https://shop.example.com/p/%C3%BCn%C3%AF?a=1&b=2&c=%20x#reviews"
        # Recorded with nothing to buffer them and no worker able to hear of them.
        answer = record(stack, keys["sending"], email_id)
        assert [len(events_of(answer, kind)) for kind in ("open", "click")] == [1, 1], answer["events"]
        recipient = answer["recipients"][0]
        assert recipient["status"] == "clicked" and (recipient["open_count"], recipient["click_count"]) == (1, 1), recipient
    finally:
        stack.start_redis()

    assert hit(stack, pixel).status == 200
    answer = wait_record(stack, keys["sending"], email_id, lambda a: len(events_of(a, "open")) == 2)
    assert answer["recipients"][0]["open_count"] == 2
    assert len(events_of(answer, "click")) == 1
    assert stack.redis().xlen(HITS_STREAM) == 0  # the buffered one was applied and deleted
