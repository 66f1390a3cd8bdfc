"""One mailbox is one address (core.addresses): every spelling of a mailbox —
quotes the local part does not need, any case, its domain in Unicode or in
A-labels, spaces around it, a display name — has one canonical form, and the
service sends, suppresses, imports and applies events in that form. Addresses
a transactional service must not send to are refused at the door."""

import csv
import io
import itertools
import json
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from core.addresses import InvalidAddress, _canonical, address_canonical, address_forms, address_key, address_parse
from emailsvc.models import Recipient, Status, Suppression
from tests.conftest import deliver_now
from tests.tracking.sesevents import ses_event, sns_envelope
from tracking.apply import event_apply
from tracking.models import EngagementEvent
from tracking.normalize import ses_body_parse

EMAILS = "/api/v1/emails"
SUPPRESSIONS = "/api/v1/suppressions"


def post(client, url, body):
    return client.post(url, json.dumps(body), content_type="application/json")


@dataclass(frozen=True)
class Domain:
    ascii: str
    spellings: tuple[str, ...]  # ways a caller may write it (case is varied on top)


DOMAINS = [
    Domain("example.net", ("example.net", "ｅｘａｍｐｌｅ.net")),  # fullwidth letters map to ASCII (UTS-46)
    Domain("xn--bcher-kva.example", ("bücher.example", "xn--bcher-kva.example", "BÜCHER.example")),
    Domain("xn--r8jz45g.jp", ("例え.jp", "xn--r8jz45g.jp", "例え。jp")),  # an ideographic full stop is a dot
]


# --- the canonical form -------------------------------------------------------


@pytest.mark.parametrize(
    ("given_as", "canonical"),
    [
        ('"jane"@example.net', "jane@example.net"),
        ('"Jane"@EXAMPLE.net', "jane@example.net"),
        ('"j\\ane"@example.net', "jane@example.net"),  # a quoted pair of an ordinary character
        ('"jane.doe+tag"@example.net', "jane.doe+tag@example.net"),
        ("  Jane@Example.NET  ", "jane@example.net"),
        ("jane@Bücher.example", "jane@xn--bcher-kva.example"),
        ('"JANE"@XN--BCHER-KVA.EXAMPLE', "jane@xn--bcher-kva.example"),
        ("jane@ｅｘａｍｐｌｅ.net", "jane@example.net"),
        ("x@partner.test", "x@partner.test"),  # RFC 2606 .test stays usable for sandboxes
    ],
)
def test_every_spelling_of_a_mailbox_has_one_canonical_form(given_as, canonical):
    assert address_canonical(given_as) == canonical
    assert address_key(given_as) == canonical
    assert address_parse(f"Jane <{given_as.strip()}>") == ("Jane", canonical)
    assert address_parse({"email": given_as, "name": "Jane"}) == ("Jane", canonical)


REFUSED = {
    "ipv4_literal": ("user@[192.0.2.1]", "IP address"),
    "ipv6_literal": ("user@[IPv6:2001:db8::1]", "IP address"),
    "localhost": ("user@localhost", "needs a dot"),
    "single_label": ("user@mailhost", "needs a dot"),
    "localhost_subdomain": ("user@app.localhost", "special-use"),
    "dot_local": ("user@printer.local", "special-use"),
    "dot_invalid": ("user@example.invalid", "special-use"),
    "percent_routing": ("a%b@c.example", "route mail"),
    "bang_path": ("a!b@c.example", "route mail"),
    "quoted_percent": ('"a%b"@c.example', "route mail"),
    "quoted_space": ('"john doe"@example.com', "needs quotes"),
    "quoted_at": ('"a@b"@example.com', "needs quotes"),
    "quoted_double_dot": ('"a..b"@example.com', "needs quotes"),
    "non_ascii_local": ("jürgen@example.com", "must be ASCII"),
}


@pytest.mark.parametrize(("address", "why"), REFUSED.values(), ids=REFUSED.keys())
def test_an_address_that_must_not_be_sent_to_is_refused_saying_why(address, why):
    with pytest.raises(InvalidAddress, match=why) as raised:
        address_canonical(address)
    assert raised.value.code == "invalid_address"
    assert address_key(address)  # lookups never raise


