"""The breaker per message stream, with real SMTP and SES events: a broadcast
complaint spike pauses broadcast of that domain while its transactional email
still goes out (counted at the SMTP sink); the domain as a whole still pauses
when its streams cross the line together; a stream's pause resumes on its own
through the API, the command and the admin, each held email sent once."""

from io import StringIO

import pytest
from django.core.management import call_command

from emailsvc.models import ApiKey, Message, SendingCounts, SendingPause
from emailsvc.sending_control.breaker import (
    breaker_check,
    pauses_active,
    sending_pause,
    sending_resume,
    sending_status,
    stream_figures_24h,
)
from tests.conftest import deliver_now
from tests.emailsvc.sending_control.test_breaker import accept, breaker, committed, sent_from, smtp  # noqa: F401

pytestmark = pytest.mark.django_db


def held(*messages: Message) -> set[str]:
    return set(Message.objects.filter(pk__in=[m.pk for m in messages]).values_list("state", flat=True))


@committed
def test_a_broadcast_complaint_spike_pauses_broadcast_of_that_domain_while_its_transactional_email_goes(
    api, make_client, smtp, breaker
):
    sent_from(api, "bad.example", 20, complained=2, stream="broadcast")  # 10 % complaints: over 5 %
    sent_from(api, "bad.example", 20)  # transactional of the same domain: clean
    assert set(SendingCounts.objects.values_list("sending_domain", "stream", "sent", "complained")) == {
        ("bad.example", "broadcast", 20, 2), ("bad.example", "transactional", 20, 0),
    }

    result = breaker_check()

    assert (result.paused, result.paused_streams) == ([], [("bad.example", "broadcast")])
    pause = SendingPause.objects.get(resumed_at__isnull=True)
    assert (pause.domain, pause.stream, pause.cause) == ("bad.example", "broadcast", "breaker")
    assert pause.figures["complained"] == 2 and "complaint rate 10.000%" in pause.reason
    newsletter = [accept(api, **{"from": "news@bad.example", "to": f"n{n}@example.org", "stream": "broadcast"}) for n in range(2)]
    reset = accept(api, **{"from": "help@bad.example", "to": "reset@example.org", "priority": "high"})
    assert held(*newsletter) == {"held"} and held(reset) == {"queued"}

    assert deliver_now() == 1
    assert len(smtp.wait_for(reset.email_id)) == 1
    assert all(smtp.matching(m.email_id) == [] for m in newsletter)
    # The API shows the stream paused, the domain and its other stream sending, with each one's figures.
    status = make_client(ApiKey.Permission.READ_ONLY).get("/api/v1/sending-status").json()
    bad = next(d for d in status["domains"] if d["domain"] == "bad.example")
    assert bad["paused"] is False and bad["last_24h"]["sent"] == 41
    streams = {s["stream"]: s for s in bad["streams"]}
    assert (streams["broadcast"]["paused"], streams["broadcast"]["cause"]) == (True, "breaker")
    assert streams["broadcast"]["last_24h"] == {
        "sent": 20, "bounced": 0, "complained": 2, "bounce_rate": 0.0, "complaint_rate": 0.1,
    }
    assert (streams["transactional"]["paused"], streams["transactional"]["last_24h"]["sent"]) == (False, 21)

    out = StringIO()
    call_command("resume_sending", "--domain", "bad.example", "--stream", "broadcast", stdout=out)
    assert "Resumed 1 pause(s): bad.example (broadcast)." in out.getvalue()
    assert deliver_now() == 2
    assert [len(smtp.wait_for(m.email_id)) for m in newsletter] == [1, 1]
    assert deliver_now() == 0
    # Judged again only on what broadcast sends after its resume.
    assert stream_figures_24h()[("bad.example", "broadcast")].complained == 0
    assert breaker_check().paused_streams == []


@committed
def test_the_domain_pauses_as_a_whole_when_its_streams_cross_the_line_together(api, smtp, breaker):
    # Neither stream reaches the minimum volume alone; together they do, at 10 % bounces.
    sent_from(api, "bad.example", 10, bounced=1, stream="broadcast")
    sent_from(api, "bad.example", 10, bounced=1)

    result = breaker_check()

    assert (result.paused, result.paused_streams) == (["bad.example"], [])
    assert SendingPause.objects.get(resumed_at__isnull=True).stream == ""
    assert pauses_active().holds("bad.example", "transactional") and pauses_active().holds("bad.example", "broadcast")


