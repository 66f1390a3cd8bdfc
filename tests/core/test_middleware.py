"""Requests whose Content-Type names a charset that is not a text encoding (a
bytes-to-bytes codec, a text-to-text one, or no codec at all): a 400 on every
URL of the real web process, never a 500.

Django's test client builds its own request (not the service's), so these
requests go to a gunicorn web process (tests/stack.py) and, for ASGI, to the
ASGI application itself."""

import http.client
import json

import pytest
from asgiref.testing import ApplicationCommunicator
from django.db import connections

from emailsvc.keys import api_key_create
from emailsvc.models import ApiKey, Message
from tests.stack import Stack

CHARSETS = ["rot13", "zlib", "base64", "hex", "uu", "bz2", "quopri", "undefined", "no-such-charset", "idna"]
API_REQUESTS = [
    ("GET", "/api/v1/emails?status=sent", None),
    ("GET", "/api/v1/suppressions?x=1", None),
    ("POST", "/api/v1/emails?x=1", {"to": "jane@example.com", "subject": "s", "text": "t"}),
    ("POST", "/api/v1/emails", {"to": "jane@example.com", "subject": "s", "text": "t"}),
    ("POST", "/webhooks/ses/?x=1", {}),
    ("POST", "/webhooks/ses?x=1", {}),
    ("GET", "/api/v1/nothing?x=1", None),
]
PAGES = ["/admin/?q=1", "/admin/emailsvc/message/?q=jane", "/admin/login/?next=/admin/", "/healthz?x=1",
         "/readyz?x=1", "/metrics?x=1", "/u/nothing?x=1"]


@pytest.fixture(scope="module")
def web(django_db_setup, django_db_blocker, tmp_path_factory):
    stack = Stack(
        directory=tmp_path_factory.mktemp("charset-stack"), db_name=str(connections["default"].settings_dict["NAME"]),
        env={"EMAIL_PROVIDER": "console", "DEBUG": "false"}, name="charset",
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def _send(web: Stack, method: str, path: str, body: bytes | None, content_type: str, key: str | None = None):
    connection = http.client.HTTPConnection(web.web_url.removeprefix("http://"), timeout=30)
    headers = {"Content-Type": content_type}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("charset", CHARSETS)
def test_the_api_and_the_ses_webhook_answer_400_invalid_charset(web, charset):
    for method, path, body in API_REQUESTS:
        data = None if body is None else json.dumps(body).encode()
        status, content_type, raw = _send(web, method, path, data, f"application/json; charset={charset}")

        assert status == 400, (path, raw)
        answer = json.loads(raw)
        assert answer["error"] == "invalid_charset" and "not a text encoding" in answer["detail"], (path, answer)


@pytest.mark.parametrize("charset", ["rot13", "zlib", "hex", "no-such-charset"])
def test_pages_answer_an_ordinary_400(web, charset):
    for path in PAGES:
        status, _, raw = _send(web, "GET", path, None, f"text/plain; charset={charset}")

        assert status == 400, (path, raw)
    form = f"application/x-www-form-urlencoded; charset={charset}"
    status, _, _ = _send(web, "POST", "/admin/login/?next=/admin/", b"username=root&password=x", form)
    assert status == 400


def test_a_text_charset_is_read_as_named(web, transactional_db):
    _, key = api_key_create(name="charset", permission=ApiKey.Permission.SENDING)
    body = json.dumps({"to": "jane@example.com", "subject": "Grüße", "text": "t"}).encode("utf-16")

    status, _, raw = _send(web, "POST", "/api/v1/emails?", body, "application/json; charset=utf-16", key)

    assert status == 202, raw
    assert Message.objects.get().subject == "Grüße"


async def _asgi_get(path: str, query: bytes, content_type: bytes) -> int:
    from config.asgi import application

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", content_type)],
        "client": ("127.0.0.1", 1234), "server": ("testserver", 80),
    }
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(timeout=10)
    await communicator.receive_output(timeout=10)
    return start["status"]


@pytest.mark.parametrize("charset", [b"rot13", b"zlib"])
def test_the_asgi_application_answers_400_too(db, charset):
    import asyncio

    status = asyncio.run(_asgi_get("/api/v1/emails", b"x=1", b"application/json; charset=" + charset))

    assert status == 400
