"""POST → a real Celery worker process → a real SMTP server / moto's SES over HTTP.

Assertions are on what a user would see: the bytes the SMTP server received,
the messages moto's SES recorded, and the API's answer afterwards.
"""

import base64
import json

import pytest

from emailsvc.models import Message
from emailsvc.suppressions.services import suppression_add
from tests.conftest import wait_for_status

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

PDF = b"%PDF-1.4 fake pdf bytes \x00\x01\x02"


def send(api, body):
    response = api.post("/api/v1/emails", json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.content
    return response.json()


@pytest.fixture
def smtp_provider(settings):
    settings.EMAIL_PROVIDER = "smtp"
    settings.ALLOWED_FROM_DOMAINS = ["example.com"]


@pytest.fixture
def ses_provider(settings):
    settings.EMAIL_PROVIDER = "ses"
    settings.ALLOWED_FROM_DOMAINS = ["example.com"]


def test_smtp_delivery_bytes(api, smtp_provider, celery_worker, smtp_server):
    accepted = send(
        api,
        {
            "from": "billing@example.com",
            "from_name": "Example Billing",
            "to": ["Jane Doe <jane@example.com>"],
            "cc": ["carl@example.org"],
            "bcc": ["audit@example.net"],
            "reply_to": "help@example.com",
            "subject": "Your receipt",
            "text": "Thanks for your order.",
            "html": "<p>Thanks for your <b>order</b>.</p>",
            "group_id": "receipts-2026",
            "tags": ["receipt", "billing"],
            "metadata": {"order": 42},
            "headers": {"X-Campaign": "autumn"},
            "attachments": [
                {"filename": "receipt.pdf", "content": base64.b64encode(PDF).decode(), "content_type": "application/pdf"}
            ],
        },
    )
    email_id = accepted["email_id"]
    message = wait_for_status(email_id)
    assert message.status == "sent", celery_worker.log()[-3000:]

    (mail,) = smtp_server.wait_for(email_id)
    assert mail.mail_from == "billing@example.com"
    assert sorted(mail.rcpt_tos) == ["audit@example.net", "carl@example.org", "jane@example.com"]
    parsed = mail.message
    assert parsed["From"] == "Example Billing <billing@example.com>"
    assert parsed["To"] == "Jane Doe <jane@example.com>"
    assert parsed["Cc"] == "carl@example.org"
    assert parsed["Bcc"] is None and b"audit@example.net" not in mail.data.split(b"\r\n\r\n", 1)[0]
    assert parsed["Reply-To"] == "help@example.com"
    assert parsed["Subject"] == "Your receipt"
    assert parsed["X-Emailsvc-Tracking-ID"] == f"receipts-2026/{email_id}"
    assert parsed["X-Campaign"] == "autumn"
    assert parsed.get_all("X-Tag") == ["receipt", "billing"]
    assert json.loads(parsed["X-Metadata"]) == {"order": 42}
    assert parsed.get_body(("plain",)).get_content().strip() == "Thanks for your order."
    assert parsed.get_body(("html",)).get_content().strip() == "<p>Thanks for your <b>order</b>.</p>"
    (attachment,) = list(parsed.iter_attachments())
    assert attachment.get_filename() == "receipt.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == PDF

    detail = api.get(f"/api/v1/emails/{email_id}").json()
    assert detail["status"] == "sent"
    assert detail["provider"] == "smtp"
    assert detail["provider_message_id"] == parsed["Message-ID"].strip("<>")
    assert detail["attempts"] == 1
    assert detail["sent_at"]
    assert {r["email"]: (r["role"], r["status"]) for r in detail["recipients"]} == {
        "jane@example.com": ("to", "sent"),
        "carl@example.org": ("cc", "sent"),
        "audit@example.net": ("bcc", "sent"),
    }
    assert all(r["sent_at"] for r in detail["recipients"])


def test_ses_delivery_through_moto(api, ses_provider, celery_worker, moto_server):
    accepted = send(
        api,
        {
            "to": "jane@example.com",
            "subject": "Welcome",
            "html": "<h1>Welcome</h1>",
            "group_id": "signup",
            "tags": ["welcome"],
        },
    )
    email_id = accepted["email_id"]
    message = wait_for_status(email_id)
    assert message.status == "sent", celery_worker.log()[-3000:]
    assert message.provider_message_id

    sent = [m for m in moto_server.sent_raw_messages() if m["id"] == message.provider_message_id]
    assert len(sent) == 1
    assert "jane@example.com" in json.dumps(sent[0]["destinations"])
    assert f"X-Emailsvc-Tracking-ID: signup/{email_id}" in sent[0]["raw_data"]
    assert "X-Tag: welcome" in sent[0]["raw_data"]

    detail = api.get(f"/api/v1/emails/{email_id}").json()
    assert detail["status"] == "sent"
    assert detail["provider_message_id"] == message.provider_message_id


def test_ses_configuration_set_header(api, ses_provider, settings, celery_worker, moto_server):
    # The worker process's settings are fixed at its start; the header is
    # checked on the message built by the same function the worker uses.
    from emailsvc.providers import build_email

    settings.SES_CONFIGURATION_SET = "tracking"
    email_id = send(api, {"to": "jane@example.com", "subject": "x", "text": "y"})["email_id"]
    message = Message.objects.get(email_id=email_id)
    mime = build_email(message, list(message.recipients.all()), []).message()
    assert mime["X-SES-CONFIGURATION-SET"] == "tracking"
    wait_for_status(email_id)


def test_ses_rejection_fails_with_reason(api, ses_provider, settings, celery_worker, moto_server):
    # moto refuses a from-domain that has no verified identity, as SES does.
    settings.ALLOWED_FROM_DOMAINS = ["example.com", "unverified.example.org"]
    email_id = send(api, {"from": "x@unverified.example.org", "to": "jane@example.com", "subject": "s", "text": "t"})[
        "email_id"
    ]
    message = wait_for_status(email_id)
    assert message.status == "failed"
    assert message.attempts == 1
    detail = api.get(f"/api/v1/emails/{email_id}").json()
    assert "MessageRejected" in detail["last_error"]
    assert detail["recipients"][0]["status"] == "failed"
    assert "MessageRejected" in detail["recipients"][0]["failed_reason"]


def test_suppressed_recipient_is_not_sent_and_others_are(api, smtp_provider, celery_worker, smtp_server):
    suppression_add(email="Blocked@Example.com", reason="hard_bounce", source="test")
    accepted = send(
        api, {"to": ["ok@example.com", "blocked@example.com"], "cc": "also-ok@example.com", "subject": "Hi", "text": "x"}
    )
    assert {r["email"]: r["status"] for r in accepted["recipients"]} == {
        "ok@example.com": "queued",
        "blocked@example.com": "suppressed",
        "also-ok@example.com": "queued",
    }
    email_id = accepted["email_id"]
    message = wait_for_status(email_id)
    assert message.status == "sent"

    (mail,) = smtp_server.wait_for(email_id)
    assert sorted(mail.rcpt_tos) == ["also-ok@example.com", "ok@example.com"]
    assert b"blocked@example.com" not in mail.data
    statuses = {r["email"]: r["status"] for r in api.get(f"/api/v1/emails/{email_id}").json()["recipients"]}
    assert statuses == {"ok@example.com": "sent", "blocked@example.com": "suppressed", "also-ok@example.com": "sent"}


def test_all_recipients_suppressed_is_never_queued(api, smtp_provider, smtp_server):
    suppression_add(email="gone@example.com", reason="complaint")
    accepted = send(api, {"to": "gone@example.com", "subject": "x", "text": "y"})
    assert accepted["status"] == "suppressed"
    assert Message.objects.get(email_id=accepted["email_id"]).status == "suppressed"


def test_console_provider_records_but_does_not_send(api, settings, celery_worker, smtp_server):
    settings.EMAIL_PROVIDER = "console"
    email_id = send(api, {"to": "jane@example.com", "subject": "x", "text": "y"})["email_id"]
    message = wait_for_status(email_id)
    assert message.status == "sent"
    assert message.provider_message_id.startswith("console-")
    assert smtp_server.matching(email_id) == []


def test_a_soft_bounce_is_sent_again_once_after_the_delay_by_the_worker(api, smtp_provider, settings, celery_worker, smtp_server):
    import time

    from tests.tracking.sesevents import ses_event, sns_envelope
    from tracking.apply import events_apply
    from tracking.normalize import ses_body_parse

    settings.SOFT_BOUNCE_RETRY_SECONDS = 2
    email_id = send(api, {"to": "full@example.org", "subject": "Soft bounce", "text": "Hi"})["email_id"]
    original = wait_for_status(email_id)
    assert original.status == "sent", celery_worker.log()[-3000:]
    assert len(smtp_server.wait_for(email_id)) == 1

    def soft_bounce(message):
        envelope = sns_envelope(ses_event(
            "Bounce", message_id=message.provider_message_id, recipients=["full@example.org"],
            bounce_type="Transient", bounce_subtype="MailboxFull",
        ))
        events_apply(events=ses_body_parse(envelope), source="sqs")

    bounced_at = time.monotonic()
    soft_bounce(original)
    (resend,) = Message.objects.filter(retry_of=original)
    arrivals = smtp_server.wait_for(resend.email_id, timeout=30)
    assert len(arrivals) == 1, celery_worker.log()[-3000:]
    assert time.monotonic() - bounced_at >= 1.5  # not before its delay
    resend = wait_for_status(resend.email_id)
    assert resend.status == "sent"

    soft_bounce(resend)
    time.sleep(4)  # longer than the delay: nothing more is sent
    assert len(smtp_server.matching(resend.email_id)) == 1
    assert len(smtp_server.matching(email_id)) == 1
    assert resend.recipients.get().status == "failed"
    assert not Message.objects.filter(retry_of=resend).exists()
