"""Deliverability safety in one process, with real SMTP and SES events: soft bounces
earn one re-send, too many suppress; the breaker pauses the domain at fault (its
emails wait, others go) at its rates only above the minimum volume; resuming
sends what waited, once; the sending-status API and the resume command."""

import json
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from emailsvc.models import ApiKey, Message, SendingPause, Suppression
from emailsvc.sending_control.breaker import breaker_check, sending_pause, sending_resume
from tests.conftest import deliver_now
from tests.tracking.sesevents import ses_event, sns_envelope
from tracking.apply import events_apply
from tracking.models import EngagementEvent
from tracking.normalize import ses_body_parse

pytestmark = pytest.mark.django_db


@pytest.fixture
def smtp(settings, smtp_server):
    settings.EMAIL_PROVIDER = "smtp"
    settings.EMAIL_HOST, settings.EMAIL_PORT = smtp_server.host, smtp_server.port
    settings.SEND_RATE_PER_SECOND = 0
    settings.ALLOWED_FROM_DOMAINS = ["good.example", "bad.example", "example.com"]
    return smtp_server


def accept(api, **body) -> Message:
    body = {"subject": "Hello", "text": "Hi", **body}
    response = api.post("/api/v1/emails", json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.json()
    return Message.objects.get(email_id=response.json()["email_id"])


def apply(message: Message, event_type: str, recipient: str, **details) -> None:
    message.refresh_from_db()
    envelope = sns_envelope(ses_event(event_type, message_id=message.provider_message_id, recipients=[recipient], **details))
    events_apply(events=ses_body_parse(envelope), source="sqs")


SOFT = {"bounce_type": "Transient", "bounce_subtype": "MailboxFull"}


# --- Soft bounces --------------------------------------------------------------------


def test_a_soft_bounce_earns_one_resend_after_the_delay_then_a_second_one_fails(api, smtp, settings):
    settings.SOFT_BOUNCE_RETRY_SECONDS = 900
    original = accept(api, to=["full@example.org", "fine@example.org"])
    deliver_now()

    apply(original, "Bounce", "full@example.org", **SOFT)
    apply(original, "Bounce", "full@example.org", **SOFT)  # another soft bounce of the same send

    (resend,) = Message.objects.filter(retry_of=original)
    assert [r.email for r in resend.recipients.all()] == ["full@example.org"]
    assert (resend.status, resend.subject) == ("scheduled", original.subject)
    assert timedelta(seconds=890) < resend.send_at - timezone.now() <= timedelta(seconds=900)
    assert api.get(f"/api/v1/emails/{resend.email_id}").json()["retry_of"] == original.email_id
    assert deliver_now() == 0  # not before its time

    Message.objects.filter(pk=resend.pk).update(next_attempt_at=timezone.now())  # its time has come
    assert deliver_now() == 1
    assert len(smtp.wait_for(resend.email_id)) == 1
    apply(resend, "Bounce", "full@example.org", **SOFT)

    recipient = resend.recipients.get()
    assert (recipient.status, recipient.failed_reason) == ("failed", "soft-bounced again: MailboxFull")
    assert not Message.objects.filter(retry_of=resend).exists()  # no third send
    assert not Suppression.objects.filter(email="full@example.org").exists()  # failed, not suppressed
    assert original.recipients.get(email="full@example.org").status == "soft_bounced"


def test_the_fifteenth_soft_bounce_in_thirty_days_suppresses_the_address(api, smtp, settings):
    settings.SOFT_BOUNCE_LIMIT = 15
    message = accept(api, to="flaky@example.org")
    deliver_now()
    old = timezone.now() - timedelta(days=31)
    for n in range(13):  # 13 within the window, and one older that does not count
        EngagementEvent.objects.create(
            event_id=f"old-{n}", recipient_email="flaky@example.org", event_type="bounce", occurred_at=timezone.now() - timedelta(days=n),
            source="sqs", detail={"bounce_type": "Transient"}, raw={},
        )
    EngagementEvent.objects.create(
        event_id="older", recipient_email="flaky@example.org", event_type="bounce", occurred_at=old, source="sqs",
        detail={"bounce_type": "Transient"}, raw={},
    )

    apply(message, "Bounce", "flaky@example.org", **SOFT)  # the 14th
    assert not Suppression.objects.filter(email="flaky@example.org").exists()

    apply(message, "Bounce", "flaky@example.org", **SOFT)  # the 15th
    suppression = Suppression.objects.get(email="flaky@example.org")
    assert suppression.reason == "soft_bounce_limit"
    assert accept(api, to="flaky@example.org").status == "suppressed"


# --- The breaker ------------------------------------------------------------------------


def sent_from(api, domain: str, count: int, *, bounced: int = 0, complained: int = 0, **fields) -> list[Message]:
    run = uuid.uuid4().hex[:8]  # fresh addresses: a bounce suppresses its address
    messages = [
        accept(api, **{"from": f"news@{domain}", "to": f"r{n}-{run}@example.org", **fields}) for n in range(count)
    ]
    deliver_now()
    for message in messages[:bounced]:
        apply(message, "Bounce", message.recipients.get().email, bounce_type="Permanent", bounce_subtype="General")
    for message in messages[bounced : bounced + complained]:
        apply(message, "Complaint", message.recipients.get().email, feedback_type="abuse")
    return messages


# The breaker's counts are fed from status changes once they commit: its tests commit.
committed = pytest.mark.django_db(transaction=True)


@pytest.fixture
def breaker(settings):
    settings.BREAKER_MIN_SENT = 20
    settings.BOUNCE_RATE_PAUSE = 0.10
    settings.COMPLAINT_RATE_PAUSE = 0.05


@committed
def test_the_breaker_waits_for_the_minimum_volume_then_trips_at_the_line(api, smtp, breaker):
    sent_from(api, "bad.example", 19, bounced=2)  # 10.5 %, but only 19 sent
    assert breaker_check().paused == []
    sent_from(api, "good.example", 20, bounced=1)  # 5 %: under the line
    assert breaker_check().paused == []

    sent_from(api, "bad.example", 1)  # 20 sent, 2 bounced: 10 %, on the line
    result = breaker_check()

    # The stream at fault is paused, not the domain's other streams.
    assert (result.paused, result.paused_streams) == ([], [("bad.example", "transactional")])
    pause = SendingPause.objects.get(domain="bad.example", resumed_at__isnull=True)
    assert pause.stream == "transactional"
    assert pause.cause == "breaker" and pause.figures["bounce_rate"] == 0.1 and pause.figures["sent"] == 20
    assert "bounce rate 10.00%" in pause.reason


@committed
def test_a_complaint_rate_over_its_line_trips_too(api, smtp, breaker):
    sent_from(api, "bad.example", 20, complained=1)  # 5 %
    assert breaker_check().paused_streams == [("bad.example", "transactional")]


@committed
def test_a_paused_domain_waits_while_another_delivers_and_resume_sends_each_once(api, smtp, breaker):
    sent_from(api, "bad.example", 20, bounced=3)
    assert breaker_check().paused_streams == [("bad.example", "transactional")]

    waiting = [accept(api, **{"from": "news@bad.example", "to": f"w{n}@example.org"}) for n in range(3)]
    going = accept(api, **{"from": "help@good.example", "to": "reset@example.org", "priority": "high"})
    assert {m.status for m in waiting} == {"queued"}
    assert set(Message.objects.filter(pk__in=[m.pk for m in waiting]).values_list("state", flat=True)) == {"held"}

    assert deliver_now() == 1
    assert len(smtp.wait_for(going.email_id)) == 1
    assert all(smtp.matching(m.email_id) == [] for m in waiting)
    status = api.get("/api/v1/sending-status").json()
    bad = next(d for d in status["domains"] if d["domain"] == "bad.example")
    assert (bad["paused"], status["account"]["paused"]) == (False, False)  # one stream of it is
    assert [(s["stream"], s["paused"], s["cause"]) for s in bad["streams"]] == [("transactional", True, "breaker")]
    assert bad["last_24h"]["bounced"] == bad["streams"][0]["last_24h"]["bounced"] == 3

    assert sending_resume(domain="bad.example", by="test") == 1
    assert deliver_now() == 3
    assert [len(smtp.matching(m.email_id)) for m in waiting] == [1, 1, 1]
    assert deliver_now() == 0
    # Judged again only on what it sends after the resume.
    assert breaker_check().paused == []


def test_an_account_wide_pause_stops_every_domain_and_the_api_keeps_accepting(api, smtp):
    sending_pause(domain="*", cause="operator", reason="maintenance")
    message = accept(api, to="later@example.org")
    assert deliver_now() == 0
    assert smtp.matching(message.email_id) == []
    sending_resume(domain="*", by="test")
    assert deliver_now() == 1
    assert len(smtp.wait_for(message.email_id)) == 1


def test_a_held_email_can_be_cancelled(api, smtp):
    sending_pause(domain="example.com", cause="operator", reason="checking the list")
    message = accept(api, to="held@example.org")
    response = api.post(f"/api/v1/emails/{message.email_id}/cancel")
    assert (response.status_code, response.json()["status"]) == (200, "cancelled")
    sending_resume(by="test")
    assert deliver_now() == 0


def test_resume_through_the_api_and_the_command(api, make_client, smtp):
    sending_pause(domain="bad.example", cause="breaker", reason="x")
    sending_pause(domain="*", cause="provider", reason="y")
    assert api.post("/api/v1/sending-status/resume", {}, format="json").status_code == 403  # a sending key

    full = make_client(ApiKey.Permission.FULL)
    response = full.post("/api/v1/sending-status/resume", {"domain": "*"}, format="json")
    assert (response.status_code, response.json()) == (200, {"resumed": 1})
    out = StringIO()
    call_command("resume_sending", "--domain", "bad.example", stdout=out)
    assert "Resumed 1 pause(s): bad.example." in out.getvalue()
    assert not SendingPause.objects.filter(resumed_at__isnull=True).exists()
    call_command("resume_sending", stdout=out)
    assert "Nothing to resume" in out.getvalue()


def test_readyz_shows_active_pauses_and_stays_ready(client, db):
    sending_pause(domain="bad.example", cause="breaker", reason="bounce rate 5%")
    body = client.get("/readyz").json()
    assert body["status"] == "ok"
    assert [p["domain"] for p in body["sending"]["paused"]] == ["bad.example"]


def test_auto_resume_after_the_cool_down_when_set(api, smtp, settings, breaker):
    settings.BREAKER_AUTO_RESUME_HOURS = 2
    pause = sending_pause(domain="bad.example", cause="breaker", reason="x")
    assert breaker_check().paused == []
    assert SendingPause.objects.get(pk=pause.pk).resumed_at is None
    SendingPause.objects.filter(pk=pause.pk).update(paused_at=timezone.now() - timedelta(hours=3))
    breaker_check()
    assert SendingPause.objects.get(pk=pause.pk).resumed_by == "auto-resume after cool-down"
