"""SMTP submission (SPEC §4 "SMTP submission"): the `smtp` process, a real
Celery worker and a real SMTP sink; smtplib as the client. What a user sees:
the SMTP replies, what the sink received, and the facts the API shows."""

import base64
import smtplib
import socket
import ssl
import time
import uuid
from datetime import timedelta
from email.message import EmailMessage

import pytest
from django.test import Client
from django.utils import timezone

from core.redisclient import redis_client
from emailsvc.keys import api_key_create, api_key_revoke
from emailsvc.smtp_ingress.session import AUTH_FAILURES_KEY
from emailsvc.models import ApiKey
from emailsvc.suppressions.services import suppression_add
from tests.conftest import PENDING, poll, wait_for_status, wait_until
from tests.emailsvc.smtp_ingress.conftest import MAX_MESSAGE_BYTES, non_loopback_address

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"


def run_id() -> str:
    return uuid.uuid4().hex[:12]


def simple(run: str, *, sender="app@example.com", to="reader@example.org", message_id=None) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = f"Hello {run}"
    if message_id:
        message["Message-ID"] = message_id
    message.set_content(f"Body of {run}.\n")
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def submit(client: smtplib.SMTP, sender: str, recipients: list[str], content: bytes) -> tuple[int, str]:
    """MAIL, RCPT and DATA; the DATA reply (code, text)."""
    code, text = client.mail(sender)
    assert code == 250, text
    for recipient in recipients:
        code, text = client.rcpt(recipient)
        assert code == 250, text
    code, text = client.data(content)
    return code, text.decode()


def auth_plain(client: smtplib.SMTP, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN (smtplib's login() would try the next mechanism after a 535)."""
    credentials = base64.b64encode(f"\0apikey\0{password}".encode()).decode()
    return client.docmd("AUTH", f"PLAIN {credentials}")


def email_id_of(reply: str) -> str:
    return reply.split(" as ", 1)[1].split()[0]


def test_message_with_attachments_arrives_byte_exact_bcc_on_envelope_only(ingress, celery_worker, smtp_server, key, api):
    run = run_id()
    message = EmailMessage()
    message["From"] = "Billing <billing@example.com>"
    message["To"] = "Jane <jane@example.com>"
    message["Cc"] = "carl@example.org"
    message["Bcc"] = "audit@example.net"
    message["Subject"] = f"Receipt {run} – ünïcode"
    message["Message-ID"] = f"<{run}@app.example.com>"
    message["Date"] = "Mon, 07 Dec 2026 10:00:00 +0000"
    message["X-Campaign"] = "autumn"
    message["X-Emailsvc-Tags"] = "receipt, billing"
    message["X-Emailsvc-Metadata"] = '{"order": 42}'
    message["X-Emailsvc-Group"] = f"receipts-{run}"
    message.set_content(f"Thanks for order {run}.\n")
    message.add_alternative('<p>Thanks <img src="cid:logo"></p>\n', subtype="html")
    message.get_payload()[1].add_related(PNG, "image", "png", cid="<logo>")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="receipt.pdf")
    content = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))

    with ingress.client(key) as client:
        code, reply = submit(client, "billing@example.com", ["jane@example.com", "carl@example.org", "audit@example.net"], content)
    assert code == 250 and reply.startswith("2.0.0 Accepted as"), reply
    email_id = email_id_of(reply)

    (mail,) = smtp_server.wait_for(email_id)
    assert sorted(mail.rcpt_tos) == ["audit@example.net", "carl@example.org", "jane@example.com"]
    # What was written, but the Bcc and X-Emailsvc-* header lines; the tracking header before it.
    head, body = content.split(b"\r\n\r\n", 1)
    lines = [line + b"\r\n" for line in head.split(b"\r\n")]
    kept = b"".join(line for line in lines if not line.lower().startswith((b"bcc:", b"x-emailsvc-")))
    tracking = f"X-Emailsvc-Tracking-ID: receipts-{run}/{email_id}\r\n".encode()
    assert mail.data == tracking + kept + b"\r\n" + body
    assert b"audit@example.net" not in mail.data

    assert wait_for_status(email_id).status == "sent"
    detail = api.get(f"/api/v1/emails/{email_id}").json()
    assert detail["source"] == "smtp" and detail["status"] == "sent", detail
    assert detail["tags"] == ["receipt", "billing"] and detail["metadata"] == {"order": 42}
    assert detail["group_id"] == f"receipts-{run}"
    assert {r["email"]: r["role"] for r in detail["recipients"]} == {
        "jane@example.com": "to", "carl@example.org": "cc", "audit@example.net": "bcc"
    }
    listed = api.get("/api/v1/emails", {"group_id": f"receipts-{run}"}).json()["results"]
    assert [(item["email_id"], item["source"]) for item in listed] == [(email_id, "smtp")]


