"""Outbound status webhooks (issue 17.3, SPEC §6.6): a real HTTP receiver on
127.0.0.1 gets the status changes it subscribed to, signed per Standard Webhooks
and verified here with the `standardwebhooks` library; retries keep the
`webhook-id`; continuous failure disables the endpoint; internal targets are
refused unless a setting allows them.

Status changes are real: emails accepted through the API, handed to the console
provider by the delivery engine (`deliver_now`), SES events applied by
`events_apply`. The dispatcher and the sender run in-process here as the beat and
worker tasks would; the last test runs them in a real worker with beat.
"""

import base64
import datetime as dt
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.db import close_old_connections, connection, connections, transaction
from django.utils import timezone
from standardwebhooks import Webhook, WebhookVerificationError

from emailsvc import status as status_writer
from emailsvc.keys import api_key_create
from emailsvc.models import ApiKey, StatusChange
from tests.conftest import wait_until
from tests.stack import Stack
from tests.tracking.scenario import accepted_message, event, sent_message
from tracking.apply import events_apply
from tracking.models import WebhookDelivery, WebhookEndpoint, WebhookOutboxCursor
from tracking.normalize import ses_body_parse
from tracking.webhooks.outbox import webhooks_dispatch
from tracking.webhooks.sender import RETRY_DELAYS, webhook_deliveries_send
from tracking.webhooks.targets import address_allowed, target_parse

pytestmark = pytest.mark.django_db


# --- The receiver: a real HTTP server in a thread -------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records every POST; answers each with the next of `answers` (200 when none is left)."""

    server: ThreadingHTTPServer = None
    received: list[Received] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    scheme: str = "http"
    host: str = "127.0.0.1"

    def url(self, path: str = "/hooks") -> str:
        return f"{self.scheme}://{self.host}:{self.server.server_address[1]}{path}"

    def answer_next(self, *codes: int) -> None:
        with self.lock:
            self.answers.extend(codes)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]


def _handler(receiver: Receiver):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with receiver.lock:
                receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                code = receiver.answers.pop(0) if receiver.answers else 200
            answer = b'{"ok": true}' if code < 300 else b"receiver trouble"
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    return Handler


def _serve(receiver: Receiver, context: ssl.SSLContext | None = None) -> Receiver:
    receiver.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    if context is not None:
        receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
        receiver.scheme = "https"
    threading.Thread(target=receiver.server.serve_forever, daemon=True).start()
    return receiver


@pytest.fixture
def receiver():
    receiver = _serve(Receiver())
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def local_targets(settings):
    """The receiver is on 127.0.0.1 over plain http: allowed for these tests only."""
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    settings.WEBHOOK_ALLOW_HTTP = True
    return settings


@pytest.fixture
def admin_api(make_client):
    return make_client(ApiKey.Permission.FULL)


def subscribe(admin_api, url: str, event_types, **fields) -> dict:
    response = admin_api.post(
        "/api/v1/webhooks", {"url": url, "event_types": event_types, **fields}, format="json"
    )
    assert response.status_code == 201, response.content
    return response.json()


def apply(*envelopes) -> None:
    """SES events (SNS envelopes) applied as the drain would, in one transaction."""
    with transaction.atomic():
        events_apply(events=[e for envelope in envelopes for e in ses_body_parse(envelope)], source="sqs")


def run_webhooks() -> None:
    """One beat dispatch, then a sender for each endpoint with deliveries due (the worker's part)."""
    for endpoint_pk in webhooks_dispatch().due_endpoints:
        webhook_deliveries_send(endpoint_pk=endpoint_pk)


def verified(secret: str, received: Received) -> dict:
    """The event, verified as a receiver would with the standardwebhooks library."""
    return Webhook(secret).verify(received.body, received.headers)


def make_due(delivery: WebhookDelivery) -> None:
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())


# --- What a subscriber receives ------------------------------------------------------------


