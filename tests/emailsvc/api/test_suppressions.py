"""The suppressions API (issue 16, SPEC §4 /suppressions): list with filters and
stable cursor pages, idempotent add, look up and lift an address in any of its
forms, `full` to write and `read_only` to read — and what it means for a send."""

import json
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.utils import timezone

from emailsvc.models import ApiKey, Recipient, Status, Suppression
from emailsvc.suppressions.services import suppression_add

SUPPRESSIONS = "/api/v1/suppressions"
BUECHER = "xn--bcher-kva.example"  # bücher.example


def post(client, url, body):
    return client.post(url, json.dumps(body), content_type="application/json")


def detail(address: str) -> str:
    return f"{SUPPRESSIONS}/{quote(address, safe='@')}"


@pytest.fixture
def full(make_client):
    return make_client(ApiKey.Permission.FULL)


@pytest.fixture
def reader(make_client):
    return make_client(ApiKey.Permission.READ_ONLY)


def emails_of(page) -> list[str]:
    return [entry["email"] for entry in page.json()["results"]]


# --- permissions ------------------------------------------------------------------


@pytest.mark.parametrize("permission", [ApiKey.Permission.READ_ONLY, ApiKey.Permission.SENDING])
def test_keys_below_full_read_but_may_not_write(make_client, permission):
    suppression_add(email="kept@example.com", reason="manual")
    client = make_client(permission)

    assert client.get(SUPPRESSIONS).status_code == 200
    assert client.get(detail("kept@example.com")).status_code == 200
    refused = [
        post(client, SUPPRESSIONS, {"email": "new@example.com"}),
        client.delete(detail("kept@example.com")),
        client.post(f"{SUPPRESSIONS}/import", b"email\nnew@example.com\n", content_type="text/csv"),
    ]
    for response in refused:
        assert response.status_code == 403
        assert response.json()["error"] == "forbidden"
    assert list(Suppression.objects.values_list("email", flat=True)) == ["kept@example.com"]


def test_without_a_key_every_suppressions_endpoint_is_401(client):
    for response in (
        client.get(SUPPRESSIONS),
        client.post(SUPPRESSIONS, {}),
        client.get(detail("a@example.com")),
        client.delete(detail("a@example.com")),
        client.post(f"{SUPPRESSIONS}/import", b"email\n", content_type="text/csv"),
    ):
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"


# --- add ----------------------------------------------------------------------------


def test_adding_a_new_address_is_201_and_adding_it_again_is_200_with_the_entry_unchanged(full):
    first = post(full, SUPPRESSIONS, {"email": "Jane@Example.com", "reason": "unsubscribe", "note": "asked by phone"})
    assert first.status_code == 201
    entry = first.json()
    assert entry["email"] == "jane@example.com"
    assert entry["reason"] == "unsubscribe" and entry["note"] == "asked by phone"
    assert entry["active"] is True and entry["expires_at"] is None
    assert entry["source"].startswith("api-key:test full (")

    again = post(full, SUPPRESSIONS, {"email": "JANE@example.com", "reason": "manual", "note": "other"})
    assert again.status_code == 200
    assert again.json() == entry
    assert Suppression.objects.count() == 1


def test_reason_defaults_to_manual_and_an_expiry_is_kept(full):
    expires = timezone.now() + timedelta(days=7)
    response = post(full, SUPPRESSIONS, {"email": "later@example.com", "expires_at": expires.isoformat()})
    assert response.status_code == 201
    assert response.json()["reason"] == "manual"
    assert Suppression.objects.get().expires_at == expires


def test_an_expired_entry_is_renewed_as_a_new_one(full):
    old = suppression_add(email="back@example.com", reason="hard_bounce", expires_at=timezone.now() - timedelta(days=1))
    response = post(full, SUPPRESSIONS, {"email": "back@example.com", "reason": "complaint"})
    assert response.status_code == 201
    renewed = Suppression.objects.get()
    assert renewed.pk > old.pk and renewed.reason == "complaint" and renewed.expires_at is None
    assert response.json()["active"] is True


