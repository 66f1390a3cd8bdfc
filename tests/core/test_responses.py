"""Under /api/ and /webhooks/ every answer is the JSON error body, never an HTML
page and never a 500 for bad input (issue 12, SPEC §4): control characters in a
path or query, JSON nested ~1,000 deep, unknown URLs, wrong methods, and crashes
(which are still logged with their traceback). The admin keeps its HTML pages."""

import logging

import pytest
from rest_framework.test import APIClient

from emailsvc.api import emails as apis

pytestmark = pytest.mark.django_db

VALID = '{"to": "jane@example.com", "subject": "Hello", "text": "Hi"}'


def assert_error_body(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def nested(depth: int, inner: str = "1") -> str:
    return '{"a":' * depth + inner + "}" * depth


# --- control characters in paths and queries -----------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/emails/abc%00def"),
        ("post", "/api/v1/emails/abc%00def/cancel"),
        ("get", "/api/v1/groups/abc%00/emails"),
        ("get", "/api/v1/groups/abc%00/analytics"),
        ("get", "/api/v1/emails/abc%0Adef"),
    ],
)
def test_control_character_in_a_path_id_is_404_json(api, method, path):
    response = getattr(api, method)(path)
    body = assert_error_body(response, 404, "not_found")
    assert "control characters" in body["detail"]


def test_nul_in_a_query_parameter_is_400_naming_it(api):
    response = api.get("/api/v1/groups/launch/emails?cursor=%00")
    body = assert_error_body(response, 400, "invalid_field")
    assert body["fields"] == {"cursor": ["A query parameter may not contain control characters."]}


def test_too_many_query_parameters_is_400_json(api, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    response = api.get("/api/v1/groups/launch/emails?" + "&".join(f"p{i}=1" for i in range(20)))
    assert_error_body(response, 400, "bad_request")


# --- deeply nested JSON ------------------------------------------------------------


@pytest.mark.parametrize("url", ["/api/v1/emails", "/api/v1/emails/batch"])
@pytest.mark.parametrize("body", [nested(1000), "[" * 1000 + "]" * 1000, nested(100), "[" * 100000])
def test_deeply_nested_json_is_400_invalid_json(api, url, body):
    response = api.post(url, body, content_type="application/json")
    body = assert_error_body(response, 400, "invalid_json")
    assert body["detail"].startswith("The body is not valid JSON")


def test_json_nested_64_deep_is_still_read(api):
    metadata = nested(62, "{}")  # the body's object, metadata, 62 levels, and {} inside: 64
    response = api.post("/api/v1/emails", VALID[:-1] + ', "metadata": ' + metadata + "}", content_type="application/json")
    assert response.status_code == 202, response.json()


def test_nested_metadata_past_the_limit_is_invalid_json(api):
    response = api.post("/api/v1/emails", VALID[:-1] + ', "metadata": ' + nested(64) + "}", content_type="application/json")
    body = assert_error_body(response, 400, "invalid_json")
    assert body["detail"] == "The body is not valid JSON: it is nested more than 64 levels deep."


@pytest.mark.parametrize("body", [nested(1000), "[" * 1000 + "]" * 1000, nested(100)])
def test_deeply_nested_json_on_the_sns_webhook_is_400_invalid_json(client, body):
    response = client.post("/webhooks/ses/", body, content_type="text/plain")
    body = assert_error_body(response, 400, "invalid_json")
    assert body["detail"] == "The body is not valid JSON: it is nested more than 64 levels deep."


# --- unknown URLs, wrong methods, crashes ---------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v2/emails", "/api/", "/webhooks/nope", "/api/v1/emails/x/y/z"])
def test_unknown_url_under_the_api_is_404_json(api, path):
    body = assert_error_body(api.get(path), 404, "not_found")
    assert body == {"error": "not_found", "detail": "There is nothing at this URL."}


def test_wrong_method_is_405_json_with_allow(api):
    response = api.delete("/api/v1/emails")
    assert_error_body(response, 405, "method_not_allowed")
    assert "POST" in response["Allow"]


def test_wrong_method_on_the_webhook_is_405_json(client):
    response = client.get("/webhooks/ses/")
    assert_error_body(response, 405, "method_not_allowed")
    assert response["Allow"] == "POST"


@pytest.mark.parametrize("debug", [False, True])
def test_unhandled_exception_is_500_json_and_logged_with_traceback(make_client, monkeypatch, settings, caplog, debug):
    settings.DEBUG = debug

    def broken_selector(*, email_id):
        raise RuntimeError("selector exploded")

    monkeypatch.setattr(apis, "message_get", broken_selector)
    client = make_client()
    client.raise_request_exception = False
    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = client.get("/api/v1/emails/some-id")

    body = assert_error_body(response, 500, "server_error")
    assert body == {"error": "server_error", "detail": "The server failed to answer this request; the error has been logged."}
    logged = [record for record in caplog.records if record.name == "django.request" and record.exc_info]
    assert logged and "selector exploded" in str(logged[0].exc_info[1])


def test_pages_outside_the_api_keep_html(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_admin_keeps_html(client):
    response = client.get("/admin/login/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")


def test_json_errors_from_drf_pass_through_unchanged(db):
    response = APIClient().post("/api/v1/emails", VALID, content_type="application/json")
    assert response.json() == {"error": "unauthorized", "detail": "A valid API key is required."}
    assert response["WWW-Authenticate"].startswith("Bearer")
