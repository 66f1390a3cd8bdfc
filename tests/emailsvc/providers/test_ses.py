"""What moto's SES records for an accepted email sent by a real worker: headers
folded within 998 octets, and, parsed with the email package, the subject,
names, filenames and attachment bytes exactly as given (a text attachment that
is not UTF-8 included: anymail's own attachment handling would refuse it)."""

import base64
import json
from email import message_from_string, policy

import pytest

from tests.conftest import wait_for_status

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_headers_and_attachments_reach_ses_as_given(api, settings, celery_worker, moto_server):
    settings.EMAIL_PROVIDER = "ses"
    settings.ALLOWED_FROM_DOMAINS = ["example.com"]
    filename = "Рахунок-фактура для бібліотеки — березень " * 5 + "(копія).pdf"
    latin1 = "Grüße aus Köln\r\nZeile 2\n".encode("latin-1")
    body = {
        "to": {"email": "jane@example.com", "name": "=?utf-8?q?Jane?="}, "subject": "  =?utf-8?q?literal?= subject",
        "text": "Hi", "attachments": [
            {"filename": filename, "content": base64.b64encode(b"%PDF").decode()},
            {"filename": "latin1.txt", "content": base64.b64encode(latin1).decode(), "content_type": "text/plain"},
            {"filename": "empty.txt", "content": ""},
        ],
    }
    response = api.post("/api/v1/emails", json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.json()
    message = wait_for_status(response.json()["email_id"])
    assert message.status == "sent", celery_worker.log()[-3000:]

    (sent,) = [m for m in moto_server.sent_raw_messages() if m["id"] == message.provider_message_id]
    raw = sent["raw_data"]
    assert max(len(line.encode()) for line in raw.splitlines()) <= 998
    parsed = message_from_string(raw, policy=policy.default)
    assert parsed["Subject"] == "  =?utf-8?q?literal?= subject"
    assert parsed["To"].addresses[0].display_name == "=?utf-8?q?Jane?="
    parts = [(p.get_filename(), p.get_content_type(), p.get_payload(decode=True)) for p in parsed.iter_attachments()]
    assert parts == [(filename, "application/pdf", b"%PDF"), ("latin1.txt", "text/plain", latin1),
                     ("empty.txt", "text/plain", b"")]
