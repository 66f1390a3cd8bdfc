"""The outbound email's serializer writes exactly the bytes the email
package's own generator writes: the wire format is not changed by making it
faster. (The bytes an SMTP server receives are asserted end to end in
test_delivery.py.)"""

import random
from email import message_from_bytes
from email.policy import compat32
from types import SimpleNamespace

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from emailsvc.providers.mime import build_email, mime_bytes

HTML = "<p>Hello <b>there</b></p>" * 20
TEXT = "Hello there,\n\nThis is the text part.\n" * 10


def _message(**changes):
    fields = dict(
        email_id="0b7c1e1e-0000-4000-8000-000000000001", group_id="orders/2026", from_email="noreply@example.com",
        from_name="Example Shop", subject="Your order is confirmed", text=TEXT, html=HTML, headers={},
        tags=["orders"], metadata={"order": 1}, reply_to=[],
    )
    fields.update(changes)
    return SimpleNamespace(**fields)


def _to(*addresses, name=""):
    return [SimpleNamespace(email=address, name=name, role="to") for address in addresses]


def _attachment(filename, content, content_type):
    return SimpleNamespace(filename=filename, content=content, content_type=content_type)


def _both_ways(email, linesep="\r\n"):
    mime = email.message()
    random.seed(7)  # the boundary is random: draw the same one for both
    reference = type(mime).as_bytes(mime, linesep=linesep)  # Django's as_bytes: the stdlib generator
    random.seed(7)
    return reference, mime.as_bytes(linesep=linesep)


CASES = {
    "text and html": dict(),
    "text only": dict(html=""),
    "html only": dict(text=""),
    "non-ASCII everywhere": dict(
        from_name="Bücherei Ünïcode", subject="Ihre Bestellung über 42 € ist bestätigt — danke schön!",
        text="Grüße aus Köln\n" * 5, html="<p>Grüße</p>",
    ),
    "long subject that folds": dict(subject="word " * 40),
    "spaces at the edges and runs of spaces": dict(subject="  two  spaces  ", headers={"X-Note": " lead", "X-Trail": "trail "}),
    "encoded-word look-alike": dict(subject="=?utf-8?q?not_really?= plain"),
    "an unfoldable long header": dict(headers={"X-Long": "x" * 950}),
    "many tags and big metadata": dict(tags=["a", "b", "ç"], metadata={f"key{n}": "v" * 40 for n in range(30)}),
    "reply-to list": dict(reply_to=["Support <support@example.com>", "other@example.com"]),
    "empty subject": dict(subject=""),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bytes_are_the_email_packages_bytes(case, settings):
    settings.SES_CONFIGURATION_SET = "emailsvc"
    recipients = _to("customer@example.com") + _to("u@example.org", name="Ünal Kaya")
    email = build_email(_message(**CASES[case]), recipients, [])
    reference, fast = _both_ways(email)
    assert fast == reference


def test_attachments_and_line_endings_are_the_same():
    attachments = [
        _attachment("report.pdf", bytes(range(256)) * 40, "application/pdf"),
        _attachment("notes.txt", "plain text\n".encode() * 30, "text/plain"),
        _attachment("größe.csv", "a,b\n1,2\n".encode(), "text/csv"),
    ]
    email = build_email(_message(), _to("customer@example.com", name="Zoë Client"), attachments)
    for linesep in ("\r\n", "\n"):
        reference, fast = _both_ways(email, linesep)
        assert fast == reference


def test_a_boundary_found_in_the_body_is_replaced():
    body = "--" + "=" * 15  # every boundary starts like this: make the first candidate collide
    email = build_email(_message(text=body, html=f"<p>{body}</p>"), _to("customer@example.com"), [])
    raw = email.message().as_bytes(linesep="\r\n")
    parsed = message_from_bytes(raw)
    assert [part.get_content_type() for part in parsed.walk()] == ["multipart/alternative", "text/plain", "text/html"]
    assert parsed.get_payload(0).get_payload(decode=True).decode() == body


@hypothesis_settings(max_examples=400, deadline=None)
@given(
    name=st.sampled_from(["Subject", "X-Tag", "X-Metadata", "Reply-To", "X-A-Much-Longer-Custom-Header-Name"]),
    value=st.text(alphabet=st.sampled_from(list(" \t=?:;,\"'<>@.-_azAZ09éü€")), max_size=120),
)
def test_any_header_value_is_written_as_compat32_folds_it(name, value):
    """Every header the fast path may write directly, checked against the
    email package's folding of the same header."""
    from email.message import Message

    mime = Message()
    mime[name] = value
    expected = b"".join(compat32.clone(linesep="\r\n").fold_binary(h, v) for h, v in mime.raw_items()) + b"\r\n"
    assert mime_bytes(mime, linesep="\r\n") == expected