def test_receiver_gets_exactly_the_status_changes_it_subscribed_to_each_signed(api, admin_api, receiver, local_targets):
    picky = subscribe(admin_api, receiver.url("/picky"), ["delivered", "bounced"])
    everything = subscribe(admin_api, receiver.url("/all"), ["*"], description="audit log")
    jane = sent_message(api, ["jane@example.com"], group_id="launch", tags=["welcome"], metadata={"user": 7})
    kim = sent_message(api, ["kim@example.com"])
    apply(event(jane, "Delivery", seconds=1))
    apply(event(jane, "Open", seconds=2))
    apply(event(kim, "Bounce", bounce_type="Permanent", bounce_subtype="General", seconds=3))

    run_webhooks()

    picky_events = [verified(picky["secret"], r) for r in receiver.at("/picky")]
    assert sorted((e["type"], e["data"]["recipient"]) for e in picky_events) == [
        ("email.bounced", "kim@example.com"),
        ("email.delivered", "jane@example.com"),
    ]
    all_events = [verified(everything["secret"], r) for r in receiver.at("/all")]
    assert sorted((e["type"], e["data"]["recipient"]) for e in all_events) == [
        ("email.bounced", "kim@example.com"),
        ("email.delivered", "jane@example.com"),
        ("email.opened", "jane@example.com"),
        ("email.sent", "jane@example.com"),
        ("email.sent", "kim@example.com"),
    ]
    delivered = next(e for e in picky_events if e["type"] == "email.delivered")
    change = StatusChange.objects.get(message=jane, to_status="delivered")
    assert delivered == {
        "type": "email.delivered",
        "timestamp": delivered["data"]["at"],
        "data": {
            "email_id": jane.email_id,
            "group_id": "launch",
            "recipient": "jane@example.com",
            "status": "delivered",
            "previous": "sent",
            "at": change.at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "cause": "event",
            "detail": change.detail,
            "tags": ["welcome"],
            "metadata": {"user": 7},
        },
    }
    # The signature is over the exact body: another secret, or a changed body, does not verify.
    one = receiver.at("/picky")[0]
    with pytest.raises(WebhookVerificationError):
        verified(everything["secret"], one)
    with pytest.raises(WebhookVerificationError):
        verified(picky["secret"], Received(one.path, one.headers, one.body.replace(b"email.", b"email_")))
    assert one.headers["content-type"] == "application/json"
    assert one.headers["webhook-id"].startswith("msg_")
    # Nothing is sent twice: a second run finds nothing new.
    count = len(receiver.received)
    run_webhooks()
    assert len(receiver.received) == count


def test_a_change_past_a_subscribed_status_is_sent_too(api, admin_api, receiver, local_targets):
    """Events applied in one batch move a recipient once: sent → opened stands
    for delivered as well, and reaches a `delivered` subscriber."""
    webhook = subscribe(admin_api, receiver.url(), ["delivered"])
    jane = sent_message(api, ["jane@example.com"])
    kim = sent_message(api, ["kim@example.com"])
    apply(event(jane, "Delivery", seconds=1), event(jane, "Open", seconds=2), event(kim, "Bounce", seconds=3))

    run_webhooks()

    [received] = receiver.received
    data = verified(webhook["secret"], received)["data"]
    assert (data["recipient"], data["previous"], data["status"]) == ("jane@example.com", "sent", "opened")


def test_changes_made_before_a_subscription_are_not_sent_to_it(api, admin_api, receiver, local_targets):
    sent_message(api, ["early@example.com"])
    run_webhooks()
    subscribe(admin_api, receiver.url(), ["sent"])
    sent_message(api, ["late@example.com"])

    run_webhooks()

    assert [r.event["data"]["recipient"] for r in receiver.received] == ["late@example.com"]


