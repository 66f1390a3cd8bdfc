"""message_deliver called directly (no broker): claim, suppression re-check, idempotence."""

import json

import pytest

from emailsvc.models import Message
from emailsvc.services.delivery import message_deliver
from emailsvc.services.suppressions import suppression_add


@pytest.fixture
def smtp(settings, smtp_server):
    settings.EMAIL_PROVIDER = "smtp"
    settings.EMAIL_HOST = smtp_server.host
    settings.EMAIL_PORT = smtp_server.port
    return smtp_server


def accept(api, body) -> Message:
    # A non-transactional test never commits, so nothing is enqueued: the test
    # alone decides when delivery runs.
    response = api.post("/api/v1/emails", json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.content
    return Message.objects.get(email_id=response.json()["email_id"])


def test_suppression_added_after_accept_is_applied_at_delivery(api, smtp):
    message = accept(api, {"to": ["late@example.com", "fine@example.com"], "subject": "x", "text": "y"})
    suppression_add(email="LATE@example.com", reason="complaint", source="test")

    delivered = message_deliver(message_id=message.pk)

    assert delivered.status == "sent"
    (mail,) = smtp.wait_for(message.email_id)
    assert mail.rcpt_tos == ["fine@example.com"]
    statuses = dict(delivered.recipients.values_list("email", "status"))
    assert statuses == {"late@example.com": "suppressed", "fine@example.com": "sent"}


def test_expired_suppression_does_not_block(api, smtp):
    from datetime import timedelta

    from django.utils import timezone

    suppression_add(email="back@example.com", reason="manual", expires_at=timezone.now() - timedelta(seconds=1))
    message = accept(api, {"to": "back@example.com", "subject": "x", "text": "y"})
    assert message_deliver(message_id=message.pk).status == "sent"
    assert len(smtp.wait_for(message.email_id)) == 1


def test_delivering_twice_sends_once(api, smtp):
    message = accept(api, {"to": "once@example.com", "subject": "x", "text": "y"})
    assert message_deliver(message_id=message.pk).status == "sent"
    assert message_deliver(message_id=message.pk) is None
    assert len(smtp.wait_for(message.email_id)) == 1
    message.refresh_from_db()
    assert message.attempts == 1


def test_smtp_5xx_fails_at_once_with_reason(api, settings, smtp):
    settings.ALLOWED_RECIPIENT_DOMAINS = []
    smtp.refuse_next("550 5.1.1 mailbox unavailable")
    message = accept(api, {"to": "nobody@example.com", "subject": "x", "text": "y"})
    failed = message_deliver(message_id=message.pk)
    assert failed.status == "failed"
    assert failed.attempts == 1
    assert "550" in failed.last_error
    assert "550" in failed.recipients.get().failed_reason


def test_smtp_4xx_goes_back_to_queued_for_a_retry(api, smtp):
    from emailsvc.services.delivery import DeliveryDeferred

    smtp.refuse_next("451 4.3.0 try again later")
    message = accept(api, {"to": "later@example.com", "subject": "x", "text": "y"})
    with pytest.raises(DeliveryDeferred):
        message_deliver(message_id=message.pk)
    message.refresh_from_db()
    assert message.status == "queued"
    assert "451" in message.last_error
    assert message_deliver(message_id=message.pk).status == "sent"
    assert len(smtp.wait_for(message.email_id)) == 1
