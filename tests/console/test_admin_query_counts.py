"""Every admin list page, and the console's pages, run the same number of
queries whatever the number of rows they show (no N+1): each is loaded with a
few rows and with ten times as many, and the queries counted (issue 18).

Every model registered in the admin must have a case here: a new list page
without one fails `test_every_admin_list_page_has_a_query_count_case`.
"""

import json
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group as AuthGroup
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from emailsvc.keys import api_key_create
from emailsvc.models import Message, Recipient, SendingPause, StatusChange
from emailsvc.sending_control.breaker import sending_pause, sending_resume
from emailsvc.suppressions.services import suppression_add
from tests.conftest import deliver_now

pytestmark = pytest.mark.django_db

FEW, MANY = 3, 30
_counter = iter(range(1, 10**9))


def _n() -> int:
    return next(_counter)


def _send(api, count: int, **fields) -> list[Message]:
    """`count` emails through the batch API, each to two addresses, delivered in-process."""
    emails = [
        {"to": [f"reader{_n()}@example.com", "shared@example.com"], "subject": "Hello", "text": "Hi", "group_id": "g1",
         **fields}
        for _ in range(count)
    ]
    response = api.post("/api/v1/emails/batch", json.dumps({"emails": emails}), content_type="application/json")
    assert response.status_code == 200, response.content
    deliver_now(priority="normal")
    return list(Message.objects.filter(email_id__in=[item["email_id"] for item in response.json()["data"]]))


def _events(messages: list[Message], per_message: int = 2) -> None:
    from tracking.models import EngagementEvent

    now = timezone.now()
    rows = []
    for message in messages:
        for recipient in Recipient.objects.filter(message=message):
            for kind in ("delivery", "open")[:per_message]:
                rows.append(EngagementEvent(
                    event_id=f"ev-{_n()}", recipient_email=recipient.email, event_type=kind, message=message,
                    recipient=recipient, provider_message_id=message.provider_message_id, occurred_at=now,
                    source="sqs", detail={"user_agent": "x"}, raw={},
                ))
    EngagementEvent.objects.bulk_create(rows)


def make_messages(api, count):
    _send(api, count)