def test_same_message_id_from_one_key_is_sent_once(ingress, celery_worker, smtp_server, key):
    run = run_id()
    content = simple(run, message_id=f"<{run}@app.example.com>")
    with ingress.client(key) as client:
        first = submit(client, "app@example.com", ["reader@example.org"], content)
    with ingress.client(key) as client:  # a client resending after a timeout: a new session
        again = submit(client, "app@example.com", ["reader@example.org"], content)
        later = submit(client, "app@example.com", ["reader@example.org"], simple(f"{run}-later"))
    assert first[0] == again[0] == later[0] == 250
    assert email_id_of(again[1]) == email_id_of(first[1]) and "not sent again" in again[1]
    smtp_server.wait_for(f"{run}-later")  # delivered after the repeat was answered
    assert wait_for_status(email_id_of(later[1])).status == "sent"
    assert len(smtp_server.matching(f"Body of {run}.")) == 1


def test_no_auth_is_530_and_bad_keys_are_535_slowed_and_counted(ingress, key, settings):
    settings.METRICS_PUBLIC = True
    client = redis_client()
    client.delete(*client.keys(AUTH_FAILURES_KEY + "*") or ["-"])  # an earlier run's failures
    with ingress.client() as client:
        assert client.mail("app@example.com")[0] == 530
    read_only = api_key_create(name="reader", permission=ApiKey.Permission.READ_ONLY)[1]
    revoked_key, revoked = api_key_create(name="gone")
    api_key_revoke(api_key=revoked_key)
    old, expired = api_key_create(name="old", expires_at=timezone.now() + timedelta(minutes=1))
    ApiKey.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    refused = []
    for password in ["es_nope_nope", read_only, revoked, expired, "es_nope_again"]:
        with ingress.client() as client:
            refused.append(auth_plain(client, password)[0])
    assert refused == [535] * 5
    # Five failures from this address are answered at once; the next ones wait.
    started = time.monotonic()
    with ingress.client() as client:
        assert auth_plain(client, "es_still_nope")[0] == 535
    assert time.monotonic() - started >= 0.5
    with ingress.client(key) as client:  # a good key still gets in at once
        assert client.mail("app@example.com")[0] == 250
    metrics = Client().get("/metrics").content.decode()
    counted = [line for line in metrics.splitlines() if line.startswith("emailsvc_smtp_auth_failures_total")]
    assert counted and float(counted[0].split()[-1]) >= 6, counted


