"""The console's API keys: create one with its sending domains and test mode (the
secret shown once), see its scope and state, revoke it; test emails are marked."""

import json

import pytest
from django.contrib.messages import get_messages
from rest_framework.test import APIClient

from emailsvc.models import ApiKey

pytestmark = pytest.mark.django_db

ADD = "/admin/emailsvc/apikey/add/"
LIST = "/admin/emailsvc/apikey/"


def send(secret: str, sender: str):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    body = {"from": sender, "to": "jane@example.org", "subject": "Hi", "text": "Hello"}
    return client.post("/api/v1/emails", json.dumps(body), content_type="application/json")


def test_a_key_created_in_the_console_carries_its_domains_and_test_mode(admin_client, settings):
    settings.ALLOWED_FROM_DOMAINS = ["example.com", "other.example"]
    form = {"name": "ci", "permission": "sending", "domains_text": "Example.com, mail.other.example", "test": "on",
            "expires_at_0": "", "expires_at_1": ""}
    response = admin_client.post(ADD, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    [notice] = [str(m) for m in get_messages(response.wsgi_request) if "Copy it now" in str(m)]
    secret = notice.rsplit(" ", 1)[1]
    assert notice.startswith("Test key created. Copy it now, it will not be shown again: es_")
    api_key = ApiKey.objects.get(name="ci")
    assert (api_key.domains, api_key.test, api_key.secret_hash != secret) == (["example.com", "mail.other.example"], True, True)

    assert send(secret, "ci@example.com").status_code == 202
    assert send(secret, "ci@other.example").json()["error"] == "key_domain_not_allowed"

    shown_once = admin_client.get(LIST).content.decode()  # the page the form led to shows the secret
    assert secret in shown_once
    page = admin_client.get(LIST).content.decode()
    assert "example.com, mail.other.example" in page and secret not in page
    detail = admin_client.get(f"{LIST}{api_key.pk}/change/").content.decode()
    assert "mail.other.example" in detail and secret not in detail

    messages_page = admin_client.get("/admin/emailsvc/message/").content.decode()
    assert "queued (test)" in messages_page
    address_page = admin_client.get("/admin/address/", {"q": "jane@example.org"}).content.decode()
    assert ">test</span>" in address_page

    admin_client.post(LIST, {"action": "revoke", "_selected_action": [api_key.pk]})
    assert ApiKey.objects.get(pk=api_key.pk).state == "revoked"
    assert send(secret, "ci@example.com").json()["error"] == "api_key_revoked"
    assert ">revoked<" in admin_client.get(LIST).content.decode()


def test_a_bad_domain_is_refused_in_the_form(admin_client):
    form = {"name": "ci", "permission": "sending", "domains_text": "localhost", "expires_at_0": "", "expires_at_1": ""}
    response = admin_client.post(ADD, form)
    assert response.status_code == 200
    assert "localhost" in response.content.decode()
    assert not ApiKey.objects.filter(name="ci").exists()
