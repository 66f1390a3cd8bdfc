"""/api/v1/api-keys: create (the secret once), list, read, revoke, expiry, last use;
keys scoped to sending domains; no key creates or revokes a key with more rights."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from emailsvc.keys import LAST_USED_RESOLUTION, api_key_create
from emailsvc.models import ApiKey, Message

URL = "/api/v1/api-keys"


@pytest.fixture(autouse=True)
def _policy(settings):
    settings.ALLOWED_FROM_DOMAINS = ["example.com", "other.example"]
    settings.ALLOWED_RECIPIENT_DOMAINS = []


def client_for(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def create(client, **body):
    return client.post(URL, json.dumps(body), content_type="application/json")


def send(client, sender: str):
    body = {"from": sender, "to": "jane@example.org", "subject": "Hi", "text": "Hello"}
    return client.post("/api/v1/emails", json.dumps(body), content_type="application/json")


def test_a_created_key_shows_its_secret_once_and_works(full_api):
    response = create(full_api, name="billing", permission="sending", domains=["Example.COM"], expires_at="2099-01-01T00:00:00Z")
    assert response.status_code == 201, response.content
    created = response.json()
    secret = created.pop("key")
    assert secret.startswith(f"es_{created['prefix']}_")
    assert created | {"id": 0, "created_at": "", "created_by": 0} == {
        "id": 0, "name": "billing", "prefix": created["prefix"], "permission": "sending", "domains": ["example.com"],
        "streams": [], "test": False, "state": "active", "created_at": "", "expires_at": "2099-01-01T00:00:00Z",
        "revoked_at": None, "last_used_at": None, "created_by": 0,
    }
    assert ApiKey.objects.get(pk=created["id"]).secret_hash != secret  # only a hash is stored

    listed = full_api.get(URL).json()["data"]
    assert [item["id"] for item in listed][0] == created["id"]
    assert all("key" not in item for item in listed)
    assert "key" not in full_api.get(f"{URL}/{created['id']}").json()

    assert send(client_for(secret), "billing@example.com").status_code == 202
    used = full_api.get(f"{URL}/{created['id']}").json()
    assert used["last_used_at"] is not None


def test_last_use_is_written_at_most_once_a_minute(full_api, django_assert_num_queries):
    api_key, secret = api_key_create(name="reader", permission="read_only")
    client = client_for(secret)
    assert client.get("/api/v1/emails").status_code == 200
    first = ApiKey.objects.get(pk=api_key.pk).last_used_at
    assert first is not None
    assert client.get("/api/v1/emails").status_code == 200
    assert ApiKey.objects.get(pk=api_key.pk).last_used_at == first  # within the minute: not written again
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=first - LAST_USED_RESOLUTION - timedelta(seconds=1))
    assert client.get("/api/v1/emails").status_code == 200
    assert ApiKey.objects.get(pk=api_key.pk).last_used_at > first


def test_a_revoked_key_is_refused_with_its_own_code(full_api):
    created = create(full_api, name="ci").json()
    client = client_for(created["key"])
    assert send(client, "ci@example.com").status_code == 202

    response = full_api.delete(f"{URL}/{created['id']}")
    assert response.status_code == 200
    assert response.json()["state"] == "revoked" and response.json()["revoked_at"]
    refused = send(client, "ci@example.com")
    assert refused.status_code == 401
    assert refused.json()["error"] == "api_key_revoked"
    assert full_api.delete(f"{URL}/{created['id']}").status_code == 200  # again: nothing changes
    assert full_api.get(f"{URL}/999999").json()["error"] == "api_key_not_found"


def test_an_expired_key_is_refused_with_its_own_code(db):
    api_key, secret = api_key_create(name="short", expires_at=timezone.now() + timedelta(minutes=5))
    client = client_for(secret)
    assert send(client, "short@example.com").status_code == 202
    ApiKey.objects.filter(pk=api_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    refused = send(client, "short@example.com")
    assert (refused.status_code, refused.json()["error"]) == (401, "api_key_expired")
    assert client_for("es_00000000_nope").get("/api/v1/emails").json()["error"] == "unauthorized"


def test_a_scoped_key_sends_from_its_domains_and_their_subdomains_only(full_api):
    secret = create(full_api, name="billing", domains=["example.com"]).json()["key"]
    client = client_for(secret)
    assert send(client, "billing@example.com").status_code == 202
    assert send(client, "billing@mail.example.com").status_code == 202
    refused = send(client, "billing@other.example")  # allowed for the service, not for this key
    assert refused.status_code == 403
    assert refused.json()["error"] == "key_domain_not_allowed"
    assert "example.com" in refused.json()["detail"]
    assert Message.objects.filter(from_email="billing@other.example").count() == 0
    # The same request with an unscoped key goes through: the refusal is the key's.
    assert send(full_api, "billing@other.example").status_code == 202


def test_a_scoped_key_is_refused_per_item_in_a_batch(full_api):
    client = client_for(create(full_api, name="billing", domains=["example.com"]).json()["key"])
    emails = [
        {"from": "a@example.com", "to": "x@example.org", "subject": "1", "text": "1"},
        {"from": "a@other.example", "to": "x@example.org", "subject": "2", "text": "2"},
    ]
    response = client.post("/api/v1/emails/batch", json.dumps({"emails": emails}), content_type="application/json")
    assert response.status_code == 200
    assert [item["index"] for item in response.json()["data"]] == [0]
    assert [(e["index"], e["error"]) for e in response.json()["errors"]] == [(1, "key_domain_not_allowed")]


@pytest.mark.parametrize(
    ("creator", "asked", "problem"),
    [
        ({"permission": "sending"}, {"permission": "full"}, "403:forbidden"),  # only full keys manage keys
        ({"domains": ["example.com"]}, {}, "key_rights_exceeded"),  # no domains = any domain
        ({"domains": ["example.com"]}, {"domains": ["other.example"]}, "key_rights_exceeded"),
        ({"test": True}, {"test": False}, "key_rights_exceeded"),
        ({"expires_at": "2090-01-01T00:00:00Z"}, {}, "key_rights_exceeded"),
        ({"expires_at": "2090-01-01T00:00:00Z"}, {"expires_at": "2091-01-01T00:00:00Z"}, "key_rights_exceeded"),
    ],
)
def test_a_key_cannot_create_a_key_with_more_rights(db, creator, asked, problem):
    from core.fields import MomentField

    fields = {"permission": "full", **creator}
    if "expires_at" in fields:
        fields["expires_at"] = MomentField().to_internal_value(fields["expires_at"])
    _, secret = api_key_create(name="creator", **fields)
    response = create(client_for(secret), name="child", **asked)
    if problem.startswith("403:"):
        assert (response.status_code, response.json()["error"]) == (403, problem[4:])
    else:
        assert (response.status_code, response.json()["error"]) == (403, problem), response.content
    assert ApiKey.objects.filter(name="child").count() == 0


def test_a_scoped_key_may_create_narrower_keys_and_not_revoke_wider_ones(db):
    _, secret = api_key_create(name="team", permission="full", domains=["example.com"], test=True)
    client = client_for(secret)
    narrower = create(client, name="sub", permission="sending", domains=["mail.example.com"], test=True)
    assert narrower.status_code == 201, narrower.content
    assert narrower.json()["created_by"] is not None
    wide, _ = api_key_create(name="production", permission="full")
    refused = client.delete(f"{URL}/{wide.pk}")
    assert (refused.status_code, refused.json()["error"]) == (403, "key_rights_exceeded")
    assert ApiKey.objects.get(pk=wide.pk).revoked_at is None
    assert client.delete(f"{URL}/{narrower.json()['id']}").status_code == 200


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"name": "x", "streams": ["no-such-stream"]}, "stream_not_found", "streams"),
        ({"name": "x", "domains": ["localhost"]}, "invalid_domain", "domains"),
        ({"name": "x", "permission": "admin"}, "invalid_field", "permission"),
        ({"name": "x", "expires_at": "2000-01-01T00:00:00Z"}, "invalid_field", "expires_at"),
        ({"name": "x", "secret": "mine"}, "invalid_field", "secret"),
        ({}, "missing_fields", "name"),
    ],
)
def test_bad_key_requests_are_refused_with_a_stable_code(full_api, body, code, field):
    response = create(full_api, **body)
    assert response.status_code == 400, response.content
    assert response.json()["error"] == code
    assert field in response.json()["fields"]


def test_streams_may_be_empty(full_api):
    response = create(full_api, name="x", streams=[])
    assert response.status_code == 201 and response.json()["streams"] == []


def test_only_full_keys_manage_keys(make_client):
    for permission in ("read_only", "sending"):
        client = make_client(permission)
        assert client.get(URL).json()["error"] == "forbidden"
        assert create(client, name="x").status_code == 403


def test_a_key_may_revoke_itself(db):
    api_key, secret = api_key_create(name="leaked", permission="full", domains=["example.com"])
    client = client_for(secret)
    assert client.delete(f"{URL}/{api_key.pk}").status_code == 200
    assert client.get(URL).json()["error"] == "api_key_revoked"


def test_the_default_sender_is_held_to_the_keys_domains_too(full_api, settings):
    settings.DEFAULT_FROM_EMAIL = "noreply@example.com"
    client = client_for(create(full_api, name="other", domains=["other.example"]).json()["key"])
    body = {"to": "jane@example.org", "subject": "Hi", "text": "Hello"}
    response = client.post("/api/v1/emails", json.dumps(body), content_type="application/json")
    assert (response.status_code, response.json()["error"]) == (403, "key_domain_not_allowed")