def test_size_is_advertised_and_over_the_limit_is_552(ingress, key):
    with ingress.client(key) as client:
        assert int(client.esmtp_features["size"]) == MAX_MESSAGE_BYTES
        assert "pipelining" in client.esmtp_features
        code, text = client.mail("app@example.com", [f"SIZE={MAX_MESSAGE_BYTES + 1}"])
        assert code == 552, text
        client.rset()
        big = simple("big") + b"x" * 900 + (b"\r\n" + b"y" * 900) * (MAX_MESSAGE_BYTES // 900)
        client.mail("app@example.com")
        client.rcpt("reader@example.org")
        code, text = client.data(big)
    assert code == 552 and b"5.3.4" in text and b"payload_too_large" in text, text


def test_disallowed_sender_and_recipient_domains_are_refused(ingress, key):
    with ingress.client(key) as client:
        code, text = client.mail("someone@elsewhere.example")
        assert (code, text[:5]) == (550, b"5.7.1") and b"from_domain_not_allowed" in text
        client.rset()
        client.mail("app@example.com")
        code, text = client.rcpt("someone@blocked.example")
        assert (code, text[:5]) == (550, b"5.7.1") and b"recipient_domain_not_allowed" in text
        code, text = client.rcpt("root@localhost")
        assert code == 553 and b"invalid_address" in text
        client.rcpt("reader@example.org")
        # The envelope is allowed; the From header is not.
        code, text = client.data(simple("spoof", sender="ceo@elsewhere.example"))
    assert (code, text[:5]) == (550, b"5.7.1") and b"from_domain_not_allowed" in text, text


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"From: app@example.com\r\nTo: reader@example.org\r\nSubject: bare\nBcc: x@example.org\r\n\r\nHi\r\n",
         (550, b"5.6.0", b"invalid_header")),
        (b"From: app@example.com\r\nTo: reader@example.org\r\nX-Long: " + b"a" * 991 + b"\r\n\r\nHi\r\n",
         (550, b"5.6.0", b"line_too_long")),
        (b"From: app@example.com\r\nTo: reader@example.org\r\n\r\n" + b"b" * 3000 + b"\r\n",
         (500, b"5.5.6", b"line_too_long")),
        (b"To: reader@example.org\r\nSubject: who\r\n\r\nHi\r\n", (550, b"5.6.0", b"missing_fields")),
        (b"From: app@example.com\r\nX-Emailsvc-Colour: red\r\n\r\nHi\r\n", (550, b"5.6.0", b"invalid_header")),
        (b"From: app@example.com\r\nX-Emailsvc-Metadata: [1]\r\n\r\nHi\r\n", (550, b"5.6.0", b"invalid_field")),
    ],
    ids=["bare-lf-in-headers", "header-line-999", "body-line-3000", "no-from", "unknown-control-header", "bad-metadata"],
)
def test_messages_the_api_would_refuse_are_refused_at_data(ingress, key, content, expected):
    with ingress.client(key) as client:
        client.mail("app@example.com")
        client.rcpt("reader@example.org")
        code, text = client.data(content)
        assert (code, text[:5]) == expected[:2] and expected[2] in text, text
        assert client.noop()[0] == 250  # the session goes on


def test_suppressed_recipient_is_recorded_and_not_reached(ingress, celery_worker, smtp_server, key, api):
    run = run_id()
    suppression_add(email=f"gone-{run}@example.org", reason="manual", source="tests")
    with ingress.client(key) as client:
        code, reply = submit(
            client, "app@example.com", [f"gone-{run}@example.org", f"here-{run}@example.org"],
            simple(run, to=f"gone-{run}@example.org, here-{run}@example.org"),
        )
    assert code == 250, reply
    (mail,) = smtp_server.wait_for(f"Body of {run}.")
    assert mail.rcpt_tos == [f"here-{run}@example.org"]
    wait_for_status(email_id_of(reply))  # its record is written
    detail = api.get(f"/api/v1/emails/{email_id_of(reply)}").json()
    statuses = {r["email"]: r["status"] for r in detail["recipients"]}
    assert statuses[f"gone-{run}@example.org"] == "suppressed"


