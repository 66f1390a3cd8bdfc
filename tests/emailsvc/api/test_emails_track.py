"""The `track` field of a send: stored as asked, off by default, bad values refused
with a stable code, and described in the OpenAPI schema."""

import json

import pytest

from emailsvc.models import Message


def post(api, **fields):
    body = {"to": "jane@example.com", "subject": "Hi", "html": "<a href='https://a.example/'>a</a>", **fields}
    return api.post("/api/v1/emails", json.dumps(body), content_type="application/json")


def test_track_is_stored_as_asked_and_off_by_default(api, settings):
    settings.EMAIL_PROVIDER = "smtp"
    tracked = post(api, track={"opens": True, "clicks": True})
    assert tracked.status_code == 202, tracked.json()
    message = Message.objects.get(email_id=tracked.json()["email_id"])
    assert message.tracking == {"opens": True, "clicks": True, "links": ["https://a.example/"]}
    assert api.get(f"/api/v1/emails/{message.email_id}").json()["track"] == {"opens": True, "clicks": True}

    plain = Message.objects.get(email_id=post(api).json()["email_id"])
    assert plain.tracking == {"opens": False, "clicks": False}


def test_ses_sends_keep_no_link_list(api, settings):
    settings.EMAIL_PROVIDER = "ses"
    message = Message.objects.get(email_id=post(api, track={"clicks": True}).json()["email_id"])
    assert message.tracking == {"opens": False, "clicks": True}


@pytest.mark.parametrize(
    "track, field",
    [
        ("yes", "track"),
        ({"opens": "true"}, "track.opens"),
        ({"opens": 1}, "track.opens"),
        ({"pixels": True}, "track.pixels"),
    ],
)
def test_a_bad_track_value_is_invalid_field_naming_it(api, track, field):
    response = post(api, track=track)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_field" and field in body["fields"], body


def test_track_is_in_the_openapi_schema(client, db):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    send = schema["components"]["schemas"]["SendEmailInput"]["properties"]["track"]
    ref = send.get("$ref") or next(item["$ref"] for item in send.get("allOf", send.get("oneOf", [])) if "$ref" in item)
    track = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(track["properties"]) == {"opens", "clicks"} and track["additionalProperties"] is False
    assert track["properties"]["opens"]["type"] == "boolean"


def test_a_resend_is_tracked_as_the_original_was(api, settings):
    from emailsvc.api.emails_inputs import send_request_validate
    from emailsvc.submission.resend import message_resend

    settings.EMAIL_PROVIDER = "smtp"
    original = Message.objects.get(email_id=post(api, track={"opens": True}).json()["email_id"])
    again = message_resend(message_id=original.pk, by="tests", validate=send_request_validate)
    assert again.tracking == {"opens": True, "clicks": False}
    plain = Message.objects.get(email_id=post(api).json()["email_id"])
    assert message_resend(message_id=plain.pk, by="tests", validate=send_request_validate).tracking == {
        "opens": False, "clicks": False,
    }