def test_a_domain_resumed_keeps_the_emails_of_its_stream_still_paused(api, make_client, smtp):
    sending_pause(domain="bad.example", stream="broadcast", cause="operator", reason="checking the list")
    sending_pause(domain="bad.example", cause="operator", reason="everything")
    newsletter = accept(api, **{"from": "news@bad.example", "to": "n@example.org", "stream": "broadcast"})
    reset = accept(api, **{"from": "help@bad.example", "to": "reset@example.org"})
    other = accept(api, **{"from": "news@good.example", "to": "o@example.org", "stream": "broadcast"})
    assert held(newsletter, reset) == {"held"} and held(other) == {"queued"}
    full = make_client(ApiKey.Permission.FULL)

    # "": the domain's pause as a whole only.
    response = full.post("/api/v1/sending-status/resume", {"domain": "bad.example", "stream": ""}, format="json")

    assert (response.status_code, response.json()) == (200, {"resumed": 1})
    assert held(newsletter) == {"held"}
    assert deliver_now() == 2
    assert len(smtp.wait_for(reset.email_id)) == 1 and len(smtp.wait_for(other.email_id)) == 1
    assert smtp.matching(newsletter.email_id) == []

    response = full.post("/api/v1/sending-status/resume", {"domain": "bad.example", "stream": "broadcast"}, format="json")
    assert (response.status_code, response.json()) == (200, {"resumed": 1})
    assert deliver_now() == 1
    assert len(smtp.wait_for(newsletter.email_id)) == 1


def test_a_stream_paused_on_its_own_while_its_domain_is_paused_waits_for_both(api, smtp):
    sending_pause(domain="bad.example", cause="operator", reason="everything")
    newsletter = accept(api, **{"from": "news@bad.example", "to": "n@example.org", "stream": "broadcast"})
    sending_pause(domain="bad.example", stream="broadcast", cause="operator", reason="and the newsletter")

    assert sending_resume(domain="bad.example", stream="broadcast", by="test") == 1
    assert held(newsletter) == {"held"}  # its domain is still paused
    assert deliver_now() == 0
    assert sending_resume(domain="bad.example", by="test") == 1
    assert deliver_now() == 1
    assert len(smtp.wait_for(newsletter.email_id)) == 1


def test_the_admin_resumes_exactly_the_selected_pause(admin_client, api, smtp):
    stream_pause = sending_pause(domain="bad.example", stream="broadcast", cause="breaker", reason="x")
    domain_pause = sending_pause(domain="bad.example", cause="operator", reason="y")

    response = admin_client.post(
        "/admin/emailsvc/sendingpause/", {"action": "resume", "_selected_action": [stream_pause.pk]}, follow=True
    )

    assert response.status_code == 200
    assert SendingPause.objects.get(pk=stream_pause.pk).resumed_at is not None
    assert SendingPause.objects.get(pk=domain_pause.pk).resumed_at is None


def test_the_sending_page_shows_a_paused_stream_under_its_domain_and_resumes_it_alone(admin_client, api, smtp):
    sending_pause(domain="bad.example", stream="broadcast", cause="breaker", reason="complaints")
    sending_pause(domain="bad.example", cause="operator", reason="everything")
    accept(api, **{"from": "news@bad.example", "to": "n@example.org", "stream": "broadcast"})

    page = admin_client.get("/admin/operations/sending/").content.decode()
    assert 'data-domain="bad.example" data-stream="broadcast"' in page and "stream broadcast" in page

    response = admin_client.post("/admin/operations/sending/resume/", {"domain": "bad.example", "stream": "broadcast"})
    assert response.status_code == 302
    assert list(SendingPause.objects.filter(resumed_at__isnull=True).values_list("domain", "stream")) == [
        ("bad.example", "")
    ]


def test_the_account_pauses_as_a_whole_only():
    with pytest.raises(ValueError):
        sending_pause(domain="*", stream="broadcast", cause="operator", reason="x")