@pytest.mark.parametrize(
    "address",
    ["not-an-address", "ü@example.com", "Jane <jane@example.com>", "a@b@", "x@-bad-.example", "a\x00b@example.com"],
)
def test_an_invalid_address_is_400_invalid_address(full, address):
    response = post(full, SUPPRESSIONS, {"email": address})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_address" and list(body["fields"]) == ["email"]
    assert not Suppression.objects.exists()


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({}, "missing_fields", "email"),
        ({"email": ""}, "missing_fields", "email"),
        ({"email": 42}, "invalid_field", "email"),
        ({"email": "a@example.com", "reason": "bounced"}, "invalid_field", "reason"),
        ({"email": "a@example.com", "note": "nul\x00here"}, "invalid_field", "note"),
        ({"email": "a@example.com", "expires_at": "2001-01-01T00:00:00Z"}, "invalid_field", "expires_at"),
        ({"email": "a@example.com", "expires_at": "soon"}, "invalid_field", "expires_at"),
    ],
)
def test_other_bad_input_names_its_field(full, body, code, field):
    response = post(full, SUPPRESSIONS, body)
    assert response.status_code == 400
    assert response.json()["error"] == code
    assert field in response.json()["fields"]
    assert not Suppression.objects.exists()


def test_a_body_that_is_not_an_object_is_400(full):
    for raw in ("[]", '"a@example.com"', "{"):
        response = full.post(SUPPRESSIONS, raw, content_type="application/json")
        assert response.status_code == 400
        assert response.json()["error"] in {"invalid_field", "invalid_json"}


# --- one address in its forms: look up and lift --------------------------------------


def test_case_and_idn_forms_are_one_address_to_add_look_up_and_lift(full):
    created = post(full, SUPPRESSIONS, {"email": "Kim@Bücher.Example"})
    assert created.status_code == 201 and created.json()["email"] == f"kim@{BUECHER}"
    assert post(full, SUPPRESSIONS, {"email": f"KIM@{BUECHER.upper()}"}).status_code == 200

    for form in (f"kim@{BUECHER}", "KIM@BÜCHER.EXAMPLE", "kim@bücher.example"):
        found = full.get(detail(form))
        assert found.status_code == 200, form
        assert found.json()["email"] == f"kim@{BUECHER}"

    assert full.delete(detail("Kim@BÜCHER.example")).status_code == 204
    assert not Suppression.objects.exists()
    gone = full.get(detail(f"kim@{BUECHER}"))
    assert gone.status_code == 404 and gone.json()["error"] == "not_found"


def test_an_entry_stored_before_canonical_forms_is_found_and_lifted(full):
    Suppression.objects.create(email="old@bücher.example", reason="manual")
    assert full.get(detail(f"old@{BUECHER}")).json()["email"] == "old@bücher.example"
    assert post(full, SUPPRESSIONS, {"email": f"old@{BUECHER}"}).status_code == 200
    assert full.delete(detail(f"OLD@{BUECHER}")).status_code == 204
    assert not Suppression.objects.exists()


@pytest.mark.parametrize("address", ["nobody@example.com", "not an address", "nul%00@example.com", "import"])
def test_an_address_not_suppressed_is_404_to_look_up_and_to_lift(full, address):
    suppression_add(email="other@example.com", reason="manual")
    path = f"{SUPPRESSIONS}/{address}" if "%" in address else detail(address)
    looked_up = full.get(path)
    assert looked_up.status_code in {404, 405} and looked_up.json()["error"] in {"not_found", "method_not_allowed"}
    if address != "import":
        lifted = full.delete(path)
        assert lifted.status_code == 404 and lifted.json()["error"] == "not_found"
    assert Suppression.objects.count() == 1


def test_an_address_with_a_slash_is_reachable(full):
    post(full, SUPPRESSIONS, {"email": "a/b@example.com"})
    assert full.get(f"{SUPPRESSIONS}/a/b@example.com").json()["email"] == "a/b@example.com"
    assert full.delete(f"{SUPPRESSIONS}/a%2Fb@example.com").status_code == 204


def test_an_expired_entry_is_shown_inactive(reader):
    suppression_add(email="was@example.com", reason="manual", expires_at=timezone.now() - timedelta(hours=1))
    assert reader.get(detail("was@example.com")).json()["active"] is False


# --- list ----------------------------------------------------------------------------


