"""POST /api/v1/webhooks/{id}/test: a signed `webhook.test` event sent now to a
real local receiver, verified there with the standardwebhooks library, and the
receiver's answer (or the network error) in the API's answer."""

import json
import socket

import pytest
from standardwebhooks import Webhook

from emailsvc.models import ApiKey
from tests.webhook_receiver import local_receiver
from tracking.models import WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_api(make_client):
    return make_client(ApiKey.Permission.FULL)


@pytest.fixture
def receiver(settings):
    """A receiver on 127.0.0.1 over plain http, allowed as `make run` allows it."""
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    with local_receiver() as receiver:
        yield receiver


def subscribe(admin_api, url: str) -> dict:
    response = admin_api.post("/api/v1/webhooks", {"url": url, "event_types": ["bounced"]}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_the_test_event_is_signed_and_the_receivers_answer_comes_back(admin_api, receiver):
    webhook = subscribe(admin_api, receiver.url("/hooks/email"))

    response = admin_api.post(f"/api/v1/webhooks/{webhook['id']}/test")

    assert response.status_code == 200, response.content
    answer = response.json()
    [posted] = receiver.posted
    event = Webhook(webhook["secret"]).verify(posted.body, posted.headers)
    assert posted.path == "/hooks/email" and posted.headers["webhook-id"] == answer["id"]
    assert event["type"] == "webhook.test" and event["data"]["webhook"] == webhook["id"]
    assert answer["type"] == "webhook.test" and answer["ok"] is True
    assert answer["status_code"] == 204 and answer["error"] == "" and answer["duration_ms"] >= 0
    assert not WebhookDelivery.objects.exists()


def test_a_refusing_receiver_is_reported_and_changes_nothing(admin_api, receiver):
    webhook = subscribe(admin_api, receiver.url())
    receiver.answers.append(500)

    answer = admin_api.post(f"/api/v1/webhooks/{webhook['id']}/test").json()

    assert answer["ok"] is False and answer["status_code"] == 500
    assert answer["error"] == "HTTP 500: receiver says no"
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.enabled and endpoint.first_failure_at is None


def test_an_unreachable_receiver_is_reported_with_the_network_error(admin_api, receiver):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens on it once closed
    webhook = subscribe(admin_api, f"http://127.0.0.1:{port}/hooks")

    answer = admin_api.post(f"/api/v1/webhooks/{webhook['id']}/test").json()

    assert answer["ok"] is False and answer["status_code"] is None
    assert "refused" in answer["error"].lower()


def test_a_target_no_longer_allowed_is_not_contacted(admin_api, receiver, settings):
    webhook = subscribe(admin_api, receiver.url())
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = False

    answer = admin_api.post(f"/api/v1/webhooks/{webhook['id']}/test").json()

    assert answer["ok"] is False and answer["error"].startswith("webhook_target_not_allowed")
    assert receiver.posted == []


def test_an_unknown_webhook_is_404_and_a_sending_key_is_403(admin_api, make_client, receiver):
    webhook = subscribe(admin_api, receiver.url())

    missing = admin_api.post("/api/v1/webhooks/wh_nope/test")
    sending = make_client(ApiKey.Permission.SENDING).post(f"/api/v1/webhooks/{webhook['id']}/test")

    assert missing.status_code == 404 and missing.json()["error"] == "webhook_not_found"
    assert sending.status_code == 403 and sending.json()["error"] == "forbidden"
    assert receiver.posted == []


def test_the_schema_documents_the_test_endpoint(client):
    schema = json.loads(client.get("/api/schema/", HTTP_ACCEPT="application/json").content)
    operation = schema["paths"]["/api/v1/webhooks/{endpoint_id}/test"]["post"]

    assert operation["operationId"] == "test_webhook" and "webhook.test" in operation["description"]
