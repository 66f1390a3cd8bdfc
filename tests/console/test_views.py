"""The operator console through Django's test client: the address page, the
message page and its actions, the operations pages, the operator's time zone,
and the searches of the big lists (issue 18)."""

import json
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from emailsvc.models import Message, SendingPause, Status, Suppression, WorkState
from emailsvc.sending_control.breaker import sending_pause
from emailsvc.suppressions.services import suppression_add
from tests.console.conftest import ADDRESS
from tests.tracking.scenario import accepted_message, sent_message

pytestmark = pytest.mark.django_db


def text(response) -> str:
    return response.content.decode()


# --- The address page -------------------------------------------------------------------


def test_one_search_shows_every_email_its_timeline_and_why_it_is_suppressed(admin_client, support_case):
    response = admin_client.get("/admin/address/", {"q": " Jane.DOE@Example.com "})

    assert response.status_code == 200
    history = response.context["history"]
    assert history.address == ADDRESS
    # Newest first, the suppressed email (no events, only its transition) included.
    assert [item.message for item in history.messages] == [
        support_case.suppressed, support_case.retry, support_case.hard_bounced, support_case.soft_bounced,
        support_case.delivered,
    ]
    suppressed = history.messages[0]
    assert suppressed.recipient.status == Status.SUPPRESSED
    assert [entry.title for entry in suppressed.timeline] == ["accepted", "queued → suppressed"]
    bounced = next(item for item in history.messages if item.message == support_case.hard_bounced)
    assert [(entry.kind, entry.title) for entry in bounced.timeline] == [
        ("accepted", "accepted"), ("status", "queued → sent"), ("event", "Bounce"), ("status", "sent → bounced"),
    ]
    assert ("Diagnostic", "smtp; 550 5.1.1 user unknown") in bounced.timeline[2].facts
    # The suppression, with its source linked to the event and the email that caused it.
    assert history.suppression.reason == Suppression.Reason.HARD_BOUNCE and history.suppression_active
    source = history.suppression_source
    assert source.message_email_id == support_case.hard_bounced.email_id
    assert source.event_url.startswith("/admin/tracking/engagementevent/")
    assert history.soft_bounces == 1
    page = text(response)
    assert f'href="/admin/emailsvc/message/{support_case.hard_bounced.pk}/change/"' in page
    assert "Lift" in page and "Resend to jane.doe@example.com" in page
    assert "Cancel this email" in page  # the scheduled re-send of the soft bounce


def test_the_address_page_shows_complaint_feedback(admin_client, support_case):
    history = admin_client.get("/admin/address/", {"q": "carol@example.com"}).context["history"]

    assert history.suppression.reason == Suppression.Reason.COMPLAINT
    assert history.suppression_source.message_email_id == support_case.complained.email_id
    assert [complaint["message_email_id"] for complaint in history.complaints] == [support_case.complained.email_id]
    assert ("Feedback type", "abuse") in history.complaints[0]["facts"]


def test_an_address_never_sent_to_says_so_and_can_be_suppressed(admin_client):
    response = admin_client.get("/admin/address/", {"q": "nobody@example.com"})
    assert "No email was sent to this address" in text(response)

    response = admin_client.post(
        "/admin/address/suppress/",
        {"email": "Nobody@Example.com", "reason": "manual", "note": "asked by phone", "next": "/admin/address/?q=nobody%40example.com"},
    )

    assert response.status_code == 302 and response["Location"] == "/admin/address/?q=nobody%40example.com"
    suppression = Suppression.objects.get(email="nobody@example.com")
    assert (suppression.reason, suppression.source, suppression.note) == ("manual", "admin:admin", "asked by phone")


def test_lift_goes_through_the_service_and_back_to_the_page(admin_client, support_case):
    response = admin_client.post("/admin/address/lift/", {"email": ADDRESS, "next": "https://evil.example/"}, follow=True)

    assert response.redirect_chain[-1][0] == f"/admin/address/?q={ADDRESS.replace('@', '%40')}"  # not off-site
    assert "no longer suppressed" in text(response)
    assert not Suppression.objects.filter(email=ADDRESS).exists()