def make_events(api, count):
    _events(_send(api, max(1, count // 4)))


def make_status_changes(api, count):
    _send(api, max(1, count // 2))


def make_suppressions(api, count):
    for _ in range(count):
        suppression_add(email=f"s{_n()}@example.com", reason="hard_bounce", source=f"ses:bounce:ev-{_n()}")


def make_api_keys(api, count):
    for _ in range(count):
        api_key_create(name=f"key {_n()}")


def make_templates(api, count):
    from templates_app.services import template_create, template_update

    for _ in range(count):
        name = f"t{_n()}"
        template_create(name=name, data={"subject": "Hi {{ x }}", "text": "x"})
        template_update(name=name, data={"subject": "Hello {{ x }}", "text": "y"})


def make_sending_pauses(api, count):
    for _ in range(count):
        domain = f"d{_n()}.example.com"
        sending_pause(domain=domain, cause=SendingPause.Cause.BREAKER, reason="bounce rate", figures={"sent": 1})
        if _n() % 2:
            sending_resume(domain=domain, by="test")


def make_webhook_endpoints(api, count):
    from tracking.webhooks.endpoints import webhook_endpoint_create

    for _ in range(count):
        webhook_endpoint_create(url=f"http://127.0.0.1:9/hook{_n()}", event_types=["*"])


def make_webhook_deliveries(api, count):
    from tracking.models import WebhookEndpoint
    from tracking.webhooks.endpoints import webhook_endpoint_create
    from tracking.webhooks.outbox import webhooks_dispatch

    if not WebhookEndpoint.objects.exists():
        webhook_endpoint_create(url="http://127.0.0.1:9/hook", event_types=["*"])
    _send(api, max(1, count // 2))
    webhooks_dispatch()


def make_users(api, count):
    for _ in range(count):
        User.objects.create_user(f"user{_n()}", is_staff=True)


def make_auth_groups(api, count):
    for _ in range(count):
        AuthGroup.objects.create(name=f"group{_n()}")


# (app_label.model_name, row maker, extra query strings of the same page to count too)
CASES = {
    "emailsvc.message": (make_messages, [{}, {"q": "shared@example.com"}, {"q": "g1"}, {"status__exact": "sent"}]),
    "tracking.engagementevent": (make_events, [{}, {"q": "shared@example.com"}, {"event_type__exact": "open"}]),
    "emailsvc.statuschange": (make_status_changes, [{}, {"q": "shared@example.com"}, {"to_status__exact": "sent"}]),
    "emailsvc.suppression": (make_suppressions, [{}, {"q": "s"}, {"reason__exact": "hard_bounce"}]),
    "emailsvc.apikey": (make_api_keys, [{}]),
    "templates_app.template": (make_templates, [{}]),
    "emailsvc.sendingpause": (make_sending_pauses, [{}]),
    "tracking.webhookendpoint": (make_webhook_endpoints, [{}]),
    "tracking.webhookdelivery": (make_webhook_deliveries, [{}]),
    "auth.user": (make_users, [{}]),
    "auth.group": (make_auth_groups, [{}]),
}


@pytest.fixture(autouse=True)
def _webhook_targets(settings):
    settings.WEBHOOK_ALLOW_HTTP = settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    settings.SEND_RATE_PER_SECOND = 0


def test_every_admin_list_page_has_a_query_count_case():
    registered = {f"{model._meta.app_label}.{model._meta.model_name}" for model in admin.site._registry}
    assert registered - set(CASES) == set(), "add a query-count case for these admin list pages"


def _count(client, url: str, params: dict) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, params)
    assert response.status_code == 200, (url, params, response.content[:500])
    return len(queries), len(response.context["cl"].result_list)


@pytest.mark.parametrize("label", sorted(CASES))
def test_list_page_queries_do_not_grow_with_its_rows(label, admin_client, api):
    app_label, model_name = label.split(".")
    if f"{app_label}.{model_name}" not in {f"{m._meta.app_label}.{m._meta.model_name}" for m in admin.site._registry}:
        pytest.skip(f"{label} is not in the admin")
    make, variants = CASES[label]
    url = reverse(f"admin:{app_label}_{model_name}_changelist")

    make(api, FEW)
    few = [_count(admin_client, url, params) for params in variants]
    make(api, MANY - FEW)
    many = [_count(admin_client, url, params) for params in variants]

    for params, (queries_few, rows_few), (queries_many, rows_many) in zip(variants, few, many, strict=True):
        assert rows_many > rows_few, (label, params, rows_few, rows_many)
        assert queries_many == queries_few, f"{label} {params}: {queries_few} queries at {rows_few} rows, {queries_many} at {rows_many}"
        print(f"QUERIES {label} {params or ''}: {queries_many}")


def _page_queries(client, url, params=None) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, params or {})
    assert response.status_code == 200, response.content[:500]
    return len(queries)


def test_address_page_queries_do_not_grow_with_its_emails_and_events(admin_client, api):
    def emails(count):
        messages = _send(api, count)
        _events(messages)
        suppression_add(email="shared@example.com", reason="hard_bounce", source=f"ses:bounce:ev-{_n()}")

    emails(2)
    few = _page_queries(admin_client, "/admin/address/", {"q": "shared@example.com"})
    emails(20)
    many = _page_queries(admin_client, "/admin/address/", {"q": "shared@example.com"})

    assert many == few, (few, many)
    print(f"QUERIES address page: {many}")


def test_message_page_queries_do_not_grow_with_its_recipients_and_events(admin_client, api):
    few_recipients = _send(api, 1)[0]
    _events([few_recipients], per_message=1)
    many_body = {
        "to": [f"r{i}@example.com" for i in range(40)], "cc": ["c@example.com"], "subject": "x", "text": "y",
    }
    email_id = api.post("/api/v1/emails", json.dumps(many_body), content_type="application/json").json()["email_id"]
    deliver_now(priority="normal")
    many_recipients = Message.objects.get(email_id=email_id)
    _events([many_recipients])

    _page_queries(admin_client, f"/admin/emailsvc/message/{few_recipients.pk}/change/")  # warm Django's caches
    few = _page_queries(admin_client, f"/admin/emailsvc/message/{few_recipients.pk}/change/")
    many = _page_queries(admin_client, f"/admin/emailsvc/message/{many_recipients.pk}/change/")

    assert StatusChange.objects.filter(message=many_recipients).count() == 41
    assert many == few, (few, many)
    print(f"QUERIES message page: {many}")


def test_operations_pages_queries_do_not_grow_with_paused_domains(admin_client, api):
    make_sending_pauses(api, 2)
    few = _page_queries(admin_client, "/admin/operations/sending/")
    queues = _page_queries(admin_client, "/admin/operations/queues/")
    for _ in range(10):
        sending_pause(domain=f"more{_n()}.example.com", cause=SendingPause.Cause.OPERATOR, reason="x")
    many = _page_queries(admin_client, "/admin/operations/sending/")

    assert many == few, (few, many)
    assert _page_queries(admin_client, "/admin/operations/queues/") == queues
    print(f"QUERIES sending page: {many}; queues page: {queues}")


def test_queues_page_queries_do_not_grow_with_the_backlog(admin_client, api):
    later = (timezone.now() + timedelta(hours=1)).isoformat()
    before = _page_queries(admin_client, "/admin/operations/queues/")
    _send(api, 5, send_at=later)
    assert _page_queries(admin_client, "/admin/operations/queues/") == before


def test_counts_past_the_exact_limit_are_estimated_or_capped_never_counted_whole(api, monkeypatch, admin_client):
    from core.admin_lists import EstimatedCountPaginator

    monkeypatch.setattr(EstimatedCountPaginator, "exact_up_to", 5)
    _send(api, 8)
    everything = EstimatedCountPaginator(Message.objects.order_by("-pk"), 100)
    filtered = EstimatedCountPaginator(Message.objects.filter(status="sent").order_by("-pk"), 100)
    few = EstimatedCountPaginator(Message.objects.filter(pk=Message.objects.first().pk).order_by("-pk"), 100)

    assert (everything.count, everything.count_label) == (8, "about 8")  # the id span: never analysed here
    assert (filtered.count, filtered.count_label) == (5, "more than 5")
    assert (few.count, few.count_label) == (1, "1")
    page = admin_client.get("/admin/emailsvc/message/").content.decode()
    assert "about 8 messages" in page
    assert "more than 5 results" in admin_client.get("/admin/emailsvc/message/", {"q": "g1"}).content.decode()
