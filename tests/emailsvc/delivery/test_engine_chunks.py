"""The delivery engine run in this process (no broker): chunked claims, per-recipient
outcomes at a real SMTP server, suppression re-check, idempotence, set-based recording."""

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from emailsvc.delivery.engine import chunk_size, deliver_due
from emailsvc.models import Attachment, Message, Recipient, StatusChange
from emailsvc.sending_control.ratelimit import rate_limit_from_settings
from emailsvc.streams import sending as stream_sending
from emailsvc.suppressions.services import suppression_add
from tests.conftest import deliver_now


@pytest.fixture
def smtp(settings, smtp_server):
    settings.EMAIL_PROVIDER = "smtp"
    settings.EMAIL_HOST = smtp_server.host
    settings.EMAIL_PORT = smtp_server.port
    settings.SEND_RATE_PER_SECOND = 0
    return smtp_server


def accept(api, body) -> Message:
    # A non-transactional test never commits, so nothing is enqueued: the test
    # alone decides when delivery runs.
    response = api.post("/api/v1/emails", json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.content
    return Message.objects.get(email_id=response.json()["email_id"])


def statuses(message: Message) -> dict[str, str]:
    return dict(Recipient.objects.filter(message=message).values_list("email", "status"))


def test_suppression_added_after_accept_is_applied_at_delivery(api, smtp):
    message = accept(api, {"to": ["late@example.com", "fine@example.com"], "subject": "x", "text": "y"})
    suppression_add(email="LATE@example.com", reason="complaint", source="test")

    deliver_now()

    message.refresh_from_db()
    assert (message.status, message.state) == ("sent", "done")
    (mail,) = smtp.wait_for(message.email_id)
    assert mail.rcpt_tos == ["fine@example.com"]
    assert statuses(message) == {"late@example.com": "suppressed", "fine@example.com": "sent"}
    changes = StatusChange.objects.filter(message=message).values_list("email", "from_status", "to_status", "cause")
    assert sorted(changes) == [
        ("fine@example.com", "queued", "sent", "delivery"),
        ("late@example.com", "queued", "suppressed", "suppressed"),
    ]


def test_expired_suppression_does_not_block(api, smtp):
    suppression_add(email="back@example.com", reason="manual", expires_at=timezone.now() - timedelta(seconds=1))
    message = accept(api, {"to": "back@example.com", "subject": "x", "text": "y"})
    deliver_now()
    message.refresh_from_db()
    assert message.status == "sent"
    assert len(smtp.wait_for(message.email_id)) == 1


def test_delivering_twice_sends_once(api, smtp):
    message = accept(api, {"to": "once@example.com", "subject": "x", "text": "y"})
    assert deliver_due().claimed == 1
    assert deliver_due().claimed == 0
    assert len(smtp.wait_for(message.email_id)) == 1
    message.refresh_from_db()
    assert (message.status, message.attempts) == ("sent", 1)
    assert message.provider_message_id and message.sent_at


def test_smtp_5xx_at_data_fails_at_once_with_reason(api, settings, smtp):
    smtp.refuse_next("550 5.1.1 mailbox unavailable")
    message = accept(api, {"to": "nobody@example.com", "subject": "x", "text": "y"})
    deliver_now()
    message.refresh_from_db()
    assert (message.status, message.state, message.attempts) == ("failed", "done", 1)
    assert "550" in message.last_error
    assert "550" in message.recipients.get().failed_reason


def test_smtp_4xx_at_data_goes_back_to_queued_for_a_retry(api, smtp):
    smtp.refuse_next("451 4.3.0 try again later")
    message = accept(api, {"to": "later@example.com", "subject": "x", "text": "y"})
    result = deliver_due()
    assert (result.claimed, result.deferred) == (1, 1)
    assert result.due_later and result.due_later[0][0] == "normal"
    message.refresh_from_db()
    assert (message.status, message.state) == ("queued", "queued")
    assert "451" in message.last_error
    Message.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now())  # its retry is due
    deliver_now()
    message.refresh_from_db()
    assert (message.status, message.attempts) == ("sent", 2)
    assert len(smtp.wait_for(message.email_id)) == 1