def test_a_status_change_committed_after_a_later_one_is_still_sent(api, admin_api, receiver, local_targets):
    """StatusChange ids are taken at insert and seen at commit: a lower id can
    appear after a higher one was read. The dispatcher keeps the skipped id as a
    gap and picks the row up when it shows."""
    subscribe(admin_api, receiver.url(), ["*"])
    first = accepted_message(api, ["first@example.com"])
    second = accepted_message(api, ["second@example.com"])
    run_webhooks()  # the submissions wrote no change; the cursor is at the top
    top = StatusChange.objects.order_by("-id").values_list("id", flat=True).first() or 0
    cursor_before = WebhookOutboxCursor.objects.get().last_change_id
    assert cursor_before >= top

    def change(message, change_id):
        recipient = message.recipients.get()
        return StatusChange.objects.create(
            id=change_id, message=message, recipient=recipient, email=recipient.email,
            from_status="queued", to_status="cancelled", at=timezone.now(), cause="cancel",
        )

    base = max(top, cursor_before)
    change(second, base + 2)  # committed first, with the higher id
    run_webhooks()
    assert [r.event["data"]["recipient"] for r in receiver.received] == ["second@example.com"]
    assert WebhookOutboxCursor.objects.get().gaps == [[base + 1, base + 1, pytest.approx(time.time(), abs=30)]]

    change(first, base + 1)  # the transaction that took the lower id commits now
    run_webhooks()

    assert [r.event["data"]["recipient"] for r in receiver.received] == ["second@example.com", "first@example.com"]
    assert WebhookOutboxCursor.objects.get().gaps == []


def test_without_webhooks_the_dispatcher_only_moves_its_cursor(api):
    sent_message(api, ["jane@example.com"])

    result = webhooks_dispatch()

    assert (result.read, result.deliveries, result.due_endpoints) == (0, 0, [])
    assert WebhookOutboxCursor.objects.get().last_change_id == StatusChange.objects.order_by("-id").first().id


def test_a_gap_that_never_fills_is_given_up_after_the_grace_period(api, admin_api, receiver, local_targets):
    subscribe(admin_api, receiver.url(), ["*"])
    run_webhooks()
    cursor = WebhookOutboxCursor.objects.get()
    cursor.gaps = [[10**12, 10**12, time.time() - local_targets.WEBHOOK_OUTBOX_GAP_SECONDS - 1]]
    cursor.save()

    webhooks_dispatch()

    assert WebhookOutboxCursor.objects.get().gaps == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite runs one writer at a time")
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_committing_out_of_id_order_lose_nothing(api, admin_api, receiver, local_targets):
    """Two real transactions on PostgreSQL: A takes its StatusChange id first and
    commits last; the dispatcher runs in between and still sends A's change."""
    subscribe(admin_api, receiver.url(), ["cancelled"])
    # Scheduled for tomorrow: a worker running meanwhile cannot claim them before they are cancelled.
    tomorrow = (timezone.now() + timedelta(days=1)).isoformat()
    slow = accepted_message(api, ["slow@example.com"], send_at=tomorrow)
    fast = accepted_message(api, ["fast@example.com"], send_at=tomorrow)
    run_webhooks()
    inserted, release = threading.Event(), threading.Event()
    errors = []

    def cancel_slowly():
        try:
            with transaction.atomic():
                status_writer.message_cancel(message_id=slow.pk, at=timezone.now())
                inserted.set()
                release.wait(30)
        except Exception as error:  # reported by the main thread
            errors.append(error)
        finally:
            connections.close_all()

    writer = threading.Thread(target=cancel_slowly)
    writer.start()
    assert inserted.wait(30)
    status_writer.message_cancel(message_id=fast.pk, at=timezone.now())  # a later id, committed first
    run_webhooks()
    assert [r.event["data"]["recipient"] for r in receiver.received] == ["fast@example.com"]
    release.set()
    writer.join(30)
    assert not errors
    assert StatusChange.objects.filter(message__in=[slow, fast], to_status="cancelled").count() == 2

    run_webhooks()

    assert [r.event["data"]["recipient"] for r in receiver.received] == ["fast@example.com", "slow@example.com"]
    slow_id = StatusChange.objects.get(message=slow).id
    assert slow_id < StatusChange.objects.get(message=fast).id


# --- Retries and disabling ------------------------------------------------------------------