def test_searching_an_email_id_opens_that_email(admin_client, support_case):
    response = admin_client.get("/admin/address/", {"q": support_case.delivered.email_id})

    assert response.status_code == 302
    assert response["Location"] == f"/admin/emailsvc/message/{support_case.delivered.pk}/change/"


def test_older_emails_page_by_message(admin_client, api):
    for number in range(3):
        accepted_message(api, ["many@example.com"], subject=f"number {number}")
    from console.selectors import address_history

    first = address_history(address="many@example.com", page_size=2)
    older = address_history(address="many@example.com", before=first.next_before, page_size=2)

    assert [item.message.subject for item in first.messages] == ["number 2", "number 1"]
    assert [item.message.subject for item in older.messages] == ["number 0"] and older.next_before is None
    page = admin_client.get("/admin/address/", {"q": "many@example.com", "before": first.next_before})
    assert [item.message.subject for item in page.context["history"].messages] == ["number 0"]


# --- The message page and its actions ------------------------------------------------------


def test_message_page_shows_facts_as_fields_the_history_and_hides_what_it_does_not_use(admin_client, support_case):
    response = admin_client.get(f"/admin/emailsvc/message/{support_case.hard_bounced.pk}/change/")

    page = text(response)
    overview = response.context["overview"]
    assert overview.recipients[0].bounce[:3] == [
        ("Bounce type", "Permanent"), ("Bounce subtype", "General"), ("Diagnostic", "smtp; 550 5.1.1 user unknown"),
    ]
    assert "&quot;type&quot;" not in page and '"Permanent"' not in page  # no JSON
    assert [entry.title for entry in overview.timeline] == ["accepted", "queued → sent", "Bounce", "sent → bounced"]
    sent_at = timezone.localtime(support_case.hard_bounced.sent_at, timezone=timezone.get_fixed_timezone(0))
    assert sent_at.strftime("%Y-%m-%d %H:%M:%S") in page  # to the second
    fields = {field for fieldset in response.context["adminform"].fieldsets for line in fieldset[1]["fields"] for field in line}
    assert "template_used" not in fields and "send_at" not in fields and "template_data" not in fields
    assert 'id="resend-message"' in page and 'id="cancel-message"' not in page  # sent: not cancellable


def test_message_page_links_template_and_resends(admin_client, api, db):
    from templates_app.services import template_create

    version = template_create(
        name="welcome", created_by="test",
        data={"subject": "Hi {{ name }}", "html": "<p>Hello {{ name }}</p>", "text": "", "sample_data": {"name": "x"}},
    )
    message = accepted_message(api, ["t@example.com"], template="welcome", template_data={"name": "Ann"})
    message.refresh_from_db()
    admin_client.post(f"/admin/messages/{message.pk}/resend/")
    retry = Message.objects.get(retry_of=message)

    page = text(admin_client.get(f"/admin/emailsvc/message/{message.pk}/change/"))

    assert f"/admin/templates_app/template/{version.template_id}/versions/1/preview/" in page
    assert f'href="/admin/emailsvc/message/{retry.pk}/change/"' in page
    retry_page = text(admin_client.get(f"/admin/emailsvc/message/{retry.pk}/change/"))
    assert f'href="/admin/emailsvc/message/{message.pk}/change/"' in retry_page  # retry_of, linked
    assert "welcome@1" in retry_page


def test_message_page_lists_webhook_deliveries_when_they_exist(admin_client, api, settings):
    endpoints = pytest.importorskip("tracking.webhooks.endpoints")
    outbox = pytest.importorskip("tracking.webhooks.outbox")
    settings.WEBHOOK_ALLOW_HTTP = settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    endpoint, _ = endpoints.webhook_endpoint_create(url="http://127.0.0.1:9/hooks", event_types=["*"])
    message = sent_message(api, ["hooked@example.com"])
    outbox.webhooks_dispatch()

    overview = admin_client.get(f"/admin/emailsvc/message/{message.pk}/change/").context["overview"]

    assert [d.endpoint.public_id for d in overview.webhook_deliveries] == [endpoint.public_id]
    assert overview.webhook_deliveries[0].event_type == "sent"