def test_one_refused_recipient_fails_alone_and_the_others_are_sent(api, smtp):
    smtp.refuse_recipient("gone@example.org", "550 5.1.1 no such user")
    message = accept(api, {"to": ["ok@example.org", "gone@example.org"], "cc": "cc@example.org", "subject": "x", "text": "y"})

    deliver_now()

    (mail,) = smtp.wait_for(message.email_id)
    assert sorted(mail.rcpt_tos) == ["cc@example.org", "ok@example.org"]
    assert statuses(message) == {"ok@example.org": "sent", "cc@example.org": "sent", "gone@example.org": "failed"}
    assert "550 5.1.1 no such user" in Recipient.objects.get(message=message, email="gone@example.org").failed_reason
    message.refresh_from_db()
    assert (message.status, message.state) == ("sent", "done")


def test_one_deferred_recipient_is_retried_alone(api, smtp):
    smtp.refuse_recipient("busy@example.org", "452 4.2.2 mailbox full, try later")
    message = accept(api, {"to": ["ok@example.org", "busy@example.org"], "subject": "x", "text": "y"})

    deliver_now()

    (first,) = smtp.wait_for(message.email_id)
    assert first.rcpt_tos == ["ok@example.org"]
    assert statuses(message) == {"ok@example.org": "sent", "busy@example.org": "queued"}
    message.refresh_from_db()
    # It shows what its delivered recipient did, and is still claimable for the other.
    assert (message.status, message.state) == ("sent", "queued")
    assert "452" in message.last_error

    Message.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now())
    deliver_now()

    first, second = smtp.wait_for(message.email_id, count=2)
    assert second.rcpt_tos == ["busy@example.org"]
    assert statuses(message) == {"ok@example.org": "sent", "busy@example.org": "sent"}
    message.refresh_from_db()
    assert (message.status, message.state, message.attempts) == ("sent", "done", 2)


def test_a_recipient_deferred_past_the_attempt_limit_fails(api, settings, smtp):
    settings.DELIVERY_MAX_ATTEMPTS = 2
    smtp.refuse_recipient("busy@example.org", "452 4.2.2 mailbox full", times=2)
    message = accept(api, {"to": ["busy@example.org"], "subject": "x", "text": "y"})
    deliver_now()
    Message.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now())
    deliver_now()
    message.refresh_from_db()
    assert (message.status, message.state, message.attempts) == ("failed", "done", 2)
    assert message.recipients.get().failed_reason.startswith("gave up after 2 attempts: ")


def test_a_message_that_cannot_be_built_fails_at_once_with_the_real_reason(api, smtp, caplog):
    message = accept(api, {"to": "someone@example.org", "subject": "x", "text": "y"})
    # A row the API would never store (a MIME type without a slash): building
    # the email fails in our code. That is a bug to see, not a reason to retry.
    Attachment.objects.create(message=message, filename="a.bin", content_type="garbage", content=b"x", size=1)

    deliver_now()

    message.refresh_from_db()
    assert (message.status, message.state, message.attempts) == ("failed", "done", 1)
    assert message.last_error.startswith("internal error: ValueError")
    assert any(record.exc_info for record in caplog.records if "on our side" in record.getMessage())
    assert smtp.matching(message.email_id) == []


def test_a_chunk_claims_high_priority_first_then_oldest_due(api, settings, smtp):
    settings.DELIVERY_CHUNK_SIZE = 2
    low = accept(api, {"to": "a@example.org", "subject": "low", "text": "y", "priority": "low"})
    normal = accept(api, {"to": "b@example.org", "subject": "normal", "text": "y"})
    high = accept(api, {"to": "c@example.org", "subject": "high", "text": "y", "priority": "high"})

    assert deliver_due(priority="low").claimed == 2  # a low-queue task: high first, then normal
    claimed = set(Message.objects.filter(state="done").values_list("pk", flat=True))
    assert claimed == {high.pk, normal.pk}
    assert deliver_due(priority="normal").claimed == 0  # a normal task never takes low work
    assert deliver_due(priority="low").claimed == 1
    low.refresh_from_db()
    assert low.status == "sent"