def test_a_failed_delivery_is_retried_with_the_same_webhook_id(api, admin_api, receiver, local_targets):
    webhook = subscribe(admin_api, receiver.url(), ["sent"])
    sent_message(api, ["jane@example.com"])
    receiver.answer_next(500)

    run_webhooks()

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
    assert delivery.last_error == "HTTP 500: receiver trouble"
    wait = (delivery.next_attempt_at - delivery.last_attempt_at).total_seconds()
    assert RETRY_DELAYS[0] * 0.8 <= wait <= RETRY_DELAYS[0] * 1.2
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.first_failure_at == delivery.last_attempt_at and endpoint.enabled
    run_webhooks()
    assert len(receiver.received) == 1  # not due yet

    make_due(delivery)
    run_webhooks()

    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.webhook_id
    assert verified(webhook["secret"], first) == verified(webhook["secret"], second)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 2, 200)
    assert [a["status_code"] for a in delivery.attempt_log] == [500, 200]
    assert WebhookEndpoint.objects.get().first_failure_at is None


def test_retries_back_off_then_the_delivery_fails(api, admin_api, receiver, local_targets):
    subscribe(admin_api, receiver.url(), ["sent"])
    sent_message(api, ["jane@example.com"])
    receiver.answer_next(*[503] * (len(RETRY_DELAYS) + 1))
    waits = []
    delivery = None
    for _ in range(len(RETRY_DELAYS) + 1):
        run_webhooks()
        delivery = WebhookDelivery.objects.get()
        if delivery.next_attempt_at:
            waits.append((delivery.next_attempt_at - delivery.last_attempt_at).total_seconds())
            make_due(delivery)
        # Keep the endpoint's failure run short: only the delivery's own schedule is under test.
        WebhookEndpoint.objects.update(first_failure_at=timezone.now())

    assert (delivery.status, delivery.attempts) == ("failed", len(RETRY_DELAYS) + 1)
    assert [round(w / base, 1) for w, base in zip(waits, RETRY_DELAYS, strict=True)] == pytest.approx(
        [1.0] * len(RETRY_DELAYS), abs=0.21
    )
    assert 20 * 3600 < sum(RETRY_DELAYS) < 26 * 3600  # about a day
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1


def test_an_endpoint_failing_for_a_day_is_disabled_and_enabling_it_resumes(api, admin_api, receiver, local_targets):
    webhook = subscribe(admin_api, receiver.url(), ["sent", "delivered"])
    jane = sent_message(api, ["jane@example.com"])
    receiver.answer_next(500, 500)
    run_webhooks()
    # The endpoint has failed since a day ago (instead of waiting a day); the next attempt fails too.
    endpoint = WebhookEndpoint.objects.get()
    WebhookEndpoint.objects.update(first_failure_at=timezone.now() - timedelta(hours=24, minutes=1))
    make_due(WebhookDelivery.objects.get())

    webhook_deliveries_send(endpoint_pk=endpoint.pk)  # the sender's attempt, as a worker runs it

    shown = admin_api.get(f"/api/v1/webhooks/{webhook['id']}").json()
    assert shown["enabled"] is False and shown["disabled_at"]
    assert "every attempt failed since" in shown["disabled_reason"]
    assert len(receiver.received) == 2
    # While disabled nothing is sent, not even what is due, and new changes are not queued for it.
    make_due(WebhookDelivery.objects.get())
    apply(event(jane, "Delivery"))
    run_webhooks()
    assert len(receiver.received) == 2
    assert WebhookDelivery.objects.count() == 1

    response = admin_api.post(f"/api/v1/webhooks/{webhook['id']}/enable")

    assert response.status_code == 200
    assert response.json()["enabled"] is True and response.json()["disabled_reason"] == ""
    run_webhooks()
    assert [r.event["type"] for r in receiver.received] == ["email.sent"] * 3
    assert WebhookDelivery.objects.get().status == "succeeded"


def test_the_dispatcher_disables_an_endpoint_failing_for_too_long_without_an_attempt(admin_api, receiver, local_targets):
    webhook = subscribe(admin_api, receiver.url(), ["*"])
    WebhookEndpoint.objects.update(first_failure_at=timezone.now() - timedelta(hours=25))

    assert webhooks_dispatch().disabled == 1

    assert admin_api.get(f"/api/v1/webhooks/{webhook['id']}").json()["enabled"] is False


