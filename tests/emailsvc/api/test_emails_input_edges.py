"""Inputs at the edges of POST /api/v1/emails and /emails/batch (issue 12): what is
accepted can be sent, what cannot is refused at the door with a stable code
that names the field.

- internationalised domains: accepted, stored in one canonical (IDNA) form that
  suppressions, de-duplication and the domain policy all use;
- values that would break a header line or the size limit on the wire;
- values of the wrong JSON type (never coerced);
- the OpenAPI schema states these limits.
"""

import json
from email import message_from_bytes, policy

import pytest

from config.settings import _domain_list
from emailsvc.models import Message, Recipient, Status, Suppression
from emailsvc.providers import build_email
from emailsvc.suppressions.services import suppression_add, suppression_lift

EMAILS = "/api/v1/emails"
BATCH = "/api/v1/emails/batch"
VALID = {"to": "jane@example.com", "subject": "Hello", "text": "Hi"}
BUECHER = "xn--bcher-kva.example"  # bücher.example


def post(client, url, body):
    return client.post(url, json.dumps(body), content_type="application/json")


@pytest.fixture(autouse=True)
def _policy(settings):
    settings.ALLOWED_FROM_DOMAINS = ["example.com"]
    settings.ALLOWED_REPLY_TO_DOMAINS = []
    settings.ALLOWED_RECIPIENT_DOMAINS = []
    settings.MAX_RECIPIENTS = 50
    settings.MAX_REPLY_TO = 10
    settings.MAX_BATCH_SIZE = 500
    settings.MAX_METADATA_BYTES = 10 * 1024
    settings.MAX_MESSAGE_BYTES = 10 * 1024 * 1024
    settings.SEND_AT_MAX_DAYS = 30


def stored_recipients(email_id: str) -> list[tuple[str, str, str]]:
    return list(Recipient.objects.filter(message__email_id=email_id).order_by("id").values_list("email", "name", "status"))


def wire_bytes(email_id: str) -> bytes:
    """The MIME message the provider would be handed for a stored email."""
    message = Message.objects.get(email_id=email_id)
    recipients = list(message.recipients.order_by("id"))
    return build_email(message, recipients, list(message.attachments.all())).message().as_bytes()


# --- 1. internationalised domains ------------------------------------------------


def test_idn_recipients_are_accepted_and_stored_in_ascii_form(api):
    response = post(api, EMAILS, {**VALID, "to": ["Zoë <Zoe@Bücher.example>", "user@例え.jp"]})

    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["recipients"] == [
        {"email": f"zoe@{BUECHER}", "status": "queued"},
        {"email": "user@xn--r8jz45g.jp", "status": "queued"},
    ]
    assert stored_recipients(body["email_id"]) == [
        (f"zoe@{BUECHER}", "Zoë", "queued"),
        ("user@xn--r8jz45g.jp", "", "queued"),
    ]


def test_the_same_idn_address_in_both_forms_receives_one_copy(api):
    response = post(api, EMAILS, {**VALID, "to": ["user@bücher.example", f"USER@{BUECHER.upper()}"], "cc": "User@BÜCHER.example"})

    assert response.status_code == 202
    assert stored_recipients(response.json()["email_id"]) == [(f"user@{BUECHER}", "", "queued")]


def test_idn_from_subdomain_of_an_allowed_domain_is_accepted(api):
    response = post(api, EMAILS, {**VALID, "from": "News <news@bücher.example.com>"})

    assert response.status_code == 202, response.json()
    message = Message.objects.get(email_id=response.json()["email_id"])
    assert (message.from_email, message.from_name) == (f"news@{BUECHER}.com", "News")


@pytest.mark.parametrize("allowed", ["bücher.example", BUECHER, "BÜCHER.example"])
@pytest.mark.parametrize("sender", ["x@bücher.example", f"x@{BUECHER}", "x@mail.bücher.example", f"x@mail.{BUECHER}"])
def test_allowlisted_idn_domain_matches_in_either_form(api, settings, allowed, sender):
    settings.ALLOWED_FROM_DOMAINS = [allowed]
    assert post(api, EMAILS, {**VALID, "from": sender}).status_code == 202


