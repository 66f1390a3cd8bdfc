"""/api/v1/streams, the `stream` and `unsubscribe` fields of a send, and keys
limited to streams (docs/streams.md)."""

import json

import pytest
from rest_framework.test import APIClient

from emailsvc.keys import api_key_create
from emailsvc.models import Message

STREAMS = "/api/v1/streams"


@pytest.fixture(autouse=True)
def _policy(settings):
    settings.ALLOWED_FROM_DOMAINS = ["example.com"]
    settings.ALLOWED_RECIPIENT_DOMAINS = []
    settings.UNSUBSCRIBE_BASE_URL = "https://mail.example.com"


def client_for(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def post(client, path: str, body):
    return client.post(path, json.dumps(body), content_type="application/json")


def send(client, **fields):
    return post(client, "/api/v1/emails", {"to": "jane@example.org", "subject": "Hi", "text": "Hello", **fields})


def test_every_installation_has_a_transactional_and_a_broadcast_stream(read_api):
    streams = {stream["name"]: stream for stream in read_api.get(STREAMS).json()["data"]}
    assert streams["transactional"]["unsubscribe"] == "on_request" and streams["transactional"]["rate_share"] == 1.0
    assert streams["broadcast"]["unsubscribe"] == "always" and streams["broadcast"]["rate_share"] == 0.5


def test_a_full_key_creates_reads_and_changes_a_stream(full_api):
    created = post(full_api, STREAMS, {"name": "digests", "unsubscribe": "always", "rate_share": 0.2})
    assert created.status_code == 201, created.content
    assert created.json()["configuration_set"] == ""
    changed = full_api.patch(f"{STREAMS}/digests", {"configuration_set": "digests-set"}, format="json")
    assert changed.status_code == 200, changed.content
    assert full_api.get(f"{STREAMS}/digests").json() | {"created_at": "", "updated_at": ""} == {
        "name": "digests", "description": "", "configuration_set": "digests-set", "unsubscribe": "always",
        "rate_share": 0.2, "track": {"opens": False, "clicks": False}, "created_at": "", "updated_at": "",
    }
    assert post(full_api, STREAMS, {"name": "digests"}).json()["error"] == "stream_exists"


def test_a_streams_tracking_applies_to_its_sends_that_do_not_say(full_api, settings):
    settings.EMAIL_PROVIDER = "smtp"  # emailsvc's own pixel and links
    created = post(full_api, STREAMS, {"name": "digest", "track": {"opens": True, "clicks": True}})
    assert created.status_code == 201, created.content
    assert created.json()["track"] == {"opens": True, "clicks": True}
    html = '<p><a href="https://example.com/read?id=7">Read</a></p>'

    default = send(full_api, stream="digest", html=html).json()["email_id"]
    own = send(full_api, stream="digest", html=html, track={"opens": True}).json()["email_id"]
    untracked = send(full_api, html=html).json()["email_id"]  # transactional: off

    tracking = {m.email_id: m.tracking for m in Message.objects.filter(email_id__in=[default, own, untracked])}
    assert tracking[default]["opens"] and tracking[default]["clicks"]
    assert tracking[default]["links"] == ["https://example.com/read?id=7"]
    assert (tracking[own]["opens"], tracking[own]["clicks"]) == (True, False)  # a send's track decides both
    assert (tracking[untracked]["opens"], tracking[untracked]["clicks"]) == (False, False)
    changed = full_api.patch(f"{STREAMS}/digest", {"track": {"clicks": True}}, format="json")
    assert changed.json()["track"] == {"opens": False, "clicks": True}
    refused = full_api.patch(f"{STREAMS}/digest", {"track": {"pixels": True}}, format="json")
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_field"


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"name": "Has Spaces"}, "invalid_stream_name", "name"),
        ({"name": "ok", "rate_share": 0}, "invalid_field", "rate_share"),
        ({"name": "ok", "unsubscribe": "never"}, "invalid_field", "unsubscribe"),
        ({"name": "ok", "configuration_set": "a b"}, "invalid_field", "configuration_set"),
        ({"name": "ok", "colour": "blue"}, "invalid_field", "colour"),
    ],
)
def test_bad_stream_requests_are_refused_with_a_stable_code(full_api, body, code, field):
    response = post(full_api, STREAMS, body)
    assert response.status_code == 400, response.content
    assert response.json()["error"] == code and field in response.json()["fields"]


def test_only_full_keys_create_streams_and_an_unknown_one_is_404(make_client, full_api):
    assert post(make_client("sending"), STREAMS, {"name": "x"}).status_code == 403
    assert full_api.get(f"{STREAMS}/nope").json()["error"] == "stream_not_found"