def test_410_gone_fails_the_delivery_and_disables_the_endpoint_at_once(api, admin_api, receiver, local_targets):
    webhook = subscribe(admin_api, receiver.url(), ["sent"])
    sent_message(api, ["jane@example.com"])
    receiver.answer_next(410)

    run_webhooks()

    assert WebhookDelivery.objects.get().status == "failed"
    shown = admin_api.get(f"/api/v1/webhooks/{webhook['id']}").json()
    assert (shown["enabled"], shown["disabled_reason"]) == (False, "the endpoint answered 410 Gone")


def test_a_redirect_is_not_followed_and_counts_as_a_failure(api, admin_api, receiver, local_targets):
    subscribe(admin_api, receiver.url(), ["sent"])
    sent_message(api, ["jane@example.com"])
    receiver.answer_next(307)

    run_webhooks()

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.last_status_code, len(receiver.received)) == ("pending", 307, 1)


def test_an_unreachable_receiver_is_a_failure_with_the_network_error(api, admin_api, receiver, local_targets):
    url = receiver.url()
    receiver.server.shutdown()
    receiver.server.server_close()
    subscribe(admin_api, url, ["sent"])
    sent_message(api, ["jane@example.com"])

    run_webhooks()

    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and delivery.last_status_code is None
    assert "Connection refused" in delivery.last_error or "NewConnectionError" in delivery.last_error


# --- The deliveries API and the operator's re-send -----------------------------------------


def test_deliveries_are_listed_with_their_attempts_and_can_be_resent(api, admin_api, receiver, local_targets):
    webhook = subscribe(admin_api, receiver.url(), ["sent"])
    jane = sent_message(api, ["jane@example.com"])
    sent_message(api, ["kim@example.com"])
    receiver.answer_next(200, 500)
    run_webhooks()
    WebhookDelivery.objects.filter(status="pending").update(status="failed", next_attempt_at=None)

    page = admin_api.get(f"/api/v1/webhooks/{webhook['id']}/deliveries").json()
    failed = admin_api.get(f"/api/v1/webhooks/{webhook['id']}/deliveries?status=failed").json()

    assert [d["status"] for d in page["results"]] == ["failed", "succeeded"]  # newest first
    assert page["results"][1]["email_id"] == jane.email_id
    assert page["results"][1]["attempt_log"][0]["status_code"] == 200
    [one] = failed["results"]
    assert (one["recipient"], one["event_type"], one["last_status_code"], one["attempts"]) == (
        "kim@example.com", "email.sent", 500, 1,
    )
    assert one["webhook"] == webhook["id"] and one["id"].startswith("msg_")
    assert admin_api.get(f"/api/v1/webhooks/{webhook['id']}/deliveries?status=nope").json()["error"] == "invalid_field"

    response = admin_api.post(f"/api/v1/webhooks/deliveries/{one['id']}/resend")

    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    run_webhooks()
    assert [r.headers["webhook-id"] for r in receiver.received][-1] == one["id"]
    resent = admin_api.get(f"/api/v1/webhooks/{webhook['id']}/deliveries?status=succeeded").json()["results"]
    assert {d["id"] for d in resent} >= {one["id"]}
    assert admin_api.post("/api/v1/webhooks/deliveries/msg_nope/resend").json()["error"] == "webhook_delivery_not_found"


def test_a_delivery_of_a_disabled_endpoint_is_not_resent(api, admin_api, receiver, local_targets):
    webhook = subscribe(admin_api, receiver.url(), ["sent"])
    sent_message(api, ["jane@example.com"])
    receiver.answer_next(410)
    run_webhooks()
    delivery = WebhookDelivery.objects.get()

    response = admin_api.post(f"/api/v1/webhooks/deliveries/{delivery.webhook_id}/resend")

    assert response.status_code == 409 and response.json()["error"] == "webhook_disabled"
    assert webhook["id"] in response.json()["detail"]