def test_idn_domain_not_allowlisted_is_refused_in_its_ascii_form(api, settings):
    settings.ALLOWED_RECIPIENT_DOMAINS = ["example.com"]
    response = post(api, EMAILS, {**VALID, "to": "user@bücher.example"})

    assert response.status_code == 400
    assert response.json()["error"] == "recipient_domain_not_allowed"
    assert response.json()["fields"] == {"to": [f"Domain '{BUECHER}' is not allowed."]}


def test_domain_settings_are_stored_in_canonical_form(monkeypatch):
    monkeypatch.setenv("ALLOWED_RECIPIENT_DOMAINS", "Bücher.example, .Example.COM, 例え.jp,*")
    assert _domain_list("ALLOWED_RECIPIENT_DOMAINS") == [BUECHER, "example.com", "xn--r8jz45g.jp", "*"]


def test_an_invalid_domain_setting_fails_naming_the_variable(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.setenv("ALLOWED_FROM_DOMAINS", "good.example,☃.example")
    with pytest.raises(ImproperlyConfigured, match="ALLOWED_FROM_DOMAINS"):
        _domain_list("ALLOWED_FROM_DOMAINS")


@pytest.mark.parametrize("field", ["to", "cc", "bcc", "reply_to", "from"])
def test_non_ascii_local_part_is_refused_naming_the_field(api, field):
    response = post(api, EMAILS, {**VALID, field: "jürgen@bücher.example"})

    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_address"
    assert list(body["fields"]) == [field]
    assert "must be ASCII" in body["fields"][field][0]
    assert body["detail"].startswith(f"{field}: 'jürgen@bücher.example' cannot be sent")
    assert not Message.objects.exists()


@pytest.mark.parametrize("address", ["x@☃.example", "x@-bad-.example", "x@a..example", f"x@{'ü' * 64}.example"])
def test_invalid_internationalised_domain_is_invalid_address(api, address):
    response = post(api, EMAILS, {**VALID, "to": address})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_address"
    assert list(response.json()["fields"]) == ["to"]


def test_suppression_of_an_idn_address_applies_in_either_form(api):
    suppression = suppression_add(email="User@Bücher.example", reason="hard_bounce", source="test")
    assert suppression.email == f"user@{BUECHER}"

    for address in (f"user@{BUECHER}", "USER@BÜCHER.EXAMPLE"):
        response = post(api, EMAILS, {**VALID, "to": [address, "ok@example.com"]})
        assert response.status_code == 202
        assert stored_recipients(response.json()["email_id"]) == [
            (f"user@{BUECHER}", "", "suppressed"),
            ("ok@example.com", "", "queued"),
        ]

    assert suppression_lift(email="user@bücher.example") is True
    assert not Suppression.objects.exists()


def test_suppression_stored_before_canonical_forms_still_applies_and_lifts(api):
    Suppression.objects.create(email="old@bücher.example", reason="manual")

    response = post(api, EMAILS, {**VALID, "to": "old@bücher.example"})
    assert response.json()["status"] == Status.SUPPRESSED

    assert suppression_lift(email=f"old@{BUECHER}") is True
    assert not Suppression.objects.exists()


def test_idn_email_builds_ascii_headers_with_rfc2047_display_names(api):
    response = post(
        api,
        EMAILS,
        {
            "to": "Zoë Ünal <zoe@bücher.example>",
            "cc": {"email": "kim@例え.jp", "name": "木村"},
            "from": "news@bücher.example.com",
            "from_name": "Jürgen Müller, GmbH",
            "reply_to": "Hélène <help@bücher.example>",
            "subject": "Grüße",
            "text": "Hallo",
        },
    )
    assert response.status_code == 202, response.json()

    raw = wire_bytes(response.json()["email_id"])
    head = raw.split(b"\n\n", 1)[0]
    assert head.isascii()
    assert b"=?utf-8?" in head
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["From"].addresses[0].display_name == "Jürgen Müller, GmbH"
    assert parsed["From"].addresses[0].addr_spec == f"news@{BUECHER}.com"
    assert [(a.display_name, a.addr_spec) for a in parsed["To"].addresses] == [("Zoë Ünal", f"zoe@{BUECHER}")]
    assert [(a.display_name, a.addr_spec) for a in parsed["Cc"].addresses] == [("木村", "kim@xn--r8jz45g.jp")]
    assert [(a.display_name, a.addr_spec) for a in parsed["Reply-To"].addresses] == [("Hélène", f"help@{BUECHER}")]
    assert parsed["Subject"] == "Grüße"


# --- 3. reply_to with an IDN domain, IDN recipients and the size check ---------------


def test_idn_reply_to_is_accepted_and_stored_canonical(api, settings):
    settings.ALLOWED_REPLY_TO_DOMAINS = ["bücher.example"]
    response = post(api, EMAILS, {**VALID, "reply_to": ["Help <help@Bücher.example>", f"desk@{BUECHER}"]})

    assert response.status_code == 202, response.json()
    message = Message.objects.get(email_id=response.json()["email_id"])
    assert message.reply_to == [f"Help <help@{BUECHER}>", f"desk@{BUECHER}"]


def test_batch_with_idn_reply_to_accepts_it_and_a_bad_reply_to_fails_alone(api):
    emails = [
        {**VALID, "reply_to": "help@bücher.example"},
        {**VALID, "reply_to": "jürgen@bücher.example"},
        {**VALID, "to": "user@例え.jp"},
    ]
    response = post(api, BATCH, {"emails": emails})

    assert response.status_code == 200
    body = response.json()
    assert [d["index"] for d in body["data"]] == [0, 2]
    assert [(e["index"], e["error"], list(e["fields"])) for e in body["errors"]] == [(1, "invalid_address", ["reply_to"])]
    assert Message.objects.count() == 2


def test_idn_recipient_with_a_large_body_is_measured_not_crashed(api, settings):
    settings.MAX_MESSAGE_BYTES = 200_000
    fits = post(api, EMAILS, {**VALID, "to": "user@bücher.example", "text": "x" * 100_000})
    too_big = post(api, EMAILS, {**VALID, "to": "user@bücher.example", "text": "x" * 250_000})

    assert fits.status_code == 202, fits.json()
    assert too_big.status_code == 413
    assert too_big.json()["error"] == "payload_too_large"
    assert Message.objects.count() == 1


# --- 4. refused at the door: what cannot reach the wire -------------------------------


@pytest.mark.parametrize(
    ("field", "value", "reported"),
    [
        ("subject", "Hello\r\nBcc: victim@example.com", "subject"),
        ("subject", "Hello\nthere", "subject"),
        ("subject", "nul\x00here", "subject"),
        ("subject", "next line\x85", "subject"),
        ("subject", "line\u2028separator", "subject"),
        ("from_name", "Eve\r\nBcc: victim@example.com", "from_name"),
        ("tags", ["fine", "bad\r\ntag"], "tags[1]"),
        ("group_id", "a\nb", "group_id"),
    ],
)
def test_line_breaks_and_control_characters_are_refused_naming_the_field(api, field, value, reported):
    response = post(api, EMAILS, {**VALID, field: value})

    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_field"
    assert list(body["fields"]) == [reported]
    assert any("line breaks or control characters" in message for message in body["fields"][reported])
    assert not Message.objects.exists()


def test_subject_with_an_unfoldable_run_is_refused(api):
    response = post(api, EMAILS, {**VALID, "subject": "x" * 901})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_field"
    assert response.json()["detail"] == "subject has 901 characters without a space; at most 900 fit on one line of an email header."


def test_header_value_with_a_run_over_900_characters_is_invalid_header(api):
    response = post(api, EMAILS, {**VALID, "headers": {"X-Token": "a" * 991}})

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_header"
    assert response.json()["fields"] == {
        "headers": ["The value of 'X-Token' has 991 characters without a space; at most 900 fit on one line of an email header."]
    }


def test_accepted_long_headers_and_subject_fold_into_lines_of_at_most_998_octets(api):
    long_values = {
        "X-Token": "a" * 900,
        "X-Words": " ".join(["word"] * 399),
        "X-Unicode": "é" * 2000,
        "X-Mixed": ("b" * 900 + " ") * 2,
    }
    subject = " ".join(["s" * 900, "ü" * 97])
    response = post(api, EMAILS, {**VALID, "subject": subject, "headers": long_values, "from_name": "N" * 200})
    assert response.status_code == 202, response.json()

    raw = wire_bytes(response.json()["email_id"])
    assert max(len(line) for line in raw.split(b"\n")) <= 998
    parsed = message_from_bytes(raw, policy=policy.default)
    for name, value in long_values.items():
        assert parsed[name].replace("\n", "").replace(" ", "") == value.replace(" ", ""), name


def test_header_value_over_2000_characters_is_invalid_header(api):
    response = post(api, EMAILS, {**VALID, "headers": {"X-Note": "word " * 401}})
    assert response.status_code == 400
    assert response.json()["fields"] == {"headers": ["The value of 'X-Note' is 2005 characters; at most 2000 are allowed."]}


def test_an_11_mb_custom_header_is_refused(api):
    response = post(api, EMAILS, {**VALID, "headers": {"X-Blob": "word " * (11 * 1024 * 1024 // 5)}})
    assert response.status_code in (400, 413)
    assert response.json()["error"] in ("invalid_header", "payload_too_large")
    assert not Message.objects.exists()


def test_more_than_50_custom_headers_are_refused(api):
    headers = {f"X-Custom-{i}": "v" for i in range(51)}
    response = post(api, EMAILS, {**VALID, "headers": headers})
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_header",
        "detail": "headers: 51 custom headers; at most 50 are allowed.",
        "fields": {"headers": ["51 custom headers; at most 50 are allowed."]},
    }
    assert post(api, EMAILS, {**VALID, "headers": dict(list(headers.items())[:50])}).status_code == 202


def test_header_name_with_a_line_break_is_refused(api):
    response = post(api, EMAILS, {**VALID, "headers": {"X-Name\n": "v"}})
    assert response.json()["error"] == "invalid_header"


def test_custom_headers_count_toward_the_message_size(api, settings):
    settings.MAX_MESSAGE_BYTES = 150_000
    headers = {f"X-Custom-{i}": "é" * 2000 for i in range(50)}  # ~5.5 KB each once RFC 2047-encoded
    response = post(api, EMAILS, {**VALID, "headers": headers})

    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert not Message.objects.exists()


def test_reply_to_is_capped_at_max_reply_to(api):
    addresses = [f"r{i}@example.com" for i in range(11)]
    response = post(api, EMAILS, {**VALID, "reply_to": addresses})

    assert response.status_code == 400
    assert response.json() == {
        "error": "too_many_recipients",
        "detail": "reply_to: 11 addresses in reply_to; at most 10 are allowed.",
        "fields": {"reply_to": ["11 addresses in reply_to; at most 10 are allowed."]},
    }
    assert post(api, EMAILS, {**VALID, "reply_to": addresses[:10]}).status_code == 202


def test_ten_thousand_reply_to_addresses_are_refused(api):
    response = post(api, EMAILS, {**VALID, "reply_to": [f"r{i}@example.com" for i in range(10_001)]})
    assert response.status_code == 400
    assert response.json()["error"] == "too_many_recipients"
    assert list(response.json()["fields"]) == ["reply_to"]


def test_reply_to_cap_follows_the_setting(api, settings):
    settings.MAX_REPLY_TO = 2
    response = post(api, EMAILS, {**VALID, "reply_to": ["a@example.com", "b@example.com", "c@example.com"]})
    assert response.json()["fields"] == {"reply_to": ["3 addresses in reply_to; at most 2 are allowed."]}


def test_metadata_up_to_the_limit_is_accepted(api):
    metadata = {"blob": "x" * 10_000, "nested": {"list": [1, 2, 3], "flag": True}}
    response = post(api, EMAILS, {**VALID, "metadata": metadata})
    assert response.status_code == 202
    assert Message.objects.get(email_id=response.json()["email_id"]).metadata == metadata


@pytest.mark.parametrize(
    ("raw_metadata", "message"),
    [
        ('{"n": 1e999}', "metadata may not contain numbers JSON cannot carry (too large, NaN or Infinity)."),
        ('{"s": "\\ud800"}', "metadata may not contain unpaired surrogate characters."),
        ('{"\\u0000": 1}', "metadata may not contain NUL characters."),
    ],
)
def test_metadata_that_cannot_be_stored_or_sent_is_refused(api, raw_metadata, message):
    body = '{"to": "jane@example.com", "subject": "Hi", "text": "Hi", "metadata": ' + raw_metadata + "}"
    response = api.post(EMAILS, body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["fields"] == {"metadata": [message]}


# --- 5. no silent coercion, and details that say what is wrong -----------------------


@pytest.mark.parametrize(
    ("field", "value", "reported", "message"),
    [
        ("subject", 123, "subject", "subject must be a string, not a number."),
        ("subject", ["Hi"], "subject", "subject must be a string, not an array."),
        ("from_name", 5, "from_name", "from_name must be a string, not a number."),
        ("text", 5, "text", "text must be a string, not a number."),
        ("html", True, "html", "html must be a string, not a boolean."),
        ("group_id", 1, "group_id", "group_id must be a string, not a number."),
        ("email_id", 42, "email_id", "email_id must be a string, not a number."),
        ("tags", [1], "tags[0]", "A tag must be a string, not a number."),
        ("headers", {"X-Count": 3}, "headers.X-Count", "A header value must be a string, not a number."),
        ("attachments", [{"filename": 1, "content": "aGk="}], "attachments[0].filename", "filename must be a string, not a number."),
    ],
)
def test_a_wrong_json_type_is_invalid_field_not_coerced(api, field, value, reported, message):
    response = post(api, EMAILS, {**VALID, field: value})

    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_field",
        "detail": message if message.startswith(reported) else f"{reported}: {message}",
        "fields": {reported: [message]},
    }
    assert not Message.objects.exists()


@pytest.mark.parametrize("value", ["", "   "])
def test_blank_group_id_is_invalid_field_not_missing(api, value):
    response = post(api, EMAILS, {**VALID, "group_id": value})
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_field",
        "detail": "group_id may not be blank.",
        "fields": {"group_id": ["group_id may not be blank."]},
    }


def test_null_group_id_is_no_group(api):
    response = post(api, EMAILS, {**VALID, "group_id": None})
    assert response.status_code == 202
    assert response.json()["group_id"] is None


@pytest.mark.parametrize("value", ["2030-01-01T00:00:00Z\x00", "2030-01-01T00:00:00\x00Z"])
def test_send_at_with_a_nul_is_invalid_send_at(api, value):
    response = post(api, EMAILS, {**VALID, "send_at": value})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_send_at"
    assert response.json()["detail"] == "send_at may not contain control characters."


def test_send_at_too_far_ahead_says_so_with_the_limit(api):
    response = post(api, EMAILS, {**VALID, "send_at": "2999-01-01T00:00:00Z"})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert response.json()["error"] == "invalid_send_at"
    assert "ISO-8601" not in detail
    assert detail.startswith("send_at is ") and detail.endswith("days ahead; it may be at most 30 days ahead (SEND_AT_MAX_DAYS).")


def test_unparsable_send_at_says_it_is_not_iso_8601(api):
    response = post(api, EMAILS, {**VALID, "send_at": "tomorrow"})
    assert response.json()["detail"] == "send_at 'tomorrow' is not an ISO-8601 date-time, e.g. 2026-12-01T09:00:00Z."


def test_detail_describes_the_problem_whose_code_is_answered(api):
    response = post(api, EMAILS, {**VALID, "priority": "urgent", "cc": "not-an-address"})
    body = response.json()
    assert body["error"] == "invalid_address"
    assert body["detail"] == "cc: 'not-an-address' is not a valid email address. (1 more problem: see fields.)"
    assert set(body["fields"]) == {"cc", "priority"}


@pytest.mark.parametrize("value", [{"email": "", "name": "Jane"}, {"name": "Jane"}, {"email": ["jane@example.com"]}, "", "<>", 7])
def test_malformed_address_is_invalid_address(api, value):
    response = post(api, EMAILS, {**VALID, "reply_to": [value]})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_address"
    assert list(response.json()["fields"]) == ["reply_to"]


def test_address_object_with_a_non_string_name_is_invalid_address(api):
    response = post(api, EMAILS, {**VALID, "to": {"email": "jane@example.com", "name": 7}})
    assert response.json()["error"] == "invalid_address"
    assert response.json()["fields"] == {"to": ["A display name must be a string, not a number."]}


def test_unknown_field_with_an_unpaired_surrogate_is_a_clean_400(api):
    body = '{"to": "jane@example.com", "subject": "Hi", "text": "Hi", "\\ud800x": 1}'
    response = api.post(EMAILS, body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["fields"] == {"\ufffdx": ["Unknown field."]}


def test_address_with_an_unpaired_surrogate_is_invalid_address(api):
    body = '{"to": "Jane \\ud800 <jane@example.com>", "subject": "Hi", "text": "Hi"}'
    response = api.post(EMAILS, body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_address"


# --- 6. the OpenAPI schema states the limits -----------------------------------------


def test_schema_states_the_real_constraints(client, db):
    spec = client.get("/api/schema/?format=json").json()
    schemas = spec["components"]["schemas"]
    send = schemas["SendEmailInput"]["properties"]

    assert send["email_id"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,199}$"
    assert send["email_id"]["maxLength"] == 200
    assert send["subject"]["maxLength"] == 998
    no_line_breaks = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]*$"
    assert send["subject"]["pattern"] == no_line_breaks
    assert send["from_name"]["oneOf"][0]["pattern"] == no_line_breaks  # or blank
    assert (send["group_id"]["pattern"], send["group_id"]["minLength"]) == (no_line_breaks, 1)
    assert send["tags"]["items"]["pattern"] == no_line_breaks
    assert send["to"]["oneOf"][1]["maxItems"] == 50
    assert send["reply_to"]["oneOf"][1]["maxItems"] == 10
    assert send["to"]["oneOf"][0]["oneOf"][1]["required"] == ["email"]
    assert schemas["AttachmentInput"]["additionalProperties"] is False
    assert send["tags"]["maxItems"] == 50
    assert send["tags"]["items"]["maxLength"] == 128
    assert schemas["PriorityEnum"]["enum"] == ["high", "normal", "low"]
    batch = schemas["BatchInput"]["properties"]["emails"]
    assert (batch["minItems"], batch["maxItems"]) == (1, 500)
    assert batch["items"] == {"$ref": "#/components/schemas/SendEmailInput"}
    assert "at most 2000 characters" in send["headers"]["description"]
    assert schemas["ErrorBody"]["required"] == ["detail", "error"]
    send_responses = spec["paths"]["/api/v1/emails"]["post"]["responses"]
    assert set(send_responses) >= {"202", "400", "401", "403", "409", "413"}


def test_batch_items_with_wrong_types_or_line_breaks_fail_alone(api):
    emails = [
        {**VALID, "subject": 123},
        {**VALID, "subject": "Hi\r\nBcc: victim@example.com"},
        {**VALID, "tags": [1]},
        {**VALID, "group_id": ""},
        VALID,
    ]
    body = post(api, BATCH, {"emails": emails}).json()

    assert [(e["index"], e["error"], list(e["fields"])) for e in body["errors"]] == [
        (0, "invalid_field", ["subject"]),
        (1, "invalid_field", ["subject"]),
        (2, "invalid_field", ["tags[0]"]),
        (3, "invalid_field", ["group_id"]),
    ]
    assert body["errors"][0]["detail"] == "subject must be a string, not a number."
    assert [d["index"] for d in body["data"]] == [4]