def test_recording_a_chunk_costs_the_same_statements_for_one_or_a_hundred(
    api, smtp, django_capture_on_commit_callbacks, monkeypatch
):
    # Delivery reads the streams' settings at most every STREAMS_CACHE_SECONDS per
    # process, not per chunk: held for the test, so a slow machine counts the same.
    monkeypatch.setattr(stream_sending, "STREAMS_CACHE_SECONDS", 3600.0)
    monkeypatch.setattr(stream_sending, "_cached", (0.0, {}))
    stream_sending._streams()

    def statements(context) -> list[str]:
        # Savepoints stand for BEGIN/COMMIT outside a test; the process's heartbeat
        # goes with a claim at most every DELIVERY_HEARTBEAT_SECONDS / 2.
        found = [q["sql"] for q in context.captured_queries
                 if "SAVEPOINT" not in q["sql"] and "emailsvc_deliveryprocess" not in q["sql"]]
        # SQLite claims with one statement per priority it tries, as many as the
        # claim needs: counted as the one claim they are.
        claims = [sql for sql in found if sql.startswith("UPDATE emailsvc_message SET state = 'sending'")]
        return [sql for sql in found if sql not in claims[1:]]

    accept(api, {"to": "single@example.org", "subject": "x", "text": "y"})
    # What runs once the chunk's record commits (the hourly sending counts) is part of its cost.
    with CaptureQueriesContext(connection) as one, django_capture_on_commit_callbacks(execute=True):
        assert deliver_due().claimed == 1
    # Read now: the connection's query log is a bounded deque, and the captured
    # positions point elsewhere once later statements push old ones out.
    one = statements(one)
    for index in range(100):
        accept(api, {"to": [f"r{index}@example.org", f"s{index}@example.org"], "subject": "x", "text": "y"})
    with CaptureQueriesContext(connection) as hundred, django_capture_on_commit_callbacks(execute=True):
        assert deliver_due().claimed == 100
    hundred = statements(hundred)

    # the active sending pauses; claim; load messages, recipients, attachments,
    # suppressions, suppressions of one stream (emailsvc.streams); lock messages, read recipients, update recipients, insert
    # status changes, update messages, then (once committed) add to the hourly sending counts and
    # read the webhook subscriptions (a subscribed change wakes the dispatcher); on
    # PostgreSQL two `SET LOCAL enable_seqscan = off` (core.sql.index_lookups).
    # (In a worker the record also deletes the chunk's journal entries: one more.)
    assert len(one) == (16 if connection.vendor == "postgresql" else 14), one
    # SQLite splits a large INSERT to stay under its limit of bound variables.
    slack = 0 if connection.vendor == "postgresql" else 2
    assert len(hundred) <= len(one) + slack, hundred
    assert Message.objects.filter(status="sent").count() == 101
    assert StatusChange.objects.filter(to_status="sent").count() == 201


def test_chunk_size_is_about_one_second_of_the_rate(settings):
    settings.DELIVERY_CHUNK_SIZE = 100
    settings.SEND_RATE_PER_SECOND = 14
    assert chunk_size(rate_limit_from_settings()) == 14
    settings.SEND_RATE_PER_SECOND = 500
    assert chunk_size(rate_limit_from_settings()) == 100
    settings.SEND_RATE_PER_SECOND = 0
    assert chunk_size(rate_limit_from_settings()) == 100


def test_a_scheduled_email_is_claimed_only_once_its_send_at_has_come(api, smtp):
    send_at = timezone.now() + timedelta(minutes=5)
    message = accept(api, {"to": "later@example.org", "subject": "x", "text": "y", "send_at": send_at.isoformat()})
    assert deliver_due().claimed == 0
    Message.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now())  # its time has come
    assert deliver_due().claimed == 1
    message.refresh_from_db()
    assert message.status == "sent"
    assert list(StatusChange.objects.filter(message=message).values_list("from_status", "to_status")) == [("scheduled", "sent")]


def test_metadata_up_to_the_limit_reaches_the_wire_in_lines_smtp_accepts(api, smtp):
    """10 KB of metadata in one unbreakable string: X-Metadata is carried as RFC 2047
    encoded words, so no line exceeds 998 octets, and any MIME reader gets it back."""
    metadata = {"blob": "x" * 9_900, "user": "jöhn"}
    message = accept(api, {
        "to": "wire@example.org", "subject": "x", "text": "y", "metadata": metadata, "tags": ["welcome"],
        "headers": {"X-Campaign": "spring " * 250},
    })

    deliver_now()

    message.refresh_from_db()
    assert message.status == "sent", message.last_error
    (mail,) = smtp.wait_for(message.email_id)
    assert max(len(line) for line in mail.data.split(b"\r\n")) <= 998
    received = mail.message
    assert json.loads(str(received["X-Metadata"])) == metadata
    assert str(received["X-Campaign"]).split() == ["spring"] * 250
    assert received["X-Tag"] == "welcome"