def test_the_admin_lists_deliveries_resends_one_and_disables_and_enables_webhooks(
    admin_client, api, admin_api, receiver, local_targets
):
    webhook = subscribe(admin_api, receiver.url(), ["sent"])
    sent_message(api, ["jane@example.com"])
    receiver.answer_next(500)
    run_webhooks()
    delivery = WebhookDelivery.objects.get()
    endpoint = WebhookEndpoint.objects.get()

    deliveries = admin_client.get("/admin/tracking/webhookdelivery/", {"status__exact": "pending"}).content.decode()
    endpoints = admin_client.get("/admin/tracking/webhookendpoint/").content.decode()
    page = admin_client.get(f"/admin/tracking/webhookendpoint/{endpoint.pk}/change/").content.decode()

    assert delivery.webhook_id in deliveries and "500" in deliveries
    assert delivery.webhook_id in admin_client.get("/admin/tracking/webhookdelivery/", {"q": webhook["id"]}).content.decode()
    assert delivery.webhook_id in admin_client.get(
        "/admin/tracking/webhookdelivery/", {"q": delivery.webhook_id}
    ).content.decode()
    assert webhook["id"] in endpoints and webhook["secret"] not in endpoints + page
    admin_client.post(
        "/admin/tracking/webhookdelivery/", {"action": "resend", "_selected_action": [delivery.pk]}
    )
    delivery.refresh_from_db()
    assert delivery.next_attempt_at <= timezone.now()
    admin_client.post("/admin/tracking/webhookendpoint/", {"action": "disable", "_selected_action": [endpoint.pk]})
    endpoint.refresh_from_db()
    assert not endpoint.enabled and "in the admin" in endpoint.disabled_reason
    admin_client.post("/admin/tracking/webhookendpoint/", {"action": "enable", "_selected_action": [endpoint.pk]})
    run_webhooks()
    assert len(receiver.received) == 2 and WebhookDelivery.objects.get().status == "succeeded"


# --- Subscriptions: the secret, URLs, SSRF, permissions -------------------------------------


def test_the_secret_is_shown_once(admin_api, local_targets, receiver):
    created = subscribe(admin_api, receiver.url(), ["delivered", "delivered", "bounced"])

    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) == 32
    assert created["event_types"] == ["delivered", "bounced"]
    shown = admin_api.get(f"/api/v1/webhooks/{created['id']}").json()
    listed = admin_api.get("/api/v1/webhooks").json()["results"]
    assert "secret" not in shown and all("secret" not in w for w in listed)
    assert created["secret"] not in json.dumps([shown, listed])
    assert {k: v for k, v in created.items() if k != "secret"} == shown


def test_webhooks_are_listed_newest_first_and_deleted(admin_api, local_targets, receiver):
    first = subscribe(admin_api, receiver.url("/1"), ["*"])
    second = subscribe(admin_api, receiver.url("/2"), ["sent", "*"])
    assert second["event_types"] == ["*"]

    assert [w["id"] for w in admin_api.get("/api/v1/webhooks").json()["results"]] == [second["id"], first["id"]]
    assert admin_api.delete(f"/api/v1/webhooks/{first['id']}").status_code == 204

    assert [w["id"] for w in admin_api.get("/api/v1/webhooks").json()["results"]] == [second["id"]]
    assert admin_api.get(f"/api/v1/webhooks/{first['id']}").json()["error"] == "webhook_not_found"
    assert admin_api.delete(f"/api/v1/webhooks/{first['id']}").status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hooks",
        "https://127.0.0.1:8443/hooks",
        "https://localhost/hooks",
        "https://[::1]/hooks",
        "https://[::ffff:127.0.0.1]/hooks",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.1.2.3/hooks",
        "https://192.168.0.10/hooks",
        "https://100.64.0.1/hooks",
        "https://0.0.0.0/hooks",
        "https://0/hooks",
        "https://2130706433/hooks",
        "https://224.0.0.1/hooks",
        "https://[fd00:ec2::254]/hooks",
    ],
)
def test_a_webhook_to_an_internal_address_is_refused(admin_api, settings, url):
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = False

    response = admin_api.post("/api/v1/webhooks", {"url": url, "event_types": ["*"]}, format="json")

    assert response.status_code == 400, response.content
    assert response.json()["error"] == "webhook_target_not_allowed"
    assert "url" in response.json()["fields"]
    assert not WebhookEndpoint.objects.exists()