@committed
def test_two_resumes_of_one_domain_at_once_leave_no_email_held(api, smtp):
    """The domain's pause and its stream's pause resumed at the same moment
    (the auto-resume and an operator's button): whichever commits second sees
    what the first left, so neither leaves the other's emails held."""
    import threading

    from django.db import connections

    for round_ in range(5):
        sending_pause(domain="bad.example", cause="operator", reason=f"everything {round_}")
        sending_pause(domain="bad.example", stream="broadcast", cause="operator", reason=f"newsletter {round_}")
        newsletter = accept(api, **{"from": "news@bad.example", "to": f"n{round_}@example.org", "stream": "broadcast"})
        reset = accept(api, **{"from": "help@bad.example", "to": f"r{round_}@example.org"})
        assert held(newsletter, reset) == {"held"}
        start, counts = threading.Barrier(2), []

        def resume(stream: str) -> None:
            try:
                start.wait()
                counts.append(sending_resume(domain="bad.example", stream=stream, by="concurrent test"))
            finally:
                connections.close_all()

        threads = [threading.Thread(target=resume, args=(stream,)) for stream in ("", "broadcast")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(counts) == [1, 1]
        assert not SendingPause.objects.filter(domain="bad.example", resumed_at__isnull=True).exists()
        assert held(newsletter, reset) == {"queued"}, round_


def test_a_resumed_stream_is_judged_on_what_it_sends_after_even_once_its_past_leaves_the_window(breaker):
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    hour = now.replace(minute=0, second=0, microsecond=0)
    SendingCounts.objects.create(sending_domain="bad.example", stream="broadcast", hour=hour - timedelta(hours=10), sent=10_000)
    SendingCounts.objects.create(sending_domain="bad.example", stream="broadcast", hour=hour, sent=40, bounced=8)
    sending_pause(domain="bad.example", stream="broadcast", cause="operator", reason="list cleaned")
    assert sending_resume(domain="bad.example", stream="broadcast", by="test") == 1
    # What the resume's hour counts after the resume counts; what it had counted before does not.
    SendingCounts.objects.filter(stream="broadcast", hour=hour).update(sent=45, bounced=8)
    later = hour + timedelta(hours=15)  # the 10,000 sent before the resume have left the 24 h window
    SendingCounts.objects.create(sending_domain="bad.example", stream="broadcast", hour=later - timedelta(hours=1), sent=3_000, bounced=310)

    figures = stream_figures_24h(now=later)[("bad.example", "broadcast")]
    assert (figures.sent, figures.bounced) == (3_005, 310)  # 10.3 % bounced
    assert breaker_check(now=later).paused_streams == [("bad.example", "broadcast")]


def test_hours_counted_before_streams_count_toward_their_domain_as_a_whole_only(breaker):
    """Counts stored before the breaker counted per stream (migration 0019
    leaves them stream "") charge no stream: over the line, they pause the
    domain as a whole, as the breaker did when they were counted."""
    from django.utils import timezone

    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    SendingCounts.objects.create(sending_domain="bad.example", stream="", hour=hour, sent=30, complained=3)
    SendingCounts.objects.create(sending_domain="bad.example", stream="broadcast", hour=hour, sent=10)

    result = breaker_check()

    assert (result.paused, result.paused_streams) == (["bad.example"], [])
    domain = next(d for d in sending_status()["domains"] if d["domain"] == "bad.example")
    assert domain["paused"] is True and domain["last_24h"]["sent"] == 40
    assert [s["stream"] for s in domain["streams"]] == ["broadcast"]


def test_a_resumed_account_breaker_pause_is_judged_on_what_is_sent_after_and_a_provider_resume_restarts_nothing(breaker):
    from django.utils import timezone

    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    # Two domains each under BREAKER_MIN_SENT, together over it with 10 % bounces: the account pauses.
    for domain in ("a.example", "b.example"):
        SendingCounts.objects.create(sending_domain=domain, stream="transactional", hour=hour, sent=15, bounced=2)
    assert breaker_check().paused == ["*"]

    assert sending_resume(domain="*", by="operator") == 1
    assert breaker_check().paused == []  # judged on what is sent after the resume: nothing yet
    # 12 more from each (under BREAKER_MIN_SENT alone), 3 of the 24 bounced: 12.5 % together.
    SendingCounts.objects.filter(sending_domain="a.example").update(sent=27, bounced=4)
    SendingCounts.objects.filter(sending_domain="b.example").update(sent=27, bounced=3)
    assert breaker_check().paused == ["*"]

    # A provider stop lifted is no verdict on bounces: the figures go on from where they were.
    SendingPause.objects.filter(resumed_at__isnull=True).update(cause="provider")
    assert sending_resume(domain="*", by="provider probe") == 1
    assert breaker_check().paused == ["*"]