def test_cancel_only_what_has_not_been_claimed(admin_client, api):
    later = (timezone.now() + timedelta(hours=2)).isoformat()
    scheduled = accepted_message(api, ["later@example.com"], send_at=later)
    sent = sent_message(api, ["now@example.com"])
    assert 'id="cancel-message"' in text(admin_client.get(f"/admin/emailsvc/message/{scheduled.pk}/change/"))

    done = admin_client.post(f"/admin/messages/{scheduled.pk}/cancel/", follow=True)
    refused = admin_client.post(f"/admin/messages/{sent.pk}/cancel/", follow=True)

    assert "cancelled: it will not be sent" in text(done)
    assert Message.objects.get(pk=scheduled.pk).status == Status.CANCELLED
    assert "Not cancelled" in text(refused) and Message.objects.get(pk=sent.pk).status == Status.SENT


def test_actions_need_their_permissions(client, support_case):
    staff = User.objects.create_user("support", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get("/admin/address/", {"q": ADDRESS}).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_message"))

    assert client.get("/admin/address/", {"q": ADDRESS}).status_code == 200
    assert client.post("/admin/address/lift/", {"email": ADDRESS}).status_code == 403
    assert client.post(f"/admin/messages/{support_case.delivered.pk}/resend/").status_code == 403
    assert client.post("/admin/operations/sending/resume/").status_code == 403
    assert client.get("/admin/address/lift/").status_code == 405
    assert Suppression.objects.filter(email=ADDRESS).exists()
    assert not Message.objects.filter(retry_of=support_case.delivered).exists()


def test_console_pages_need_a_staff_login(client):
    response = client.get("/admin/address/", {"q": ADDRESS})
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


# --- Time zone ----------------------------------------------------------------------------


def test_times_are_shown_in_the_browsers_zone_or_the_configured_one(admin_client, api, settings):
    message = accepted_message(api, ["zone@example.com"])
    url = f"/admin/emailsvc/message/{message.pk}/change/"
    created = message.created_at

    admin_client.cookies["emailsvc_admin_tz"] = "Asia/Tokyo"
    tokyo = text(admin_client.get(url))
    settings.ADMIN_TIME_ZONE = "America/New_York"
    new_york = text(admin_client.get(url))
    admin_client.cookies["emailsvc_admin_tz"] = "Not/AZone"
    settings.ADMIN_TIME_ZONE = "browser"
    fallback = text(admin_client.get(url))

    def shown(zone: str) -> str:
        import zoneinfo

        return created.astimezone(zoneinfo.ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S %Z")

    assert shown("Asia/Tokyo") in tokyo and "Times in Asia/Tokyo" in tokyo
    assert shown("America/New_York") in new_york and "Times in America/New_York" in new_york
    assert shown("UTC") in fallback
    assert api.get(f"/api/v1/emails/{message.email_id}").json()["created_at"].endswith("Z")  # the API stays UTC


# --- Operations -----------------------------------------------------------------------------


def test_sending_page_pauses_and_resumes_through_the_breaker_service(admin_client, api):
    admin_client.post("/admin/operations/sending/pause/", {"domain": "Example.com", "reason": "DNS change"})
    held = accepted_message(api, ["someone@example.com"])
    assert held.state == WorkState.HELD

    page = admin_client.get("/admin/operations/sending/")
    entry = next(d for d in page.context["overview"]["domains"] if d["domain"] == "example.com")
    assert entry["paused"] and entry["cause"] == "operator" and entry["held"] == 1
    assert "admin:admin: DNS change" in text(page)

    admin_client.post("/admin/operations/sending/resume/", {"domain": "example.com"})

    pause = SendingPause.objects.get(domain="example.com")
    assert pause.resumed_at is not None and pause.resumed_by == "admin:admin"
    held.refresh_from_db()
    assert held.state == WorkState.QUEUED


def test_account_pause_is_resumed_from_the_page(admin_client):
    sending_pause(domain=SendingPause.ACCOUNT, cause=SendingPause.Cause.PROVIDER, reason="SES: sending disabled")
    page = text(admin_client.get("/admin/operations/sending/"))
    assert "the whole account" in page and "SES: sending disabled" in page

    admin_client.post("/admin/operations/sending/resume/", {"domain": "*"})

    assert not SendingPause.objects.filter(resumed_at__isnull=True).exists()


def test_queues_page_reads_the_events_queue_its_dlq_the_last_drain_and_the_backlog(admin_client, api, events_queue, moto_server):
    from tracking.drain import drain_report_save

    sqs = events_queue.sqs
    dlq_url = sqs.create_queue(QueueName=events_queue.url.rsplit("/", 1)[1] + "-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sqs.set_queue_attributes(
        QueueUrl=events_queue.url, Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5})}
    )
    sqs.send_message(QueueUrl=dlq_url, MessageBody="{}")
    events_queue.put({"a": 1}, {"b": 2}, {"c": 3})
    drain_report_save({"at": time.time() - 30, "waiting": 3, "in_flight": 0, "lag_seconds": 12.5, "received": 7,
                       "applied": 6, "failed": 1, "malformed": 0, "errors": ["receive failed: boom"]})
    accepted_message(api, ["due@example.com"], priority="high")

    response = admin_client.get("/admin/operations/queues/")

    probes = response.context["probes"]
    assert probes["events_queue"].value == {"url": events_queue.url, "waiting": 3, "in_flight": 0, "dlq": 1}
    assert probes["drain"].value["lag_seconds"] == 12.5 and 29 < probes["drain"].value["age_seconds"] < 60
    high = next(row for row in response.context["backlog"] if row["priority"] == "high")
    assert high["due"] == 1 and "broker" in high
    assert probes["limiter"].value["per_second"] > 0
    assert "receive failed: boom" in text(response)


