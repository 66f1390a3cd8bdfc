"""Sending with a stored template: POST /emails and /emails/batch render it at the
door, record the version used, and what reaches the SMTP server / moto's SES is
the rendered email."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from emailsvc.models import Message
from templates_app.services import template_create, template_update
from tests.conftest import deliver_now, wait_for_status

WELCOME = {
    "subject": "Welcome {{ first_name }}",
    "html": "<style>h1 { color: red }</style><h1>Hi {{ first_name }}</h1><p>{{ note }}</p>",
    "text": "Hi {{ first_name }}, {{ note }}",
    "from_email": "team@example.com",
    "from_name": "{{ product }} team",
    "reply_to": "help@example.com",
}
DATA = {"first_name": "Jane", "product": "Acme", "note": "<script>alert(1)</script>"}


def post(api, path, body):
    return api.post(path, json.dumps(body), content_type="application/json")


@pytest.fixture
def welcome(db):
    return template_create(name="welcome", data=dict(WELCOME), created_by="tests")


@pytest.fixture
def smtp(settings, smtp_server):
    settings.EMAIL_PROVIDER = "smtp"
    settings.EMAIL_HOST, settings.EMAIL_PORT = smtp_server.host, smtp_server.port
    settings.SEND_RATE_PER_SECOND = 0
    return smtp_server


def test_a_template_is_rendered_escaped_and_inlined_and_reaches_the_smtp_server(api, welcome, smtp):
    response = post(api, "/api/v1/emails", {"to": "jane@example.org", "template": "welcome", "template_data": DATA})
    assert response.status_code == 202, response.json()
    email_id = response.json()["email_id"]

    deliver_now()

    (mail,) = smtp.wait_for(email_id)
    received = mail.message
    assert received["Subject"] == "Welcome Jane"
    assert received["From"] == "Acme team <team@example.com>"
    assert received["Reply-To"] == "help@example.com"
    html = received.get_body(("html",)).get_content()
    text = received.get_body(("plain",)).get_content()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html  # autoescaped in html
    assert "<script>alert(1)</script>" in text  # intact in text
    assert '<h1 style="color: red;">Hi Jane</h1>' in html  # CSS inlined
    detail = api.get(f"/api/v1/emails/{email_id}").json()
    assert (detail["template"], detail["template_version"], detail["template_data"]) == ("welcome", 1, DATA)
    assert detail["status"] == "sent"


def test_a_pinned_version_is_sent_as_it_was(api, welcome):
    template_update(name="welcome", data={"subject": "Version two for {{ first_name }}"}, created_by="tests")

    latest = post(api, "/api/v1/emails", {"to": "a@example.org", "template": "welcome", "template_data": DATA})
    pinned = post(api, "/api/v1/emails", {"to": "b@example.org", "template": "welcome@1", "template_data": DATA})

    assert latest.status_code == pinned.status_code == 202
    first = Message.objects.get(email_id=pinned.json()["email_id"])
    second = Message.objects.get(email_id=latest.json()["email_id"])
    assert (first.subject, first.template_version) == ("Welcome Jane", 1)
    assert (second.subject, second.template_version) == ("Version two for Jane", 2)


def test_fields_given_in_the_request_win_over_the_template(api, welcome):
    response = post(api, "/api/v1/emails", {
        "to": "jane@example.org", "template": "welcome", "template_data": DATA,
        "subject": "Our own subject", "from": "Billing <billing@example.com>", "reply_to": "desk@example.com",
        "text": "Our own text",
    })
    assert response.status_code == 202, response.json()
    message = Message.objects.get(email_id=response.json()["email_id"])
    assert (message.subject, message.from_email, message.from_name) == ("Our own subject", "billing@example.com", "Billing")
    assert message.reply_to == ["desk@example.com"]
    assert message.text == "Our own text" and "Hi Jane" in message.html  # html still the template's


@pytest.mark.parametrize(
    ("template", "detail"),
    [
        ("nope", "There is no template 'nope'."),
        ("welcome@7", "Template 'welcome' has no version 7."),
        ("Bad Name!", "does not name a template"),
    ],
)
def test_an_unknown_template_is_template_not_found(api, welcome, template, detail):
    response = post(api, "/api/v1/emails", {"to": "jane@example.org", "template": template})
    assert response.status_code == 400
    assert response.json()["error"] == "template_not_found"
    assert detail in response.json()["detail"]


def test_a_missing_variable_is_template_render_error_naming_it(api, welcome):
    response = post(api, "/api/v1/emails", {"to": "jane@example.org", "template": "welcome", "template_data": {"first_name": "J"}})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "template_render_error"
    assert "note" in body["detail"] and "product" in body["detail"]
    assert not Message.objects.exists()


def test_template_data_without_a_template_and_no_subject_without_one_are_refused(api):
    response = post(api, "/api/v1/emails", {"to": "j@example.org", "subject": "s", "text": "t", "template_data": {}})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_field")
    response = post(api, "/api/v1/emails", {"to": "j@example.org", "text": "t"})
    assert (response.status_code, response.json()["error"]) == (400, "missing_fields")
    assert response.json()["fields"] == {"subject": ["This field is required."]}


def test_a_batch_with_one_template_resolves_it_once(api, welcome):
    def batch(count: int):
        items = [{"to": f"r{i}@example.org", "template": "welcome", "template_data": {**DATA, "first_name": f"R{i}"}} for i in range(count)]
        items.append({"to": "x@example.org", "template": "missing"})
        items.append({"to": "y@example.org", "template": "missing"})
        with CaptureQueriesContext(connection) as queries:
            response = post(api, "/api/v1/emails/batch", {"emails": items})
        assert response.status_code == 200
        return response.json(), [q["sql"][:90] for q in queries.captured_queries]

    batch(1)  # the key's first use records last_used_at
    small, small_queries = batch(5)
    large, large_queries = batch(200)
    assert len(large["data"]) == 200 and [e["error"] for e in large["errors"]] == ["template_not_found"] * 2
    # The template (and the missing one) are looked up once per batch, whatever its size.
    template_lookups = [q for q in large_queries if "templates_app_" in q]
    assert len(template_lookups) == len([q for q in small_queries if "templates_app_" in q]) == 2, template_lookups
    if connection.vendor == "postgresql":  # SQLite splits large INSERTs to stay under its variable limit
        assert len(large_queries) == len(small_queries), large_queries
    subjects = set(Message.objects.filter(template_name="welcome").values_list("subject", flat=True))
    assert {"Welcome R0", "Welcome R199"} <= subjects


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_template_send_through_ses_reaches_moto(api, settings, celery_worker, moto_server):
    settings.EMAIL_PROVIDER = "ses"  # the message records its provider; the worker sends through it
    template_create(name="receipt", data={"subject": "Receipt {{ n }}", "mjml": (
        "<mjml><mj-body><mj-section><mj-column><mj-text>Order {{ n }}</mj-text></mj-column></mj-section></mj-body></mjml>"
    )}, created_by="tests")
    response = post(api, "/api/v1/emails", {"to": "jane@example.com", "template": "receipt", "template_data": {"n": 42}})
    assert response.status_code == 202, response.json()
    message = wait_for_status(response.json()["email_id"])
    assert message.status == "sent", celery_worker.log()[-3000:]
    (sent,) = [m for m in moto_server.sent_raw_messages() if m["id"] == message.provider_message_id]
    assert "Subject: Receipt 42" in sent["raw_data"]
    assert "Order 42" in sent["raw_data"]


# --- header texts rendered from template data: the rules of the same fields given directly ----

HEADERS = {"subject": "{{ s }}", "text": "Hi", "from_email": "team@example.com", "from_name": "{{ n }}",
           "reply_to": "{{ r }} <help@example.com>"}
FINE = {"s": "Subject", "n": "Team", "r": "Help desk"}


@pytest.fixture
def headers_template(db):
    return template_create(name="headers", data=dict(HEADERS), created_by="tests")


def send_headers(api, **data):
    body = {"to": "jane@example.org", "template": "headers", "template_data": {**FINE, **data}}
    return post(api, "/api/v1/emails", body)


@pytest.mark.parametrize("value", ["Ding\x07", "a\x1fb", "a\x85b", "a\u2028b", "x\x00y", "lone \ud800 surrogate",
                                   "Invoice \u202efdp.exe", "a\u2066b\u2069", "\u200fname"])
@pytest.mark.parametrize("field", ["s", "n", "r"])
def test_control_bidi_and_surrogate_characters_rendered_into_a_header_are_refused(api, headers_template, field, value):
    """Control characters, bidi controls and lone surrogates from template data (today's 500 for a surrogate)."""
    response = send_headers(api, **{field: value})
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "template_render_error", body
    # A reply-to address with a control character is no address at all: named as the template's.
    assert {"s": {"subject"}, "n": {"from_name"}, "r": {"reply_to", "template"}}[field] & set(body["fields"])
    assert not Message.objects.exists()


def test_a_rendered_subject_is_held_to_998_characters(api, headers_template):
    assert send_headers(api, s="word " * 199).status_code == 202  # 994 characters once trimmed
    response = send_headers(api, s="word " * 200 + "more")
    assert (response.status_code, response.json()["error"]) == (400, "template_render_error")
    assert "at most 998" in response.json()["detail"]


def test_a_whitespace_only_rendered_subject_is_missing(api, headers_template):
    response = send_headers(api, s="  \n  ")
    assert (response.status_code, response.json()["error"]) == (400, "missing_fields")


def test_rendered_header_texts_that_look_like_encoded_words_reach_the_reader_as_written(api, headers_template, smtp):
    response = send_headers(api, s="=?utf-8?q?Fake?= subject", n="=?utf-8?b?QWRtaW4=?=")
    assert response.status_code == 202, response.json()
    deliver_now()
    (mail,) = smtp.wait_for(response.json()["email_id"])
    assert mail.message["Subject"] == "=?utf-8?q?Fake?= subject"
    assert mail.message["From"].addresses[0].display_name == "=?utf-8?b?QWRtaW4=?="