def test_pipelined_commands_are_answered_in_order(ingress, key):
    run = run_id()
    auth = base64.b64encode(f"\0apikey\0{key}".encode()).decode()
    with socket.create_connection(("127.0.0.1", ingress.port), timeout=30) as sock:
        reader = sock.makefile("rb")

        def replies(count: int) -> list[bytes]:
            found = []
            while len(found) < count:
                line = reader.readline()
                if line[3:4] == b" ":
                    found.append(line)
            return found

        replies(1)
        sock.sendall(f"EHLO tests.example.com\r\nAUTH PLAIN {auth}\r\n".encode())
        assert [line[:3] for line in replies(2)] == [b"250", b"235"]
        sock.sendall(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<reader@example.org>\r\nDATA\r\n")
        assert [line[:3] for line in replies(3)] == [b"250", b"250", b"354"]
        sock.sendall(simple(run) + b".\r\nQUIT\r\n")
        assert [line[:3] for line in replies(2)] == [b"250", b"221"]


def test_auth_needs_tls_off_loopback_and_starttls_uses_the_generated_certificate(ingress, key):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no address besides loopback")
    context = ingress.tls_client_context()
    context.check_hostname = False  # reached by a LAN address; the chain is still verified
    with ingress.client(host=address) as client:
        assert "auth" not in client.esmtp_features
        code, _ = client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0apikey\0{key}".encode()).decode())
        assert code == 538
        client.starttls(context=context)
        client.ehlo("tests.example.com")
        client.login("apikey", key)
        assert submit(client, "app@example.com", ["reader@example.org"], simple(run_id()))[0] == 250
    # Implicit TLS (port 465 in production), verified for 127.0.0.1 by the certificate itself.
    with smtplib.SMTP_SSL("127.0.0.1", ingress.tls_port, context=ingress.tls_client_context(), timeout=30) as client:
        client.login("apikey", key)
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLError):  # a client that trusts only the system's CAs refuses it: self-signed
        smtplib.SMTP_SSL("127.0.0.1", ingress.tls_port, context=ssl.create_default_context(), timeout=30)


def test_a_stored_template_renders_the_message_named_by_its_header(ingress, celery_worker, smtp_server, key, make_template):
    run = run_id()
    make_template(f"smtp-{run}", subject="Welcome {{ name }}", html="<p>Hi {{ name }}, code " + run + "</p>")
    message = EmailMessage()
    message["From"] = "app@example.com"
    message["To"] = "reader@example.org"
    message["X-Emailsvc-Template"] = f"smtp-{run}"
    message["X-Emailsvc-Template-Data"] = '{"name": "Jane"}'
    message.set_content("(rendered by the template)\n")
    content = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    with ingress.client(key) as client:
        code, reply = submit(client, "app@example.com", ["reader@example.org"], content)
    assert code == 250, reply
    (mail,) = smtp_server.wait_for(f"code {run}")
    assert mail.message["Subject"] == "Welcome Jane" and b"X-Emailsvc-Template" not in mail.data
    assert wait_for_status(email_id_of(reply)).status == "sent"
    with ingress.client(key) as client:
        client.mail("app@example.com")
        client.rcpt("reader@example.org")
        code, text = client.data(content.replace(f"smtp-{run}".encode(), b"no-such-template"))
    assert (code, text[:5]) == (550, b"5.6.0") and b"template_not_found" in text, text