def test_address_forms_find_rows_stored_with_quotes_or_a_unicode_domain():
    assert address_forms('"Jane"@Bücher.example') >= {
        "jane@xn--bcher-kva.example", '"jane"@xn--bcher-kva.example', "jane@bücher.example",
    }


# --- refused at the door, on both databases ----------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("address", "why"), REFUSED.values(), ids=REFUSED.keys())
@pytest.mark.parametrize("field", ["to", "cc", "bcc", "reply_to"])
def test_a_refused_address_is_400_invalid_address_at_the_door(full_api, field, address, why):
    body = {"to": "ok@example.com", field: [address], "subject": "s", "text": "t"}
    response = post(full_api, EMAILS, body)

    assert response.status_code == 400
    answer = response.json()
    assert answer["error"] == "invalid_address"
    assert why in answer["fields"][field][0]
    assert not Recipient.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(("address", "why"), REFUSED.values(), ids=REFUSED.keys())
def test_a_refused_address_cannot_be_added_as_a_suppression(full_api, address, why):
    response = post(full_api, SUPPRESSIONS, {"email": address})

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_address"
    assert why in response.json()["fields"]["email"][0]
    assert not Suppression.objects.exists()


# --- one canonical form across send, suppress, CSV and events ---------------------

LOCALS = st.from_regex(r"[a-z0-9]([a-z0-9_+-]|\.(?!\.)){0,12}[a-z0-9]", fullmatch=True).filter(
    lambda local: ".." not in local
)
_MAILBOX_NUMBERS = itertools.count(1)


@st.composite
def spelling(draw, local: str, domain: Domain) -> str:
    """One way to write local@domain: case, quotes (with quoted pairs), the domain's forms, spaces."""
    cased = [char.upper() if draw(st.booleans()) else char for char in local]
    if draw(st.booleans()):
        written = '"' + "".join("\\" + c if c.isalnum() and draw(st.booleans()) else c for c in cased) + '"'
    else:
        written = "".join(cased)
    host = draw(st.sampled_from(domain.spellings))
    host = "".join(char.upper() if draw(st.booleans()) else char for char in host)
    before, after = draw(st.sampled_from(["", " ", "  "])), draw(st.sampled_from(["", " "]))
    return f"{before}{written}@{host}{after}"


@st.composite
def as_recipient(draw, address: str):
    """The address as the API takes it: bare, with a display name, or an object."""
    form = draw(st.sampled_from(["bare", "name", "quoted_name", "object", "object_named"]))
    return {
        "bare": address,
        "name": f"Jane Doe <{address.strip()}>",
        "quoted_name": f'"Doe, Jane" <{address.strip()}>',
        "object": {"email": address},
        "object_named": {"email": address, "name": "Jane"},
    }[form]


@pytest.fixture
def smtp(settings, smtp_server):
    settings.EMAIL_PROVIDER = "smtp"
    settings.EMAIL_HOST, settings.EMAIL_PORT = smtp_server.host, smtp_server.port
    settings.SEND_RATE_PER_SECOND = 0
    return smtp_server


def _bounce(message_id: str, recipient: str) -> None:
    envelope = sns_envelope(ses_event("Bounce", message_id=message_id, recipients=[recipient], bounce_type="Permanent"))
    for normalized in ses_body_parse(envelope):
        event_apply(event=normalized, source="sqs")


def _csv(rows: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["email", "reason"])
    writer.writerows([row, "complaint"] for row in rows)
    return out.getvalue().encode()


