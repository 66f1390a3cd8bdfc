"""POST /api/v1/emails: authentication, permissions, and every validation code (SPEC §4)."""

import base64
import json

import pytest

from emailsvc.models import ApiKey, Message

URL = "/api/v1/emails"
VALID = {"to": "jane@example.com", "subject": "Hello", "text": "Hi"}


def post(client, body, **extra):
    payload = body if isinstance(body, str) else json.dumps(body)
    return client.post(URL, payload, content_type="application/json", **extra)


@pytest.fixture(autouse=True)
def _policy(settings):
    settings.ALLOWED_FROM_DOMAINS = ["example.com"]
    settings.ALLOWED_REPLY_TO_DOMAINS = ["example.com"]
    settings.ALLOWED_RECIPIENT_DOMAINS = []
    settings.MAX_RECIPIENTS = 50


def test_valid_request_is_accepted_with_202_and_stored(api):
    response = post(api, {**VALID, "group_id": "signup"})
    assert response.status_code == 202
    body = response.json()
    assert body["group_id"] == "signup"
    assert body["status"] == "queued"
    assert body["recipients"] == [{"email": "jane@example.com", "status": "queued"}]
    assert Message.objects.filter(email_id=body["email_id"]).exists()


def test_no_key_is_401_with_error_body(db, client):
    response = post(client, VALID)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "detail": "A valid API key is required."}
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_wrong_key_is_401(db, client):
    response = post(client, VALID, HTTP_AUTHORIZATION="Bearer es_deadbeef_not-a-real-secret")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_revoked_key_is_401(make_client):
    from emailsvc.keys import api_key_revoke

    client = make_client(ApiKey.Permission.SENDING)
    api_key_revoke(api_key=ApiKey.objects.get(prefix=client.raw_key.split("_")[1]))
    assert post(client, VALID).status_code == 401


def test_x_api_key_header_is_accepted(make_client):
    client = make_client(ApiKey.Permission.SENDING, header="x-api-key")
    assert post(client, VALID).status_code == 202


def test_read_only_key_may_not_send_403(make_client):
    response = post(make_client(ApiKey.Permission.READ_ONLY), VALID)
    assert response.status_code == 403
    assert response.json() == {
        "error": "forbidden",
        "detail": "This API key has permission 'read_only'; this call needs 'sending'.",
    }
    assert not Message.objects.exists()


def test_key_is_stored_only_as_a_hash(make_client):
    client = make_client()
    stored = ApiKey.objects.get()
    assert client.raw_key not in (stored.secret_hash, stored.prefix, stored.name)
    assert len(stored.secret_hash) == 64


def test_invalid_json(api):
    response = post(api, '{"to": ')
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    assert "fields" not in response.json()


def test_missing_fields_names_each_field(api):
    response = post(api, {"text": "hi"})
    assert response.status_code == 400
    assert response.json() == {
        "error": "missing_fields",
        "detail": "Missing required fields: subject, to.",
        "fields": {"to": ["This field is required."], "subject": ["This field is required."]},
    }


def test_html_or_text_is_required(api):
    response = post(api, {"to": "jane@example.com", "subject": "Hi"})
    assert response.status_code == 400
    assert response.json()["error"] == "missing_fields"
    assert response.json()["fields"] == {"html": ["Give html, text or both."], "text": ["Give html, text or both."]}


@pytest.mark.parametrize("field", ["to", "cc", "bcc", "reply_to", "from"])
def test_invalid_address_names_the_field(api, field):
    body = {**VALID, field: "not-an-address"}
    response = post(api, body)
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_address",
        "detail": f"{field}: 'not-an-address' is not a valid email address.",
        "fields": {field: ["'not-an-address' is not a valid email address."]},
    }


def test_invalid_address_in_a_list_reports_only_the_bad_ones(api):
    response = post(api, {**VALID, "to": ["ok@example.com", "bad@", "Jane <jane@example.com>"]})
    assert response.json()["fields"] == {"to": ["'bad@' is not a valid email address."]}


def test_from_domain_not_allowed(api):
    response = post(api, {**VALID, "from": "Eve <eve@evil.example.net>"})
    assert response.status_code == 400
    assert response.json() == {
        "error": "from_domain_not_allowed",
        "detail": "Sending from the domain 'evil.example.net' is not allowed.",
        "fields": {"from": ["Allowed from domains: example.com."]},
    }


