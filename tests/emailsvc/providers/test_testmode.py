"""A test key's emails on real processes: the API, a Celery worker, the SMTP server
and moto's SES. They never reach the provider, yet the SES mailbox simulator's
outcomes, events, suppressions and status webhooks happen as in production."""

import json

import pytest
from rest_framework.test import APIClient
from standardwebhooks import Webhook

from emailsvc.models import Suppression
from tests.conftest import poll
from tests.webhook_receiver import local_receiver
from tracking.webhooks.outbox import webhooks_dispatch
from tracking.webhooks.sender import webhook_deliveries_send

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

SIMULATOR = "simulator.amazonses.com"
EXPECTED = {
    f"success@{SIMULATOR}": "delivered",
    f"bounce@{SIMULATOR}": "bounced",
    f"complaint@{SIMULATOR}": "complained",
    f"suppressionlist@{SIMULATOR}": "bounced",
    "jane@example.org": "delivered",
}


def send(client, to) -> str:
    body = {"from": "ci@example.com", "to": to, "subject": "Test mode", "text": "Hello"}
    response = client.post("/api/v1/emails", json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.content
    return response.json()["email_id"]


def statuses(record: dict) -> dict:
    return {recipient["email"]: recipient["status"] for recipient in record["recipients"]}


@pytest.mark.parametrize("provider", ["smtp", "ses"])
def test_test_key_emails_never_reach_the_provider_yet_get_the_simulators_outcomes(
    provider, settings, full_api, celery_worker, smtp_server, moto_server
):
    settings.EMAIL_PROVIDER = provider  # what a live key's email goes through, in the worker
    settings.ALLOWED_FROM_DOMAINS = ["example.com"]
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    settings.WEBHOOK_ALLOW_HTTP = True
    created = full_api.post("/api/v1/api-keys", {"name": "ci", "permission": "sending", "test": True}, format="json")
    assert created.status_code == 201, created.content
    test_client = APIClient()
    test_client.credentials(HTTP_X_API_KEY=created.json()["key"])

    with local_receiver() as receiver:
        hook = full_api.post("/api/v1/webhooks", {"url": receiver.url(), "event_types": ["*"]}, format="json").json()
        test_id = send(test_client, list(EXPECTED))
        live_id = send(full_api, "live@example.org")

        # The record is read in several statements: the email's status may be read before a
        # commit its recipients' are read after, so the wait is for both.
        record = poll(
            lambda: full_api.get(f"/api/v1/emails/{test_id}").json(),
            until=lambda r: statuses(r) == EXPECTED and r["status"] == "complained",
        )
        assert statuses(record) == EXPECTED, celery_worker.log()[-3000:]
        # The live email of the same run reached the provider: the test one did not.
        if provider == "smtp":
            assert smtp_server.wait_for(live_id), celery_worker.log()[-3000:]
            assert smtp_server.matching(test_id) == []
        else:
            sent = poll(moto_server.sent_raw_messages, until=lambda found: any(live_id in m["raw_data"] for m in found))
            assert any(live_id in message["raw_data"] for message in sent), celery_worker.log()[-3000:]
            assert not any(test_id in message["raw_data"] for message in sent)

        assert (record["test"], record["provider"], record["status"]) == (True, "test", "complained")
        assert record["provider_message_id"].startswith("test-")
        assert full_api.get(f"/api/v1/emails/{live_id}").json()["test"] is False
        assert {event["type"] for event in record["events"]} == {"send", "delivery", "bounce", "complaint"}
        bounced = next(r for r in record["recipients"] if r["email"] == f"suppressionlist@{SIMULATOR}")
        assert bounced["bounce"]["subtype"] == "OnAccountSuppressionList"
        assert dict(Suppression.objects.values_list("email", "reason")) == {
            f"bounce@{SIMULATOR}": "hard_bounce",
            f"complaint@{SIMULATOR}": "complaint",
            f"suppressionlist@{SIMULATOR}": "hard_bounce",
        }
        listed = full_api.get("/api/v1/emails", {"status": "complained"}).json()["results"]
        assert [(item["email_id"], item["test"]) for item in listed] == [(test_id, True)]

        def webhooks_of_test_email() -> set:
            for endpoint_pk in webhooks_dispatch().due_endpoints:  # what the worker's beat does
                webhook_deliveries_send(endpoint_pk=endpoint_pk)
            events = [Webhook(hook["secret"]).verify(r.body, r.headers) for r in list(receiver.posted)]
            return {(e["type"], e["data"]["recipient"]) for e in events if e["data"]["email_id"] == test_id}

        expected_hooks = {(f"email.{status}", address) for address, status in EXPECTED.items()}
        received = poll(webhooks_of_test_email, until=lambda found: expected_hooks <= found)
        assert expected_hooks <= received