@pytest.mark.django_db
@hypothesis_settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), local=LOCALS, domain=st.sampled_from(DOMAINS))
def test_one_mailbox_in_any_spelling_is_one_address_to_send_suppress_import_and_events(
    full_api, smtp, data, local, domain
):
    local = f"{local}-{next(_MAILBOX_NUMBERS):05d}"  # every example its own mailbox (the same length: the same draws)
    mailbox = f"{local}@{domain.ascii}"
    spelled = data.draw(st.lists(spelling(local, domain), min_size=4, max_size=6), label="spellings")
    assert {address_canonical(s) for s in spelled} == {mailbox}
    assert {address_key(s) for s in spelled} == {mailbox}

    # Send: one recipient, one copy at the SMTP server, to the canonical form.
    marker = f"mailbox-{local}"
    to = [data.draw(as_recipient(s)) for s in spelled[:2]]
    cc, bcc = [data.draw(as_recipient(spelled[2]))], [data.draw(as_recipient(s)) for s in spelled[3:]]
    sent = post(full_api, EMAILS, {"to": to, "cc": cc, "bcc": bcc, "subject": marker, "text": "t"})
    assert sent.status_code == 202, sent.content
    assert [r["email"] for r in sent.json()["recipients"]] == [mailbox]
    stored = Recipient.objects.filter(message__email_id=sent.json()["email_id"])
    assert list(stored.values_list("email", "role")) == [(mailbox, "to")]
    deliver_now()
    received = smtp.matching(marker)
    assert [mail.rcpt_tos for mail in received] == [[mailbox]]

    # Events: a bounce naming another spelling reaches the recipient and suppresses the mailbox.
    recipient = Recipient.objects.get(message__email_id=sent.json()["email_id"])
    named = data.draw(st.sampled_from(spelled), label="bounced as").strip()
    _bounce(recipient.message.provider_message_id, data.draw(st.sampled_from([named, f"Jane <{named}>"])))
    event = EngagementEvent.objects.get(message_id=recipient.message_id)
    assert (event.recipient_email, event.recipient_id) == (mailbox, recipient.pk)
    assert list(Suppression.objects.filter(email__contains=local).values_list("email", "reason")) == [
        (mailbox, "hard_bounce")
    ]

    # Suppress through the API: lift, add, add again, look up, each in another spelling.
    assert full_api.delete(f"{SUPPRESSIONS}/{quote(spelled[0], safe='')}").status_code == 204
    added = post(full_api, SUPPRESSIONS, {"email": spelled[1], "reason": "manual"})
    assert (added.status_code, added.json()["email"]) == (201, mailbox)
    assert post(full_api, SUPPRESSIONS, {"email": spelled[2]}).status_code == 200
    found = full_api.get(f"{SUPPRESSIONS}/{quote(spelled[3], safe='')}")
    assert (found.status_code, found.json()["email"]) == (200, mailbox)
    listed = full_api.get(SUPPRESSIONS, {"search": spelled[3]})
    assert [entry["email"] for entry in listed.json()["results"]] == [mailbox]
    again = post(full_api, EMAILS, {"to": data.draw(as_recipient(spelled[-1])), "subject": "s", "text": "t"})
    assert [(r["email"], r["status"]) for r in again.json()["recipients"]] == [(mailbox, Status.SUPPRESSED)]

    # CSV: every spelling in one file is one address.
    assert full_api.delete(f"{SUPPRESSIONS}/{quote(spelled[-1], safe='')}").status_code == 204
    imported = full_api.post(f"{SUPPRESSIONS}/import", _csv(spelled), content_type="text/csv")
    assert imported.status_code == 200, imported.content
    assert (imported.json()["imported"], imported.json()["duplicates"]) == (1, len(spelled) - 1)
    assert list(Suppression.objects.filter(email__contains=local).values_list("email", "reason")) == [
        (mailbox, "complaint")
    ]


@hypothesis_settings(max_examples=2000, deadline=None)
@given(value=st.text(alphabet=st.sampled_from(list("az09.-+_%!'@")), max_size=30))
def test_a_lower_case_ascii_address_is_its_own_key_valid_or_not(value):
    canonical, problem = _canonical(value)
    if not problem:
        assert address_key(value) == canonical == value
    elif value.count("@") == 1:
        assert address_key(value) == value


@hypothesis_settings(max_examples=1000, deadline=None)
@given(
    value=st.text(alphabet=st.characters(exclude_categories=[]), max_size=40)
    | st.from_regex(r'\s*"?[^@]{0,8}"?@\[?[^@]{0,20}\]?\s*')
)
def test_any_text_is_refused_or_canonical_never_an_exception(value):
    try:
        canonical = address_canonical(value)
    except InvalidAddress:
        pass
    else:
        assert address_canonical(canonical) == canonical
    assert isinstance(address_key(value), str)