def test_queues_page_answers_quickly_when_sqs_cannot_be_reached(admin_client, settings):
    from config.devservices import free_port

    settings.AWS_ENDPOINT_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings.SES_EVENTS_QUEUE_URL = f"{settings.AWS_ENDPOINT_URL}/123456789012/gone"

    started = time.monotonic()
    response = admin_client.get("/admin/operations/queues/")

    assert response.status_code == 200 and time.monotonic() - started < 6
    assert response.context["probes"]["events_queue"].error
    assert "unavailable" in text(response)


# --- The big lists' searches ------------------------------------------------------------------


def test_list_searches_are_exact_indexed_lookups(admin_client, support_case):
    def listed(url, term):
        return list(admin_client.get(url, {"q": term}).context["cl"].result_list)

    delivered = support_case.delivered
    assert set(listed("/admin/emailsvc/message/", "JANE.DOE@example.com")) == {
        support_case.delivered, support_case.soft_bounced, support_case.retry, support_case.hard_bounced,
        support_case.suppressed,
    }
    assert listed("/admin/emailsvc/message/", delivered.email_id) == [delivered]
    assert listed("/admin/emailsvc/message/", delivered.provider_message_id) == [delivered]
    events = listed("/admin/tracking/engagementevent/", ADDRESS)
    assert {event.event_type for event in events} == {"delivery", "open", "bounce"}
    assert {event.message_id for event in listed("/admin/tracking/engagementevent/", delivered.email_id)} == {delivered.pk}
    changes = listed("/admin/emailsvc/statuschange/", ADDRESS)
    assert {change.to_status for change in changes} >= {"sent", "bounced", "suppressed", "soft_bounced", "opened"}
    assert {change.message_id for change in listed("/admin/emailsvc/statuschange/", delivered.email_id)} == {delivered.pk}
    suppression_add(email="jane.other@example.org", reason="manual")
    assert [s.email for s in listed("/admin/emailsvc/suppression/", "JANE")] == ["jane.other@example.org", ADDRESS]
    assert listed("/admin/emailsvc/message/", "no-such-id") == []


def test_odd_input_is_answered_not_a_server_error(admin_client):
    assert admin_client.get("/admin/address/", {"q": "ja\x00ne@example.com"}).status_code == 200
    assert admin_client.get("/admin/address/", {"q": "x" * 5000 + "@example.com"}).status_code == 200
    for url in ("/admin/emailsvc/message/", "/admin/tracking/engagementevent/", "/admin/emailsvc/statuschange/",
                "/admin/emailsvc/suppression/"):
        assert admin_client.get(url, {"q": "a\x00b@example.com"}).status_code == 200, url
    refused = admin_client.post("/admin/address/suppress/", {"email": "not an address", "reason": "manual"}, follow=True)
    assert "not a valid email address" in text(refused) and not Suppression.objects.exists()