def test_a_webhook_to_127_0_0_1_is_accepted_when_private_targets_are_allowed(admin_api, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True

    response = admin_api.post("/api/v1/webhooks", {"url": "https://127.0.0.1/hooks", "event_types": ["*"]}, format="json")

    assert response.status_code == 201


def test_public_addresses_are_allowed_and_internal_ones_not():
    assert address_allowed("93.184.215.14") and address_allowed("2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    for internal in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                     "0.0.0.0", "255.255.255.255", "224.0.0.1", "240.0.0.1", "::1", "::", "fe80::1%eth0",
                     "fc00::1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "ff02::1"):
        assert not address_allowed(internal), internal


def test_the_target_is_checked_again_before_every_delivery(api, admin_api, receiver, local_targets):
    """Subscribed while internal targets were allowed (or while its name resolved
    to a public address): once it resolves to an internal one, nothing is sent."""
    subscribe(admin_api, receiver.url(), ["sent"])
    local_targets.WEBHOOK_ALLOW_PRIVATE_TARGETS = False
    sent_message(api, ["jane@example.com"])

    run_webhooks()

    assert receiver.received == []
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and delivery.last_error.startswith("webhook_target_not_allowed")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.com/x", "plain http"),
        ("https://user:secret@hooks.example.com/x", "credentials"),
        ("https://hooks.example.com/x#frag", "fragment"),
        ("ftp://hooks.example.com/x", "scheme"),
        ("hooks.example.com/x", "no scheme"),
        ("https:///x", "no host"),
        ("https://hooks.example.com:99999/x", "port"),
        ("https://hooks example.com/x", "space"),
        ("https://hooks.example.com/\nx", "line break"),
    ],
)
def test_a_malformed_webhook_url_is_refused(admin_api, settings, url, why):
    settings.WEBHOOK_ALLOW_HTTP = False

    response = admin_api.post("/api/v1/webhooks", {"url": url, "event_types": ["*"]}, format="json")

    assert response.status_code == 400, why
    assert response.json()["error"] == "invalid_webhook_url", why


def test_a_url_is_sent_as_given_with_its_host_name_in_ascii():
    target = target_parse("https://Bücher.example:8443/hooks/ü?x=é&y=1")

    assert (target.host, target.port, target.path) == ("xn--bcher-kva.example", 8443, "/hooks/%C3%BC?x=%C3%A9&y=1")
    assert target.host_header == "xn--bcher-kva.example:8443"
    assert target_parse("https://[2001:db8::1]/").host_header == "[2001:db8::1]"


def test_subscription_fields_are_validated(admin_api, local_targets, receiver):
    def error(body):
        return admin_api.post("/api/v1/webhooks", body, format="json").json()["error"]

    assert error({"url": receiver.url()}) == "missing_fields"
    assert error({"url": receiver.url(), "event_types": []}) == "invalid_field"
    assert error({"url": receiver.url(), "event_types": ["queued"]}) == "invalid_field"
    assert error({"url": receiver.url(), "event_types": "sent"}) == "invalid_field"
    assert error({"url": "https://example.com/" + "x" * 2000, "event_types": ["*"]}) == "invalid_field"


@pytest.mark.parametrize("permission", [ApiKey.Permission.READ_ONLY, ApiKey.Permission.SENDING])
def test_webhooks_need_a_full_key(make_client, admin_api, local_targets, receiver, permission):
    webhook = subscribe(admin_api, receiver.url(), ["*"])
    client = make_client(permission)
    calls = [
        client.get("/api/v1/webhooks"),
        client.post("/api/v1/webhooks", {"url": receiver.url(), "event_types": ["*"]}, format="json"),
        client.get(f"/api/v1/webhooks/{webhook['id']}"),
        client.delete(f"/api/v1/webhooks/{webhook['id']}"),
        client.post(f"/api/v1/webhooks/{webhook['id']}/enable"),
        client.get(f"/api/v1/webhooks/{webhook['id']}/deliveries"),
        client.post("/api/v1/webhooks/deliveries/msg_x/resend"),
    ]

    assert [(c.status_code, c.json()["error"]) for c in calls] == [(403, "forbidden")] * len(calls)
    assert WebhookEndpoint.objects.count() == 1


