"""The templates REST API (/api/v1/templates…) through DRF's client: shapes,
permissions and error codes."""

import json

import pytest
from rest_framework.test import APIClient

from emailsvc.models import ApiKey, Message
from templates_app.rendering.sandbox import CALLABLE

WELCOME = {
    "name": "welcome",
    "subject": "Welcome {{ first_name }}",
    "html": "<h1>Hi {{ first_name }}</h1>",
    "text": "Hi {{ first_name }}",
    "from": "team@example.com",
    "from_name": "{{ product }} team",
    "sample_data": {"first_name": "Jane", "product": "Acme"},
}


def create(client, **overrides):
    response = client.post("/api/v1/templates", {**WELCOME, **overrides}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def test_full_key_creates_reads_updates_and_lists_templates(full_api):
    created = create(full_api)
    assert created["name"] == "welcome" and created["version"] == 1
    assert created["from"] == "team@example.com" and created["variables"] == ["first_name", "product"]
    assert created["created_by"].startswith("api-key:test full")

    updated = full_api.put("/api/v1/templates/welcome", {"subject": "Hello {{ first_name }}"}, format="json")
    assert updated.status_code == 200
    assert updated.json()["version"] == 2 and updated.json()["html"] == WELCOME["html"]

    current = full_api.get("/api/v1/templates/welcome").json()
    assert (current["version"], current["subject"]) == (2, "Hello {{ first_name }}")

    create(full_api, name="invite")
    page = full_api.get("/api/v1/templates?limit=1").json()
    assert [t["name"] for t in page["results"]] == ["invite"] and page["results"][0]["version"] == 1
    following = APIClient()
    following.credentials(HTTP_AUTHORIZATION=f"Bearer {full_api.raw_key}")
    assert [t["name"] for t in following.get(page["next"]).json()["results"]] == ["welcome"]


def test_versions_history_and_a_single_version(full_api):
    create(full_api)
    full_api.put("/api/v1/templates/welcome", {"subject": "v2"}, format="json")
    history = full_api.get("/api/v1/templates/welcome/versions").json()["results"]
    assert [(v["version"], v["subject"]) for v in history] == [(2, "v2"), (1, WELCOME["subject"])]
    first = full_api.get("/api/v1/templates/welcome/versions/1").json()
    assert (first["version"], first["subject"]) == (1, WELCOME["subject"])
    missing = full_api.get("/api/v1/templates/welcome/versions/9")
    assert missing.status_code == 404 and missing.json()["error"] == "template_not_found"


def test_render_defaults_to_the_sample_data_and_takes_data_and_a_version(full_api, read_api):
    create(full_api)
    full_api.put("/api/v1/templates/welcome", {"subject": "v2 {{ first_name }}"}, format="json")
    sample = read_api.post("/api/v1/templates/welcome/render", {}, format="json").json()
    assert sample["subject"] == "v2 Jane" and sample["version"] == 2
    assert sample["html"] == "<h1>Hi Jane</h1>" and sample["text"] == "Hi Jane"
    assert (sample["from"], sample["from_name"]) == ("team@example.com", "Acme team")
    given = read_api.post(
        "/api/v1/templates/welcome/render",
        {"data": {"first_name": "<b>Jo</b>", "product": "X"}, "version": 1},
        format="json",
    ).json()
    assert given["subject"] == "Welcome <b>Jo</b>" and given["html"] == "<h1>Hi &lt;b&gt;Jo&lt;/b&gt;</h1>"


@pytest.mark.parametrize("part", ["first_name", "product"])
def test_render_with_an_unpaired_surrogate_in_the_data_is_400_not_500(full_api, part):
    create(full_api)
    data = {"first_name": "Jane", "product": "Acme", part: "a\ud800b"}
    body = json.dumps({"data": data})  # \ud800 escaped, as a client writes it
    response = full_api.post("/api/v1/templates/welcome/render", body, content_type="application/json")
    assert (response.status_code, response.json()["error"]) == (400, "template_render_error")
    assert "surrogate" in response.json()["detail"]


def test_render_with_a_missing_variable_is_400_naming_it(full_api):
    create(full_api)
    response = full_api.post("/api/v1/templates/welcome/render", {"data": {"product": "X"}}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "template_render_error"
    assert body["fields"] == {
        "subject": ["Missing variable 'first_name'."],
        "html": ["Missing variable 'first_name'."],
        "text": ["Missing variable 'first_name'."],
    }


def test_creating_an_existing_name_is_409_template_exists(full_api):
    create(full_api)
    response = full_api.post("/api/v1/templates", WELCOME, format="json")
    assert response.status_code == 409 and response.json()["error"] == "template_exists"


@pytest.mark.parametrize(
    "overrides, field, line",
    [
        ({"html": "<p>\n{{ first_name }</p>"}, "html", 2),
        ({"subject": "{% if %}"}, "subject", 1),
        ({"html": "", "mjml": "<mjml>\n<mj-body>\n<mj-text>x</mj-body>\n</mjml>"}, "mjml", 3),
        ({"layout": "missing-layout"}, "layout", None),
        ({"subject": "Hi {{ first_name.upper() }}"}, "subject", 1),  # a call the sandbox refuses at render
        ({"text": "Hi\n{% for i in items %}{{ i.strip() }}{% endfor %}"}, "text", 2),
    ],
)
def test_an_invalid_template_is_400_template_invalid_naming_part_and_line(full_api, overrides, field, line):
    response = full_api.post("/api/v1/templates", {**WELCOME, **overrides}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "template_invalid" and list(body["fields"]) == [field]
    if line:
        assert body["fields"][field][0].startswith(f"line {line}:")


@pytest.mark.parametrize(
    "body, code",
    [
        ({**WELCOME, "name": "Bad Name"}, "invalid_field"),
        ({**WELCOME, "name": "a@2"}, "invalid_field"),
        ({**WELCOME, "colour": "red"}, "invalid_field"),
        ({k: v for k, v in WELCOME.items() if k != "subject"}, "missing_fields"),
        ({**WELCOME, "sample_data": [1]}, "invalid_field"),
        ({**WELCOME, "layout": "a@b"}, "invalid_field"),
    ],
)
def test_bad_input_is_refused_with_a_stable_code(full_api, body, code):
    response = full_api.post("/api/v1/templates", body, format="json")
    assert response.status_code == 400 and response.json()["error"] == code, response.json()


@pytest.mark.parametrize("permission", [ApiKey.Permission.READ_ONLY, ApiKey.Permission.SENDING])
def test_keys_below_full_may_read_and_render_but_not_write(full_api, make_client, permission):
    create(full_api)
    client = make_client(permission)
    assert client.get("/api/v1/templates").status_code == 200
    assert client.get("/api/v1/templates/welcome").status_code == 200
    assert client.get("/api/v1/templates/welcome/versions").status_code == 200
    assert client.get("/api/v1/templates/welcome/versions/1").status_code == 200
    assert client.post("/api/v1/templates/welcome/render", {}, format="json").status_code == 200
    for response in (
        client.post("/api/v1/templates", {**WELCOME, "name": "other"}, format="json"),
        client.put("/api/v1/templates/welcome", {"subject": "x"}, format="json"),
        client.delete("/api/v1/templates/welcome"),
    ):
        assert response.status_code == 403 and response.json()["error"] == "forbidden"
    assert full_api.get("/api/v1/templates/welcome").json()["version"] == 1


def test_without_a_key_every_call_is_401(full_api):
    create(full_api)
    anonymous = APIClient()
    for response in (
        anonymous.get("/api/v1/templates"),
        anonymous.get("/api/v1/templates/welcome"),
        anonymous.post("/api/v1/templates/welcome/render", {}, format="json"),
        anonymous.delete("/api/v1/templates/welcome"),
    ):
        assert response.status_code == 401 and response.json()["error"] == "unauthorized"


def test_an_unknown_template_is_404_template_not_found(full_api):
    for response in (
        full_api.get("/api/v1/templates/nope"),
        full_api.put("/api/v1/templates/nope", {"subject": "x"}, format="json"),
        full_api.delete("/api/v1/templates/nope"),
        full_api.get("/api/v1/templates/nope/versions"),
        full_api.post("/api/v1/templates/nope/render", {}, format="json"),
    ):
        assert response.status_code == 404 and response.json()["error"] == "template_not_found"


def test_delete_is_409_while_a_queued_message_uses_the_template_and_204_after(full_api):
    from tests.conftest import deliver_now

    create(full_api)
    sent = full_api.post(
        "/api/v1/emails", {"to": "jane@example.org", "template": "welcome", "template_data": {"first_name": "Jane", "product": "Acme"}},
        format="json",
    )
    assert sent.status_code == 202, sent.json()
    refused = full_api.delete("/api/v1/templates/welcome")
    assert refused.status_code == 409 and refused.json()["error"] == "template_in_use"
    assert full_api.get("/api/v1/templates/welcome").status_code == 200

    assert deliver_now() == 1  # once it is sent, the template may go
    assert Message.objects.get(email_id=sent.json()["email_id"]).status == "sent"
    assert full_api.delete("/api/v1/templates/welcome").status_code == 204
    assert full_api.get("/api/v1/templates/welcome").status_code == 404


def test_the_schema_documents_the_template_endpoints(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    for path in ("/api/v1/templates", "/api/v1/templates/{name}", "/api/v1/templates/{name}/versions",
                 "/api/v1/templates/{name}/versions/{version}", "/api/v1/templates/{name}/render"):
        assert path in schema["paths"]


def test_a_call_the_sandbox_refuses_is_refused_at_save_with_its_message_and_saves_nothing(full_api):
    create(full_api)

    created = full_api.post(
        "/api/v1/templates", {**WELCOME, "name": "calls", "html": "<p>{{ name.upper() }}</p>"}, format="json"
    )
    updated = full_api.put("/api/v1/templates/welcome", {"text": "{{ first_name.title() }}"}, format="json")

    for response, field, callee in ((created, "html", "name.upper"), (updated, "text", "first_name.title")):
        assert response.status_code == 400
        assert response.json()["error"] == "template_invalid"
        assert response.json()["fields"][field] == [f"line 1: '{callee}' cannot be called: {CALLABLE}"]
    assert full_api.get("/api/v1/templates/calls").status_code == 404
    assert full_api.get("/api/v1/templates/welcome").json()["version"] == 1
