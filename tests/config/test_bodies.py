"""Request bodies sent with `Transfer-Encoding: chunked` (config/bodies.py), to the
web process as the Procfile runs it: read to their end and accepted as any other
body, bounded by the same size limit (413 payload_too_large), and a malformed
one refused with 400 invalid_chunked_body."""

import http.client
import json

import pytest

from emailsvc.keys import api_key_create
from emailsvc.models import Message
from tests.config.conftest import MAX_MESSAGE_BYTES, address, open_request, read_answer

pytestmark = pytest.mark.django_db(transaction=True)


def _chunked_post(web, path: str, pieces, *, key: str, content_type: str = "application/json"):
    """(status, decoded JSON) of a POST whose body goes out in `pieces`, each its own chunk."""
    host, port = address(web)
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request(
            "POST", path, body=iter(pieces), encode_chunked=True,
            headers={"Content-Type": content_type, "Authorization": f"Bearer {key}", "Transfer-Encoding": "chunked"},
        )
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        connection.close()


def test_a_chunked_email_is_accepted_and_stored_intact(web):
    _, key = api_key_create(name="chunked", permission="full")
    text = "Zoë's order: " + "0123456789" * 3000
    body = json.dumps({"email_id": "chunked-1", "to": "jane@example.com", "subject": "Chunked", "text": text}).encode()
    pieces = [body[i:i + 1000] for i in range(0, len(body), 1000)]

    status, answer = _chunked_post(web, "/api/v1/emails", pieces, key=key)

    assert status == 202, answer
    message = Message.objects.get(email_id="chunked-1")
    assert (message.subject, message.text) == ("Chunked", text)


def test_a_chunked_suppression_csv_is_imported(web):
    _, key = api_key_create(name="chunked", permission="full")
    pieces = [b"email,reason\n", b"jane@example.com,manual\n", b"kim@example.org,manual\n"]

    status, answer = _chunked_post(web, "/api/v1/suppressions/import", pieces, key=key, content_type="text/csv")

    assert status in (200, 201), answer
    status, found = web.get("/api/v1/suppressions/kim@example.org", key)
    assert status == 200, found


def test_a_chunked_body_over_the_limit_is_refused_with_413(web):
    _, key = api_key_create(name="chunked", permission="full")
    limit = int(MAX_MESSAGE_BYTES * 1.5)
    body = json.dumps({"to": "jane@example.com", "subject": "Big", "text": "x" * limit}).encode()

    pieces = [body[i:i + 8192] for i in range(0, len(body), 8192)]

    status, answer = _chunked_post(web, "/api/v1/emails", pieces, key=key)

    assert status == 413, answer
    assert answer["error"] == "payload_too_large"
    assert not Message.objects.exists()


def test_a_malformed_chunked_body_is_refused_with_400(web):
    sock = open_request(
        web,
        "POST /api/v1/emails HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked",
        b"zz\r\n{}\r\n0\r\n\r\n",  # a chunk size that is not hexadecimal
    )
    answer = read_answer(sock)
    assert answer.status == 400, answer
    assert answer.body["error"] == "invalid_chunked_body"
