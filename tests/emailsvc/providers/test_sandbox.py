"""The sandbox loop on real processes: API → worker → moto SES → simulated SES events on
moto SQS → the drain task on the worker's `events` queue → facts, suppressions, API."""

import json
import time

import pytest

from emailsvc.models import Message, Suppression
from tests.conftest import wait_for_status
from tracking.tasks import events_drain_task

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

SIMULATOR = "simulator.amazonses.com"


def test_simulator_addresses_produce_their_outcomes_and_suppressions(api, settings, celery_worker, moto_server):
    settings.EMAIL_PROVIDER = "sandbox"
    addresses = [f"{name}@{SIMULATOR}" for name in ("success", "bounce", "ooto", "complaint", "suppressionlist")]
    addresses.append("someone+label@example.org")
    response = api.post(
        "/api/v1/emails",
        json.dumps({"from": "hello@example.com", "to": addresses, "subject": "Sandbox", "text": "Hi", "group_id": "sandbox"}),
        content_type="application/json",
    )
    assert response.status_code == 202, response.content
    email_id = response.json()["email_id"]
    assert wait_for_status(email_id).status not in ("queued", "sending"), celery_worker.log()[-3000:]

    expected = {
        f"success@{SIMULATOR}": "delivered",
        f"bounce@{SIMULATOR}": "bounced",
        f"ooto@{SIMULATOR}": "delivered",
        f"complaint@{SIMULATOR}": "complained",
        f"suppressionlist@{SIMULATOR}": "bounced",
        "someone+label@example.org": "delivered",
    }
    message = Message.objects.get(email_id=email_id)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events_drain_task.delay()  # what beat does every SES_EVENTS_DRAIN_INTERVAL_SECONDS
        time.sleep(1)
        statuses = dict(message.recipients.values_list("email", "status"))
        if statuses == expected:
            break
    assert statuses == expected, celery_worker.log()[-3000:]

    record = api.get(f"/api/v1/emails/{email_id}").json()
    assert record["status"] == "complained"
    bounced = next(r for r in record["recipients"] if r["email"] == f"suppressionlist@{SIMULATOR}")
    assert bounced["bounce"]["subtype"] == "OnAccountSuppressionList"
    assert {e["type"] for e in record["events"]} == {"send", "delivery", "bounce", "complaint"}
    assert dict(Suppression.objects.values_list("email", "reason")) == {
        f"bounce@{SIMULATOR}": "hard_bounce",
        f"complaint@{SIMULATOR}": "complaint",
        f"suppressionlist@{SIMULATOR}": "hard_bounce",
    }
    analytics = api.get("/api/v1/groups/sandbox/analytics").json()
    assert (analytics["total"], analytics["delivered"], analytics["bounced"], analytics["complained"]) == (6, 4, 2, 1)