def test_ses_receives_the_submitted_mime_as_raw_content_with_the_envelope_as_destination(
    celery_worker, moto_server, key, settings
):
    """The service behind DATA with EMAIL_PROVIDER=ses: the worker hands SES
    (moto) the submitted bytes, only the tracking header put before them."""
    from emailsvc.models import ApiKey as Key
    from emailsvc.submission.mime import message_submit_mime

    settings.EMAIL_PROVIDER = "ses"
    run = run_id()
    message = EmailMessage()
    message["From"] = "app@example.com"
    message["To"] = "jane@example.com"
    message["Subject"] = f"Raw {run}"
    message["Message-ID"] = f"<{run}@app.example.com>"
    message["Date"] = "Mon, 07 Dec 2026 10:00:00 +0000"
    message.set_content(f"Body of {run}.\n")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="receipt.pdf")
    content = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    api_key = Key.objects.get(prefix=key.split("_")[1])
    email_id, _ = message_submit_mime(
        api_key=api_key, recipients=["jane@example.com", "audit@example.net"], content=content
    )
    stored = wait_for_status(email_id)
    assert stored.status == "sent", celery_worker.log()[-3000:]
    (sent,) = [m for m in moto_server.sent_raw_messages() if m["id"] == stored.provider_message_id]
    assert sent["raw_data"].encode() == f"X-Emailsvc-Tracking-ID: /{email_id}\r\n".encode() + content
    assert set(sent["destinations"]) == {"audit@example.net", "jane@example.com"}  # moto adds the To header's


def test_concurrent_sessions_are_each_answered_and_one_message_id_sent_by_all_is_stored_once(
    ingress, celery_worker, smtp_server, key
):
    from concurrent.futures import ThreadPoolExecutor

    from emailsvc.models import Message

    run = run_id()
    shared = simple(f"{run}-shared", message_id=f"<{run}-shared@app.example.com>")

    def session(number: int) -> list[tuple[int, str]]:
        with ingress.client(key) as client:
            answers = [submit(client, "app@example.com", ["reader@example.org"], simple(f"{run}-{number}-{n}"))
                       for n in range(3)]
            answers.append(submit(client, "app@example.com", ["reader@example.org"], shared))
        return answers

    with ThreadPoolExecutor(8) as pool:
        answers = [answer for session_answers in pool.map(session, range(8)) for answer in session_answers]
    assert {code for code, _ in answers} == {250}
    assert len({email_id_of(text) for _, text in answers}) == 8 * 3 + 1
    assert Message.objects.filter(subject=f"Hello {run}-shared").count() == 1
    assert len(smtp_server.wait_for(f"Body of {run}-", count=25)) == 25
    stored = Message.objects.filter(subject__startswith=f"Hello {run}-")
    assert wait_until(lambda: not stored.filter(status__in=PENDING).exists())


def test_a_keys_domains_and_test_mode_hold_over_smtp_as_over_the_api(ingress, celery_worker, smtp_server):
    run = run_id()
    scoped = api_key_create(name="scoped", permission="sending", domains=["mail.example.com"])[1]
    with ingress.client(scoped) as client:
        client.mail("app@mail.example.com")
        client.rcpt("reader@example.org")
        code, text = client.data(simple(run, sender="app@example.com"))
    assert (code, text[:5]) == (550, b"5.7.1") and b"key_domain_not_allowed" in text, text

    test_key = api_key_create(name="ci", permission="sending", test=True)[1]
    with ingress.client(test_key) as client:
        code, reply = submit(client, "app@example.com", [f"reader-{run}@example.org"], simple(run, to=f"reader-{run}@example.org"))
    assert code == 250, reply
    reader = Client()
    reader.defaults["HTTP_AUTHORIZATION"] = f"Bearer {test_key}"
    detail = poll(
        lambda: reader.get(f"/api/v1/emails/{email_id_of(reply)}").json(),
        until=lambda body: body["status"] == "delivered", timeout=30,
    )
    assert (detail["test"], detail["provider"], detail["source"]) == (True, "test", "smtp")
    assert smtp_server.matching(f"Body of {run}.") == []


def test_a_key_limited_to_other_streams_is_refused_over_smtp(ingress):
    # Submitted MIME goes on the transactional stream (docs/streams.md).
    newsletters = api_key_create(name="newsletters", permission="sending", streams=["broadcast"])[1]
    with ingress.client(newsletters) as client:
        client.mail("app@example.com")
        client.rcpt("reader@example.org")
        code, text = client.data(simple(run_id()))
    assert (code, text[:5]) == (550, b"5.7.1") and b"key_stream_not_allowed" in text, text