def test_webhooks_need_a_key(client):
    response = client.get("/api/v1/webhooks")

    assert (response.status_code, response.json()["error"]) == (401, "unauthorized")


# --- https: the checked address, the host name in SNI and the certificate ---------------------


def _certificates(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for `host` signed by it: (ca.pem, cert.pem, key.pem)."""
    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name(host)).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.fixture
def tls_receiver(tmp_path):
    """An https receiver on 127.0.0.1 with a certificate for `localhost` from a private CA."""
    ca, cert, key = _certificates(tmp_path, "localhost")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    seen_names = []
    context.sni_callback = lambda sock, server_name, ctx: seen_names.append(server_name)
    receiver = _serve(Receiver(host="localhost"), context)
    receiver.ca = ca
    receiver.seen_names = seen_names
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def test_https_delivery_connects_to_the_checked_address_with_the_host_name_verified(
    api, admin_api, tls_receiver, settings
):
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    settings.WEBHOOK_CA_BUNDLE = str(tls_receiver.ca)
    webhook = subscribe(admin_api, tls_receiver.url(), ["sent"])
    sent_message(api, ["jane@example.com"])

    run_webhooks()

    [received] = tls_receiver.received
    assert verified(webhook["secret"], received)["type"] == "email.sent"
    assert received.headers["host"] == f"localhost:{tls_receiver.server.server_address[1]}"
    assert tls_receiver.seen_names == ["localhost"]  # SNI carries the name, not the address


def test_https_delivery_refuses_a_certificate_for_another_name(api, admin_api, tls_receiver, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    settings.WEBHOOK_CA_BUNDLE = str(tls_receiver.ca)
    port = tls_receiver.server.server_address[1]
    subscribe(admin_api, f"https://127.0.0.1:{port}/hooks", ["sent"])  # the certificate names localhost
    sent_message(api, ["jane@example.com"])

    run_webhooks()

    assert tls_receiver.received == []
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and "SSL" in delivery.last_error


# --- The whole loop in real processes ----------------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_with_beat_delivers_status_webhooks(receiver, tmp_path):
    """gunicorn takes the subscription and the email; a Celery worker running beat
    delivers the email (console provider), dispatches the StatusChange and POSTs it."""
    stack = Stack(
        directory=tmp_path / "stack",
        db_name=str(connections["default"].settings_dict["NAME"]),
        env={
            "EMAIL_PROVIDER": "console",
            "SEND_RATE_PER_SECOND": "0",
            "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
            "WEBHOOK_ALLOW_HTTP": "true",
            "WEBHOOK_DISPATCH_INTERVAL_SECONDS": "0.5",
        },
        name="webhooks",
    )
    _, key = api_key_create(name="webhooks e2e", permission="full")
    stack.start()
    try:
        status, webhook = stack.post("/api/v1/webhooks", {"url": receiver.url(), "event_types": ["sent"]}, key)
        assert status == 201, webhook
        stack.start_worker(beat=True)
        status, email = stack.post("/api/v1/emails", {"to": "jane@example.com", "subject": "Hi", "text": "Hello"}, key)
        assert status == 202, email

        assert wait_until(lambda: receiver.received, timeout=60), stack.logs()

        event_ = verified(webhook["secret"], receiver.received[0])
        assert (event_["type"], event_["data"]["email_id"]) == ("email.sent", email["email_id"])
        assert wait_until(
            lambda: stack.get(f"/api/v1/webhooks/{webhook['id']}/deliveries", key)[1]["results"][0]["status"]
            == "succeeded",
            timeout=30,
        ), stack.logs()
    finally:
        stack.stop()
        close_old_connections()
