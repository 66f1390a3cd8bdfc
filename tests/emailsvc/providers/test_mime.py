"""The outbound email's serializer writes exactly the bytes the email
package's own generator writes: the wire format is not changed by making it
faster. (The bytes an SMTP server receives are asserted end to end in
test_delivery.py.)"""

import random
from email import message_from_bytes
from email import policy as email_policy
from email.policy import compat32
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from emailsvc.providers.mime import _plain_bytes, build_email, mime_bytes, wire_bytes

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


# --- The plain email written without the email package's objects -------------------------


@pytest.fixture
def fixed_date(monkeypatch):
    """The Date header of both ways from the same clock reading."""
    import django.core.mail.message

    import emailsvc.providers.mime

    def date(localtime=False):
        return "Tue, 01 Dec 2026 20:00:00 -0000"

    monkeypatch.setattr(django.core.mail.message, "formatdate", date)
    monkeypatch.setattr(emailsvc.providers.mime, "formatdate", date)


def _wire_both_ways(email, linesep="\r\n"):
    """(the email package's bytes, wire_bytes) with the same random boundary."""
    mime = email.message()
    random.seed(11)
    reference = type(mime).as_bytes(mime, linesep=linesep)
    random.seed(11)
    return reference, wire_bytes(email, linesep=linesep)


PLAIN = {"text and html", "text only", "html only", "long subject that folds", "spaces at the edges and runs of spaces",
         "encoded-word look-alike", "reply-to list", "empty subject", "non-ASCII everywhere"}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_wire_bytes_are_the_email_packages_bytes(case, settings, fixed_date):
    settings.SES_CONFIGURATION_SET = "emailsvc"
    recipients = _to("customer@example.com") + _to("u@example.org", name="Una Kaya")
    email = build_email(_message(**CASES[case]), recipients, [])
    for linesep in ("\r\n", "\n"):
        reference, wire = _wire_both_ways(email, linesep)
        assert wire == reference
    # The usual shapes are written directly (non-ASCII subjects and names are
    # encoded words by then); the others (a header too long to fold) go the
    # email package's way.
    assert (_plain_bytes(email, "\r\n") is not None) == (case in PLAIN)


def test_attachments_go_the_email_packages_way(fixed_date):
    email = build_email(_message(), _to("customer@example.com"), [_attachment("a.txt", b"hello\n", "text/plain")])
    assert _plain_bytes(email, "\r\n") is None
    reference, wire = _wire_both_ways(email)
    assert wire == reference


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    subject=st.text(alphabet=st.sampled_from(list(" \t=?:;,\"'<>@.-_azAZ09é\n")), max_size=150),
    text=st.text(alphabet=st.sampled_from(list(" \t\r\n.-azAZ09é€—")), max_size=300) | st.just("x" * 1200),
    html=st.text(alphabet=st.sampled_from(list(" <>/\r\np.azé")), max_size=200),
    name=st.text(alphabet=st.sampled_from(list(" ,.\"'azAZé")), max_size=30),
    header=st.text(alphabet=st.sampled_from(list(" \t:;azAZ09é")), max_size=100),
    tags=st.lists(st.text(alphabet=st.sampled_from(list(" -azé")), max_size=20), max_size=3),
)
def test_any_plain_email_is_written_as_the_email_package_writes_it(subject, text, html, name, header, tags):
    """Whatever the subject, bodies, display name, custom header and tags — those
    the direct path takes and those it hands back — the bytes are the same, or
    both ways refuse the email alike."""
    import django.core.mail.message

    import emailsvc.providers.mime

    def date(localtime=False):
        return "Tue, 01 Dec 2026 20:00:00 -0000"

    before = django.core.mail.message.formatdate, emailsvc.providers.mime.formatdate
    django.core.mail.message.formatdate = emailsvc.providers.mime.formatdate = date
    try:
        message = _message(subject=subject, text=text, html=html, from_name=name, headers={"X-Custom": header}, tags=tags)
        email = build_email(message, _to("customer@example.com", name=name), [])
        try:
            reference = _wire_both_ways(email)
        except ValueError as error:  # a newline in a header: refused by Django (BadHeaderError)
            with pytest.raises(type(error)):
                wire_bytes(email)
        else:
            assert reference[1] == reference[0]
    finally:
        django.core.mail.message.formatdate, emailsvc.providers.mime.formatdate = before


@hypothesis_settings(max_examples=500, deadline=None)
@given(value=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=70))
def test_a_short_ascii_subject_is_what_header_encodes_it_to(value):
    from email.header import Header

    from emailsvc.providers.mime import _subject_encoded

    assert _subject_encoded(value) == Header(value).encode()


@pytest.mark.parametrize("suffix", ["", ".0", ".7", ".12", ".123"])
@pytest.mark.parametrize("linesep", ["\r\n", "\n"])
def test_the_multipart_content_type_folds_as_compat32_folds_it(suffix, linesep):
    from emailsvc.providers.mime import _Generator, _multipart_content_type

    policy = compat32.clone(linesep=linesep)
    for _ in range(50):
        boundary = _Generator._make_boundary() + suffix
        value = f'multipart/alternative; boundary="{boundary}"'
        assert _multipart_content_type(boundary, policy) == policy.fold_binary("Content-Type", value)


# --- SES: the raw MIME anymail sends ------------------------------------------------------