def test_a_send_names_its_stream_and_a_broadcast_one_goes_at_low_priority(api):
    transactional = send(api)
    broadcast = send(api, stream="broadcast", priority="high")
    assert transactional.status_code == 202 and broadcast.status_code == 202, broadcast.content
    stored = {m.email_id: m for m in Message.objects.all()}
    first, second = stored[transactional.json()["email_id"]], stored[broadcast.json()["email_id"]]
    assert (first.stream, first.unsubscribe, first.priority) == ("transactional", False, "normal")
    assert (second.stream, second.unsubscribe, second.priority) == ("broadcast", True, "low")
    detail = api.get(f"/api/v1/emails/{second.email_id}").json()
    assert (detail["stream"], detail["unsubscribe"]) == ("broadcast", True)


def test_a_send_on_an_unknown_stream_or_with_unsubscribe_to_many_is_refused(api):
    assert send(api, stream="nope").json()["error"] == "stream_not_found"
    many = send(api, stream="broadcast", to=["a@example.org", "b@example.org"])
    assert many.status_code == 400 and many.json()["error"] == "unsubscribe_needs_one_recipient"
    asked = send(api, unsubscribe=True, cc="c@example.org")
    assert asked.json()["error"] == "unsubscribe_needs_one_recipient"


def test_a_key_limited_to_a_stream_is_refused_on_another(db):
    _, raw = api_key_create(name="newsletters", permission="full", streams=["broadcast"])
    client = client_for(raw)
    assert send(client, stream="broadcast").status_code == 202
    refused = send(client)  # transactional, the default
    assert refused.status_code == 403 and refused.json()["error"] == "key_stream_not_allowed"
    assert send(client, stream="transactional").json()["error"] == "key_stream_not_allowed"
    assert [s["name"] for s in client.get(STREAMS).json()["data"]] == ["broadcast"]
    assert client.get(f"{STREAMS}/transactional").json()["error"] == "key_stream_not_allowed"


def test_a_key_cannot_create_a_key_on_streams_it_does_not_have(db):
    _, raw = api_key_create(name="newsletters", permission="full", streams=["broadcast"])
    client = client_for(raw)
    for streams in (["transactional"], ["broadcast", "transactional"], []):
        refused = post(client, "/api/v1/api-keys", {"name": "wider", "streams": streams})
        assert refused.status_code == 403 and refused.json()["error"] == "key_rights_exceeded", streams
    narrower = post(client, "/api/v1/api-keys", {"name": "same", "streams": ["broadcast"]})
    assert narrower.status_code == 201 and narrower.json()["streams"] == ["broadcast"]
    assert post(client, STREAMS, {"name": "mine"}).json()["error"] == "key_rights_exceeded"


def test_unsubscribe_links_need_a_base_url(api, settings):
    settings.UNSUBSCRIBE_BASE_URL = ""
    assert send(api, stream="broadcast").json()["error"] == "unsubscribe_not_configured"
    assert send(api).status_code == 202  # transactional without the header: no link needed


def test_a_one_click_unsubscribe_shows_on_the_address_page(api, admin_client, client):
    from emailsvc.models import Recipient
    from emailsvc.streams.tokens import unsubscribe_token

    email_id = send(api, to="Reader@Example.org", stream="broadcast").json()["email_id"]
    recipient = Recipient.objects.get(message__email_id=email_id)
    token = unsubscribe_token(recipient_id=recipient.pk, email=recipient.email, stream="broadcast")
    assert client.post(f"/u/{token}", "List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded").status_code == 200

    page = admin_client.get("/admin/address/", {"q": "reader@example.org"}).content.decode()
    assert "unsubscribed</span> from the <b>broadcast</b> stream" in page
    assert "queued → unsubscribed" in page  # the email's timeline


def test_bounces_and_complaints_still_suppress_every_stream(api):
    from emailsvc.suppressions.services import suppression_add

    suppression_add(email="gone@example.org", reason="hard_bounce", source="test")
    for stream in ("transactional", "broadcast"):
        answer = send(api, to="gone@example.org", stream=stream).json()
        assert answer["recipients"][0]["status"] == "suppressed", answer


def test_an_unsubscribe_link_works_for_its_lifetime_and_not_after(db, client, monkeypatch, settings):
    import time

    from emailsvc.streams.tokens import unsubscribe_token

    def token_made_days_ago(days: float) -> str:
        real = time.time
        with monkeypatch.context() as patch:
            patch.setattr(time, "time", lambda: real() - days * 86400)
            return unsubscribe_token(recipient_id=1, email="old@example.org", stream="broadcast")

    assert settings.UNSUBSCRIBE_TOKEN_DAYS == 180
    assert client.get(f"/u/{token_made_days_ago(61)}").status_code == 200
    assert client.get(f"/u/{token_made_days_ago(179)}").status_code == 200
    assert client.get(f"/u/{token_made_days_ago(181)}").status_code == 404