def test_pages_are_newest_first_and_stay_stable_while_entries_arrive(full, reader):
    for n in range(1, 8):
        suppression_add(email=f"user{n}@example.com", reason="manual")

    first = reader.get(SUPPRESSIONS, {"limit": 3})
    assert emails_of(first) == ["user7@example.com", "user6@example.com", "user5@example.com"]
    # Entries added meanwhile (through the API too) come before the first page, never into the next ones.
    for n in range(8, 12):
        post(full, SUPPRESSIONS, {"email": f"user{n}@example.com"})
    second = reader.get(first.json()["next"])
    assert emails_of(second) == ["user4@example.com", "user3@example.com", "user2@example.com"]
    third = reader.get(second.json()["next"])
    assert emails_of(third) == ["user1@example.com"] and third.json()["next"] is None

    back = reader.get(second.json()["previous"])
    assert emails_of(back) == ["user7@example.com", "user6@example.com", "user5@example.com"]
    assert emails_of(reader.get(SUPPRESSIONS, {"limit": 2})) == ["user11@example.com", "user10@example.com"]


def test_filters_by_reason_date_search_prefix_and_activity(reader):
    now = timezone.now()
    suppression_add(email="ann@example.com", reason="hard_bounce")
    suppression_add(email="bob@example.org", reason="complaint")
    suppression_add(email="joann@bücher.example", reason="manual", expires_at=now - timedelta(minutes=1))
    suppression_add(email="annie@example.org", reason="manual", expires_at=now + timedelta(days=1))
    Suppression.objects.filter(email="ann@example.com").update(created_at=now - timedelta(days=10))

    def listed(**query):
        response = reader.get(SUPPRESSIONS, query)
        assert response.status_code == 200, response.json()
        return sorted(emails_of(response))

    assert listed(reason="manual") == ["annie@example.org", f"joann@{BUECHER}"]
    assert listed(created_before=(now - timedelta(days=1)).isoformat()) == ["ann@example.com"]
    assert "ann@example.com" not in listed(created_after=(now - timedelta(days=1)).isoformat())
    assert listed(search="ANN") == ["ann@example.com", "annie@example.org", f"joann@{BUECHER}"]
    assert listed(search="Bücher") == [f"joann@{BUECHER}"]
    assert listed(search="example.org") == ["annie@example.org", "bob@example.org"]
    assert listed(search="%") == [] and listed(search="_") == []  # LIKE wildcards are plain characters
    assert listed(prefix="Ann") == ["ann@example.com", "annie@example.org"]
    assert listed(active="true") == ["ann@example.com", "annie@example.org", "bob@example.org"]
    assert listed(active="false") == [f"joann@{BUECHER}"]
    assert listed(reason="manual", active="true", prefix="ann") == ["annie@example.org"]


@pytest.mark.parametrize(
    "query",
    [{"reason": "bounced"}, {"created_after": "yesterday"}, {"limit": "0"}, {"limit": "501"}, {"active": "maybe"},
     {"search": "a\x01b"}],
)
def test_a_bad_filter_is_400(reader, query):
    response = reader.get(SUPPRESSIONS, query)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_field"


@pytest.mark.parametrize("cursor", ["garbage", "cD1hYmM=", "cD05OTk5OTk5OTk5OTk5OTk5OTk5OTk5OQ=="])
def test_an_invalid_cursor_is_400_naming_it(reader, cursor):  # "p=abc", "p=9999999999999999999999"
    response = reader.get(SUPPRESSIONS, {"cursor": cursor})
    assert response.status_code == 400
    assert (response.json()["error"], list(response.json()["fields"])) == ("invalid_cursor", ["cursor"])


# --- what a suppression does to a send ---------------------------------------------------


def test_an_address_suppressed_through_the_api_makes_a_later_send_suppressed(full, api):
    assert post(full, SUPPRESSIONS, {"email": "Gone@Example.com", "reason": "complaint"}).status_code == 201

    sent = post(api, "/api/v1/emails", {"to": ["gone@example.com", "ok@example.com"], "subject": "s", "text": "t"})
    assert sent.status_code == 202
    assert {r["email"]: r["status"] for r in sent.json()["recipients"]} == {
        "gone@example.com": Status.SUPPRESSED, "ok@example.com": Status.QUEUED,
    }
    recipient = Recipient.objects.get(message__email_id=sent.json()["email_id"], email="gone@example.com")
    assert recipient.status == Status.SUPPRESSED

    assert full.delete(detail("GONE@example.com")).status_code == 204
    again = post(api, "/api/v1/emails", {"to": "gone@example.com", "subject": "s", "text": "t"})
    assert again.json()["status"] == Status.QUEUED
