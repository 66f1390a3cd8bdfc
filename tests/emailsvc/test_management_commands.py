"""Support staff in the admin, operators with management commands."""

import io

import pytest
from django.core.management import call_command

from emailsvc.keys import api_key_authenticate
from emailsvc.models import ApiKey, Suppression
from emailsvc.suppressions.services import suppression_add

pytestmark = pytest.mark.django_db


def test_admin_adds_searches_filters_and_lifts_suppressions(admin_client):
    response = admin_client.post(
        "/admin/emailsvc/suppression/add/",
        {"email": "Someone@Example.com", "reason": "manual", "source": "", "note": "asked by phone"},
    )
    assert response.status_code == 302
    suppression = Suppression.objects.get()
    assert suppression.email == "someone@example.com"
    assert suppression.source.startswith("admin:")
    suppression_add(email="bounced@example.com", reason="hard_bounce")

    found = admin_client.get("/admin/emailsvc/suppression/", {"q": "someone"})
    assert b"someone@example.com" in found.content and b"bounced@example.com" not in found.content
    filtered = admin_client.get("/admin/emailsvc/suppression/", {"reason__exact": "hard_bounce"})
    assert b"bounced@example.com" in filtered.content and b"someone@example.com" not in filtered.content

    admin_client.post(
        "/admin/emailsvc/suppression/",
        {"action": "lift", "_selected_action": [suppression.pk]},
    )
    assert list(Suppression.objects.values_list("email", flat=True)) == ["bounced@example.com"]


def test_admin_shows_a_message_with_its_recipients(admin_client, api):
    import json

    email_id = api.post(
        "/api/v1/emails",
        json.dumps({"to": ["a@example.com", "b@example.com"], "subject": "s", "text": "t"}),
        content_type="application/json",
    ).json()["email_id"]
    listing = admin_client.get("/admin/emailsvc/message/", {"q": "b@example.com"})
    assert email_id.encode() in listing.content
    from emailsvc.models import Message

    detail = admin_client.get(f"/admin/emailsvc/message/{Message.objects.get(email_id=email_id).pk}/change/")
    assert detail.status_code == 200
    assert b"a@example.com" in detail.content and b"b@example.com" in detail.content


def test_admin_creates_a_key_showing_the_secret_once(admin_client):
    response = admin_client.post(
        "/admin/emailsvc/apikey/add/", {"name": "billing", "permission": "sending", "expires_at": ""}, follow=True
    )
    messages = [str(m) for m in response.context["messages"]]
    secret = next(m for m in messages if "will not be shown again" in m).rsplit(" ", 1)[1]
    assert api_key_authenticate(raw_key=secret).name == "billing"
    assert secret.encode() not in admin_client.get("/admin/emailsvc/apikey/").content


def test_create_api_key_command_prints_a_working_secret():
    out = io.StringIO()
    call_command("create_api_key", "--name", "ops", "--permission", "full", stdout=out, stderr=io.StringIO())
    secret = out.getvalue().strip()
    api_key = api_key_authenticate(raw_key=secret)
    assert api_key.name == "ops" and api_key.permission == ApiKey.Permission.FULL
    assert ApiKey.objects.get().secret_hash != secret


def test_create_api_key_command_makes_a_scoped_test_key():
    out = io.StringIO()
    call_command(
        "create_api_key", "--name", "ci", "--domain", "Example.com", "--domain", "acme.example", "--test",
        stdout=out, stderr=io.StringIO(),
    )
    api_key = api_key_authenticate(raw_key=out.getvalue().strip())
    assert (api_key.domains, api_key.test, api_key.permission) == (["example.com", "acme.example"], True, "sending")


def test_logs_redact_recipient_addresses():
    import logging

    from core.redaction import RedactAddressesFilter

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "refused %s", ("jane.doe@example.com",), None)
    RedactAddressesFilter().filter(record)
    assert record.getMessage() == "refused j***@example.com"