def test_from_subdomain_of_allowed_domain_is_allowed(api):
    assert post(api, {**VALID, "from": "news@mail.example.com"}).status_code == 202


def test_lookalike_domain_is_not_a_subdomain(api):
    response = post(api, {**VALID, "from": "x@badexample.com"})
    assert response.json()["error"] == "from_domain_not_allowed"


def test_reply_to_domain_not_allowed(api):
    response = post(api, {**VALID, "reply_to": ["help@example.com", "x@other.org"]})
    assert response.status_code == 400
    assert response.json() == {
        "error": "reply_to_domain_not_allowed",
        "detail": "A reply-to domain is not allowed.",
        "fields": {"reply_to": ["Domain 'other.org' is not allowed."]},
    }


def test_recipient_domain_not_allowed(api, settings):
    settings.ALLOWED_RECIPIENT_DOMAINS = ["example.com"]
    response = post(api, {**VALID, "cc": "boss@corp.example.com", "bcc": "spy@elsewhere.net"})
    assert response.status_code == 400
    assert response.json() == {
        "error": "recipient_domain_not_allowed",
        "detail": "A recipient domain is not allowed.",
        "fields": {"bcc": ["Domain 'elsewhere.net' is not allowed."]},
    }


def test_empty_recipient_allowlist_allows_every_domain(api):
    assert post(api, {**VALID, "to": "someone@anywhere.example.org"}).status_code == 202


def test_too_many_recipients(api):
    body = {**VALID, "to": [f"u{i}@example.com" for i in range(30)], "cc": [f"c{i}@example.com" for i in range(21)]}
    response = post(api, body)
    assert response.status_code == 400
    assert response.json() == {
        "error": "too_many_recipients",
        "detail": "to: 51 recipients in to, cc and bcc; at most 50 are allowed.",
        "fields": {"to": ["51 recipients in to, cc and bcc; at most 50 are allowed."]},
    }


def test_fifty_recipients_are_allowed(api):
    body = {**VALID, "to": [f"u{i}@example.com" for i in range(25)], "bcc": [f"b{i}@example.com" for i in range(25)]}
    assert post(api, body).status_code == 202


def test_payload_too_large_413(api, settings):
    settings.MAX_MESSAGE_BYTES = 200_000
    content = base64.b64encode(b"\0" * 160_000).decode()
    response = post(api, {**VALID, "attachments": [{"filename": "big.bin", "content": content}]})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert not Message.objects.exists()


