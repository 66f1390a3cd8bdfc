"""A test key's emails through the real engine in this process: the mailbox
simulator's outcomes, and nothing of them in the rate limiter, the breaker's
counts or /stats (unless include_test=true)."""

import json

import pytest
from rest_framework.test import APIClient

from core.redisclient import redis_client
from emailsvc import listing
from emailsvc.keys import api_key_create
from emailsvc.models import Message, SendingCounts
from emailsvc.sending_control.ratelimit import rate_limit_backlog, rate_limit_from_settings
from tests.conftest import deliver_now

pytestmark = pytest.mark.django_db

SIMULATOR = "simulator.amazonses.com"


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.EMAIL_PROVIDER = "console"
    settings.ALLOWED_FROM_DOMAINS = ["example.com"]
    settings.ALLOWED_RECIPIENT_DOMAINS = []
    client = redis_client()
    for key in client.scan_iter(match=listing.STATS_CACHE_PREFIX + "*"):
        client.delete(key)


def key_client(**fields) -> APIClient:
    _, secret = api_key_create(name="ci", permission="sending", **fields)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def send(client, to) -> str:
    body = {"from": "ci@example.com", "to": to, "subject": "Hello", "text": "Hi"}
    response = client.post("/api/v1/emails", json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.content
    return response.json()["email_id"]


def totals(client, **query) -> dict:
    response = client.get("/api/v1/stats", query)
    assert response.status_code == 200, response.content
    found = response.json()["totals"]
    return {status: found[status] for status in ("sent", "delivered", "bounced", "complained")}


def test_test_emails_take_no_tokens_and_count_in_neither_the_breaker_nor_stats(
    settings, read_api, django_capture_on_commit_callbacks
):
    settings.SEND_RATE_PER_SECOND = 1  # ten emails that took tokens would book ten seconds ahead
    settings.SEND_RATE_BURST = 1
    limit = rate_limit_from_settings()
    test_client = key_client(test=True)
    addresses = [f"bounce@{SIMULATOR}", f"complaint@{SIMULATOR}"] + [f"user{n}@example.org" for n in range(8)]
    ids = [send(test_client, address) for address in addresses]
    with django_capture_on_commit_callbacks(execute=True):
        assert deliver_now(priority="low") == 10

    statuses = dict(Message.objects.filter(email_id__in=ids).values_list("recipients__email", "status"))
    assert statuses == {
        f"bounce@{SIMULATOR}": "bounced", f"complaint@{SIMULATOR}": "complained",
        **{f"user{n}@example.org": "delivered" for n in range(8)},
    }
    assert set(Message.objects.filter(email_id__in=ids).values_list("provider", flat=True)) == {"test"}
    assert rate_limit_backlog(limit=limit) == 0.0
    assert not SendingCounts.objects.exists()
    assert totals(read_api) == {"sent": 0, "delivered": 0, "bounced": 0, "complained": 0}
    # complaint@'s Delivery and Complaint are applied together: one transition, sent → complained.
    assert totals(read_api, include_test="true") == {"sent": 10, "delivered": 8, "bounced": 1, "complained": 1}

    # A live email of the same run is counted everywhere.
    live = send(key_client(), "live@example.org")
    with django_capture_on_commit_callbacks(execute=True):
        assert deliver_now(priority="low") == 1
    assert Message.objects.get(email_id=live).provider == "console"
    assert list(SendingCounts.objects.values_list("sending_domain", "sent")) == [("example.com", 1)]
    assert totals(read_api)["sent"] == 1
    assert totals(read_api, include_test="true")["sent"] == 11


def test_a_test_key_scoped_to_a_domain_is_refused_elsewhere(settings):
    settings.ALLOWED_FROM_DOMAINS = ["example.com", "other.example"]
    client = key_client(test=True, domains=["example.com"])
    body = {"from": "ci@other.example", "to": "jane@example.org", "subject": "Hi", "text": "Hi"}
    response = client.post("/api/v1/emails", json.dumps(body), content_type="application/json")
    assert (response.status_code, response.json()["error"]) == (403, "key_domain_not_allowed")


def test_a_test_emails_outcome_is_recorded_with_its_send_in_one_transaction():
    """No commit stands between the record of a test email and its simulated
    outcome: with no on-commit callback run at all, it is already delivered."""
    email_id = send(key_client(test=True), "user@example.org")
    assert deliver_now(priority="low") == 1  # this test's transaction: on-commit callbacks never run
    message = Message.objects.get(email_id=email_id)
    assert (message.status, message.recipients.get().status) == ("delivered", "delivered")


def test_simulated_events_that_fail_leave_the_record_of_the_send(caplog):
    from emailsvc.providers.testmode import simulated_events

    def broken(**kwargs):
        raise ValueError("a simulated event that cannot be applied")

    simulated_events.connect(broken, dispatch_uid="tests.broken")
    try:
        email_id = send(key_client(test=True), "user@example.org")
        assert deliver_now(priority="low") == 1
    finally:
        simulated_events.disconnect(dispatch_uid="tests.broken")
    message = Message.objects.get(email_id=email_id)
    assert (message.status, message.recipients.get().status) == ("sent", "sent")
    assert message.provider_message_id.startswith("test-")
    assert any("simulated events of 1 test emails were not applied" in r.getMessage() for r in caplog.records)


def test_a_test_keys_emails_are_not_counted_as_accepted_in_metrics(settings, django_capture_on_commit_callbacks):
    from django.test import Client

    from tests.console.test_metrics import TOKEN, scrape, value

    settings.METRICS_TOKEN, settings.METRICS_PUBLIC = TOKEN, False

    def accepted(endpoint: str) -> float:
        return value(scrape(Client()), "emailsvc_emails_accepted_total", priority="normal", endpoint=endpoint, stream="transactional")

    single, batch = accepted("single"), accepted("batch")
    test_client = key_client(test=True)
    body = {"emails": [{"from": "ci@example.com", "to": f"u{n}@example.org", "subject": "Hi", "text": "Hi"} for n in range(3)]}
    with django_capture_on_commit_callbacks(execute=True):  # counted once committed
        send(test_client, "user@example.org")
        assert test_client.post("/api/v1/emails/batch", json.dumps(body), content_type="application/json").status_code == 200
    assert (accepted("single"), accepted("batch")) == (single, batch)
    with django_capture_on_commit_callbacks(execute=True):
        send(key_client(), "live@example.org")
    assert accepted("single") == single + 1
