"""message_resend: the admin's Resend, through the API's validation and message_submit (issue 18)."""

import base64
import json

import pytest

from core.errors import NotFound, PolicyViolation
from emailsvc.api.emails_inputs import send_request_validate
from emailsvc.models import Message, Status
from emailsvc.submission.resend import message_resend
from emailsvc.suppressions.services import suppression_add
from tests.tracking.scenario import accepted_message, sent_message

pytestmark = pytest.mark.django_db


def test_resend_is_a_new_email_with_the_same_content_linked_to_the_original(api):
    original = sent_message(
        api, ["ann@example.com", {"email": "bo@example.com", "name": "Bö Ærø"}],
        cc=["cc@example.com"], bcc=["hidden@example.com"], subject="Ihre Rechnung", html="<p>Hi</p>", text="Hi",
        reply_to=["Support <support@example.com>"], headers={"X-Campaign": "winter"}, tags=["billing"],
        metadata={"invoice": 42}, group_id="invoices-2026-12", priority="high",
        attachments=[{"filename": "invoice.pdf", "content": base64.b64encode(b"%PDF-1.4 ...").decode()}],
        **{"from": {"email": "billing@example.com", "name": "Billing"}},
    )

    resent = message_resend(message_id=original.pk, by="admin:test", validate=send_request_validate)

    stored = Message.objects.get(pk=resent.pk)
    assert stored.retry_of_id == original.pk and stored.email_id != original.email_id
    assert stored.status == Status.QUEUED and stored.state == "queued"
    same = ("from_email", "from_name", "subject", "html", "text", "reply_to", "headers", "tags", "metadata", "group_id",
            "priority", "sending_domain")
    assert {name: getattr(stored, name) for name in same} == {name: getattr(original, name) for name in same}
    assert sorted(stored.recipients.values_list("email", "name", "role")) == sorted(
        original.recipients.values_list("email", "name", "role")
    )
    attachment = stored.attachments.get()
    assert (attachment.filename, bytes(attachment.content)) == ("invoice.pdf", b"%PDF-1.4 ...")
    assert original.retries.get() == stored


def test_resend_to_one_address_sends_only_to_it(api):
    original = accepted_message(api, ["ann@example.com"], cc=["copy@example.com"])

    resent = message_resend(message_id=original.pk, by="admin:test", validate=send_request_validate, email="COPY@example.com")

    assert list(resent.recipients.values_list("email", "role")) == [("copy@example.com", "to")]


def test_resend_applies_todays_suppressions_and_policy(api, settings):
    original = accepted_message(api, ["gone@example.com", "here@example.com"])
    suppression_add(email="gone@example.com", reason="hard_bounce")

    resent = message_resend(message_id=original.pk, by="admin:test", validate=send_request_validate)

    assert dict(resent.recipients.values_list("email", "status")) == {
        "gone@example.com": Status.SUPPRESSED, "here@example.com": Status.QUEUED,
    }
    settings.ALLOWED_FROM_DOMAINS = ["other.example"]
    with pytest.raises(PolicyViolation):
        message_resend(message_id=original.pk, by="admin:test", validate=send_request_validate)
    assert original.retries.count() == 1


def test_resend_keeps_the_template_record(api, db):
    from templates_app.services import template_create

    template_create(name="receipt", created_by="test", data={"subject": "Receipt {{ n }}", "text": "Paid {{ n }}"})
    body = {"to": "t@example.com", "template": "receipt", "template_data": {"n": 7}}
    response = api.post("/api/v1/emails", json.dumps(body), content_type="application/json")
    original = Message.objects.get(email_id=response.json()["email_id"])

    resent = Message.objects.get(pk=message_resend(message_id=original.pk, by="admin:test", validate=send_request_validate).pk)

    assert (resent.template_name, resent.template_version, resent.template_data) == ("receipt", 1, {"n": 7})
    assert (resent.subject, resent.text) == ("Receipt 7", "Paid 7")


def test_resend_of_what_does_not_exist_is_not_found(api):
    original = accepted_message(api, ["ann@example.com"])

    with pytest.raises(NotFound):
        message_resend(message_id=original.pk + 1000, by="admin:test", validate=send_request_validate)
    with pytest.raises(NotFound):
        message_resend(message_id=original.pk, by="admin:test", validate=send_request_validate, email="stranger@example.com")
    assert not Message.objects.filter(retry_of=original).exists()


def test_a_test_email_is_resent_as_a_test_email_even_once_its_key_is_gone(make_client):
    from emailsvc.keys import api_key_create
    from emailsvc.models import ApiKey

    api_key, secret = api_key_create(name="ci", test=True)
    client = make_client()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    original = accepted_message(client, ["ann@example.com"])
    assert original.provider == "test"
    ApiKey.objects.filter(pk=api_key.pk).delete()  # its emails keep api_key = NULL

    resent = message_resend(message_id=original.pk, by="admin:test", validate=send_request_validate)

    assert Message.objects.get(pk=resent.pk).provider == "test"