def test_body_over_the_request_limit_is_413(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post(api, {**VALID, "text": "x" * 2000})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_duplicate_email_id_409(api):
    assert post(api, {**VALID, "email_id": "order-42-receipt"}).status_code == 202
    response = post(api, {**VALID, "email_id": "order-42-receipt"})
    assert response.status_code == 409
    assert response.json() == {
        "error": "duplicate_email_id",
        "detail": "An email with email_id 'order-42-receipt' already exists.",
    }
    assert Message.objects.count() == 1


def test_caller_email_id_is_used(api):
    response = post(api, {**VALID, "email_id": "invite:7"})
    assert response.json()["email_id"] == "invite:7"


def test_email_id_with_a_slash_is_refused(api):
    response = post(api, {**VALID, "email_id": "a/b"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_field"
    assert "email_id" in response.json()["fields"]


@pytest.mark.parametrize("header", ["From", "bcc", "Message-ID", "X-SES-CONFIGURATION-SET", "X-Emailsvc-Tracking-ID", "Transfer-Encoding"])
def test_identity_and_hop_by_hop_headers_are_refused(api, header):
    response = post(api, {**VALID, "headers": {header: "x"}})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_header"
    assert response.json()["fields"] == {"headers": [f"The header '{header}' may not be set by callers."]}


def test_header_injection_is_refused(api):
    response = post(api, {**VALID, "headers": {"X-Campaign": "a\r\nBcc: victim@example.com"}})
    assert response.json()["error"] == "invalid_header"


def test_invalid_attachment_base64(api):
    response = post(api, {**VALID, "attachments": [{"filename": "a.txt", "content": "%%%not base64"}]})
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_attachment",
        "detail": "attachments[0].content: content is not valid base64.",
        "fields": {"attachments[0].content": ["content is not valid base64."]},
    }


def test_metadata_over_10kb_is_refused(api):
    response = post(api, {**VALID, "metadata": {"blob": "x" * 11_000}})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_field"
    assert "metadata" in response.json()["fields"]


def test_unknown_field_is_refused(api):
    response = post(api, {**VALID, "tempalte": "welcome"})
    assert response.status_code == 400
    assert response.json()["fields"] == {"tempalte": ["Unknown field."]}


def test_invalid_priority(api):
    response = post(api, {**VALID, "priority": "urgent"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_field"
    assert list(response.json()["fields"]) == ["priority"]


def test_body_must_be_an_object(api):
    response = post(api, [VALID])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_field"


def test_get_unknown_email_is_404(api):
    response = api.get("/api/v1/emails/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "No email with email_id 'nope'."}


def test_read_only_key_may_read(api, make_client):
    email_id = post(api, VALID).json()["email_id"]
    response = make_client(ApiKey.Permission.READ_ONLY).get(f"/api/v1/emails/{email_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["email_id"] == email_id
    assert body["from"] == {"email": "noreply@example.com", "name": ""}
    assert body["recipients"][0]["email"] == "jane@example.com"
    assert body["recipients"][0]["status"] == "queued"


def test_schema_and_docs_are_served(client, db):
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    spec = schema.json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/emails" in spec["paths"]
    assert "ErrorBody" in spec["components"]["schemas"]
    assert client.get("/api/docs/").status_code == 200


# --- header text, attachments and ids: refused at the door, never altered ----------------

BIDI_CONTROLS = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
                 "\u200e", "\u200f", "\u061c"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def attachment(filename="report.pdf", content=b"%PDF-1.4", **extra):
    return {"filename": filename, "content": b64(content), **extra}


def refused(response, code: str, field: str):
    assert response.status_code == 400, response.json()
    body = response.json()
    assert body["error"] == code, body
    assert field in body["fields"], body
    assert not Message.objects.exists()
    return body


@pytest.mark.parametrize("control", BIDI_CONTROLS, ids=[f"U+{ord(c):04X}" for c in BIDI_CONTROLS])
def test_bidi_controls_are_refused_in_subject_names_filenames_and_header_values(api, control):
    """Unicode bidi controls make a header read differently from what it holds."""
    refused(post(api, {**VALID, "subject": f"Invoice {control}fdp.exe"}), "invalid_field", "subject")
    refused(post(api, {**VALID, "from_name": f"Bank{control}"}), "invalid_field", "from_name")
    named = {"email": "jane@example.com", "name": f"Jane{control}"}
    refused(post(api, {**VALID, "to": named}), "invalid_address", "to")
    refused(post(api, {**VALID, "cc": f"Jo{control}e <joe@example.com>"}), "invalid_address", "cc")
    refused(post(api, {**VALID, "from": f"Shop{control} <shop@example.com>"}), "invalid_address", "from")
    refused(post(api, {**VALID, "attachments": [attachment(f"invoice{control}fdp.pdf")]}), "invalid_attachment",
            "attachments[0].filename")
    refused(post(api, {**VALID, "headers": {"X-Note": f"a{control}b"}}), "invalid_header", "headers")
    refused(post(api, {**VALID, "tags": [f"t{control}"]}), "invalid_field", "tags")


@pytest.mark.parametrize("subject", ["   ", "\u3000", " \u00a0 "])
def test_a_whitespace_only_subject_is_refused(api, subject):
    body = refused(post(api, {**VALID, "subject": subject}), "invalid_field", "subject")
    assert "only spaces" in body["detail"]


@pytest.mark.parametrize("value", ["abc\n", "abc ", " abc", "abc\t"])
def test_an_email_id_with_edge_whitespace_is_refused_not_trimmed(api, value):
    refused(post(api, {**VALID, "email_id": value}), "invalid_field", "email_id")


@pytest.mark.parametrize("field, value", [("group_id", "signup "), ("group_id", " signup"), ("tags", ["vip "]),
                                          ("template", "welcome ")])
def test_other_identifiers_with_edge_spaces_are_refused_not_trimmed(api, field, value):
    body = refused(post(api, {**VALID, field: value}), "invalid_field", field)
    assert "begin or end with spaces" in body["detail"]


def test_unknown_keys_in_an_attachment_are_refused_like_unknown_fields(api):
    response = post(api, {**VALID, "attachments": [{**attachment(), "disposition": "inline"}]})
    body = refused(response, "invalid_field", "attachments[0].disposition")
    assert body["fields"]["attachments[0].disposition"] == ["Unknown field."]


@pytest.mark.parametrize("field", ["to", "cc", "bcc", "reply_to", "from"])
def test_unknown_keys_in_an_address_object_are_refused_like_unknown_fields(api, field):
    value = {"email": "jane@example.com", "name": "Jane", "nmae": "typo"}
    body = refused(post(api, {**VALID, field: value if field == "from" else [value]}), "invalid_field", field)
    assert "'nmae'" in body["fields"][field][0]


@pytest.mark.parametrize(
    "content_type", ["multipart/mixed", "Multipart/Alternative", "message/rfc822", "message/partial"]
)
def test_multipart_and_message_attachment_types_are_refused(api, content_type):
    response = post(api, {**VALID, "attachments": [attachment("part.eml", content_type=content_type)]})
    refused(response, "invalid_attachment", "attachments[0].content_type")


SES_REFUSED = ["setup.exe", "run.BAT", "x.js", "s.scr", "v.vbs", "a.ps1", "m.msh1xml", "trailing.exe.", "spaces.exe  ",
               "dots.exe. . ", "=?utf-8?q?invoice=2Eexe?=", "=?UTF-8?B?aW52b2ljZS5leGU=?=", "utf-8''invoice%2Eexe",
               "=?utf-8?q?r=C3=A9sum=C3=A9=2Escr?="]


@pytest.mark.parametrize("filename", SES_REFUSED)
def test_attachment_types_ses_refuses_are_refused_by_their_real_extension(api, filename):
    body = refused(post(api, {**VALID, "attachments": [attachment(filename)]}), "invalid_attachment",
                   "attachments[0].filename")
    assert "Amazon SES" in body["detail"]


@pytest.mark.parametrize("filename", [" report.pdf", "report.pdf ", "\u3000report.pdf"])
def test_a_filename_with_edge_spaces_is_refused_not_renamed(api, filename):
    refused(post(api, {**VALID, "attachments": [attachment(filename)]}), "invalid_attachment", "attachments[0].filename")


@pytest.mark.parametrize(
    "filename",
    ["report.pdf", "exe", "notes.exe.txt", "archive.zip", "=?utf-8?q?report=2Epdf?=", "=?é?q?x.pdf?=",
     "rot13''report%2Epdf", "=?zlib?b?eA==?=.pdf"],
)
def test_other_attachment_names_are_accepted(api, filename):
    assert post(api, {**VALID, "attachments": [attachment(filename)]}).status_code == 202


CONTENT = bytes(range(256)) * 3


@pytest.mark.parametrize(
    "encoded",
    [
        base64.encodebytes(CONTENT).decode(),  # wrapped at 76 columns, LF
        base64.encodebytes(CONTENT).decode().replace("\n", "\r\n"),  # wrapped, CRLF
        base64.b64encode(CONTENT).decode().rstrip("="),  # unpadded
        base64.urlsafe_b64encode(CONTENT).decode(),  # URL-safe
        base64.urlsafe_b64encode(CONTENT).decode().rstrip("="),  # URL-safe, unpadded
    ],
    ids=["wrapped-lf", "wrapped-crlf", "unpadded", "url-safe", "url-safe-unpadded"],
)
def test_base64_as_callers_write_it_is_decoded_to_the_same_bytes(api, encoded):
    response = post(api, {**VALID, "attachments": [{"filename": "blob.bin", "content": encoded}]})
    assert response.status_code == 202, response.json()
    stored = Message.objects.get(email_id=response.json()["email_id"]).attachments.get()
    assert bytes(stored.content) == CONTENT


@pytest.mark.parametrize("encoded", ["QUJD$", "QUJDR", "QU-J/", "Q===", "QU JD!"])
def test_what_is_not_base64_is_refused(api, encoded):
    refused(post(api, {**VALID, "attachments": [{"filename": "a.bin", "content": encoded}]}), "invalid_attachment",
            "attachments[0].content")


def test_a_zero_byte_attachment_is_accepted(api):
    response = post(api, {**VALID, "attachments": [{"filename": "empty.txt", "content": ""}]})
    assert response.status_code == 202, response.json()
    stored = Message.objects.get(email_id=response.json()["email_id"]).attachments.get()
    assert (bytes(stored.content), stored.size, stored.content_type) == (b"", 0, "text/plain")


def test_a_header_value_that_cannot_fit_beside_its_long_name_is_refused(api):
    name = "X-" + "n" * 98
    response = post(api, {**VALID, "headers": {name: "v" * 899}})
    body = refused(response, "invalid_header", "headers")
    assert "fit on one line" in body["detail"]