SES_CASES = {
    **CASES,
    "non-ASCII bodies (quoted-printable for SES)": dict(
        text="Grüße aus Köln — 42 €\n  indented line\twith a tab \n" * 5, html="<p>Grüße — 42 €</p> "
    ),
    "non-ASCII display names": dict(from_name="Bücherei Ünïcode", text="Grüße\n"),
    "a long line of non-ASCII text": dict(text="é" * 600, html=""),
}


def _ses_both_ways(email):
    """(anymail's own raw MIME and params, the service's) with the same random boundary."""
    from anymail.backends.amazon_ses import AmazonSESV2SendEmailPayload

    from emailsvc.providers.ses import _AnymailBackend, _SendEmailPayload

    backend = _AnymailBackend(fail_silently=False)
    out = []
    for payload_class in (AmazonSESV2SendEmailPayload, _SendEmailPayload):
        random.seed(13)
        payload = payload_class(email, {}, backend)
        payload.finalize_payload()
        out.append((payload.params, [r.addr_spec for r in payload.all_recipients]))
    went_direct = not hasattr(payload, "mime_message")  # the email package's objects were never built
    return *out, went_direct


@pytest.mark.parametrize("case", SES_CASES, ids=list(SES_CASES))
def test_ses_raw_mime_is_anymails(case, settings, fixed_date):
    """The SES payload's raw MIME, destinations and configuration set are what
    anymail's own payload builds; plain emails take the direct path."""
    from emailsvc.providers.mime import seven_bit_bytes

    settings.SES_CONFIGURATION_SET = "emailsvc"
    recipients = _to("customer@example.com") + _to("u@example.org", name="Ünal Kaya")
    email = build_email(_message(**SES_CASES[case]), recipients, [])
    reference, fast, went_direct = _ses_both_ways(email)
    assert fast == reference
    raw = fast[0]["Content"]["Raw"]["Data"]
    assert raw.isascii()  # 7bit clean: SES's advice
    direct = case in PLAIN | {"non-ASCII bodies (quoted-printable for SES)", "non-ASCII display names"}
    assert (seven_bit_bytes(email) is not None) == direct
    assert went_direct == direct
    # A reader gets the text back as it was written.
    parsed = message_from_bytes(raw, policy=compat32)
    first = next(p for p in parsed.walk() if not p.is_multipart())
    expected = SES_CASES[case].get("text", TEXT) or SES_CASES[case].get("html", HTML)
    assert first.get_payload(decode=True).decode("utf-8") == expected


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    subject=st.text(alphabet=st.sampled_from(list(" \t=?:;,\"'<>@.-_azAZ09é")), max_size=150),
    text=st.text(alphabet=st.sampled_from(list(" \t\r\n=.-azAZ09é€—")), max_size=300) | st.just("ü" * 1200),
    html=st.text(alphabet=st.sampled_from(list(" <>/\n=p.azé")), max_size=200),
    name=st.text(alphabet=st.sampled_from(list(" ,.\"'azAZé")), max_size=30),
    tags=st.lists(st.text(alphabet=st.sampled_from(list(" -azé")), max_size=20), max_size=3),
)
def test_any_email_reaches_ses_as_anymail_writes_it(subject, text, html, name, tags):
    import django.core.mail.message

    import emailsvc.providers.mime

    def date(localtime=False):
        return "Tue, 01 Dec 2026 20:00:00 -0000"

    before = django.core.mail.message.formatdate, emailsvc.providers.mime.formatdate
    django.core.mail.message.formatdate = emailsvc.providers.mime.formatdate = date
    try:
        message = _message(subject=subject, text=text, html=html, from_name=name, tags=tags)
        email = build_email(message, _to("customer@example.com", name=name), [])
        reference, fast, _went_direct = _ses_both_ways(email)
        assert fast == reference
    finally:
        django.core.mail.message.formatdate, emailsvc.providers.mime.formatdate = before


def test_ses_raw_mime_folds_long_filenames_and_keeps_attachment_bytes(settings, fixed_date):
    """The SES path (anymail's raw MIME, 8bit parts re-encoded) keeps lines within
    998 octets and every attachment's name, type and bytes."""
    filename = "Рахунок-фактура для бібліотеки — березень " * 5 + "(копія).pdf"
    latin1 = "Grüße\r\nZeile\rCR\n".encode("latin-1")
    attachments = [
        _attachment(filename, b"%PDF", "application/pdf"), _attachment("l.txt", latin1, "text/plain"),
        _attachment("empty.bin", b"", "application/octet-stream"),
    ]
    email = build_email(_message(subject="=?utf-8?q?literal?="), _to("customer@example.com", name="=?x?="), attachments)
    from emailsvc.providers.ses import _AnymailBackend, _SendEmailPayload

    payload = _SendEmailPayload(email, {}, _AnymailBackend(fail_silently=False))
    payload.finalize_payload()
    raw = payload.params["Content"]["Raw"]["Data"]
    assert max(len(line) for line in raw.split(b"\n")) <= 998
    parsed = message_from_bytes(raw, policy=email_policy.default)
    assert parsed["Subject"] == "=?utf-8?q?literal?="
    assert parsed["To"].addresses[0].display_name == "=?x?="
    parts = [(p.get_filename(), p.get_content_type(), p.get_payload(decode=True)) for p in parsed.iter_attachments()]
    assert parts == [
        (filename, "application/pdf", b"%PDF"), ("l.txt", "text/plain", latin1),
        ("empty.bin", "application/octet-stream", b""),
    ]
