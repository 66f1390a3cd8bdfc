"""Batch sends, scheduled sends (send_at), cancel, the scheduled release, and
Idempotency-Key (SPEC §4, §5.5).

Plain `db` tests: nothing commits, so nothing is enqueued. What is asserted is
what a caller sees: the API's answers, and the rows stored.
"""

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from emailsvc.delivery.scheduling import scheduled_publish
from emailsvc.models import (
    ApiKey,
    Attachment,
    Group,
    IdempotencyKey,
    Message,
    Recipient,
    Status,
)
from emailsvc.suppressions.services import suppression_add
from tests.conftest import deliver_now

EMAILS = "/api/v1/emails"
BATCH = "/api/v1/emails/batch"
VALID = {"to": "jane@example.com", "subject": "Hello", "text": "Hi"}


def post(client, url, body, *, idempotency_key=None):
    extra = {} if idempotency_key is None else {"HTTP_IDEMPOTENCY_KEY": idempotency_key}
    payload = body if isinstance(body, str) else json.dumps(body)
    return client.post(url, payload, content_type="application/json", **extra)


def cancel(client, email_id, way="post"):
    """Cancel by `POST /emails/{id}/cancel` or, the same, `DELETE /emails/{id}`."""
    if way == "delete":
        return client.delete(f"{EMAILS}/{email_id}")
    return client.post(f"{EMAILS}/{email_id}/cancel")


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def recipient_statuses(email_id: str) -> list[str]:
    return list(Recipient.objects.filter(message__email_id=email_id).order_by("id").values_list("status", flat=True))


@pytest.fixture(autouse=True)
def _policy(settings):
    settings.ALLOWED_FROM_DOMAINS = ["example.com"]
    settings.ALLOWED_REPLY_TO_DOMAINS = []
    settings.ALLOWED_RECIPIENT_DOMAINS = []
    settings.MAX_RECIPIENTS = 50
    settings.MAX_BATCH_SIZE = 500
    settings.SEND_AT_MAX_DAYS = 30
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 24


# --- send_at ------------------------------------------------------------------


def test_future_send_at_answers_scheduled_with_scheduled_recipients(api):
    send_at = timezone.now() + timedelta(hours=2)
    response = post(api, EMAILS, {**VALID, "cc": "bob@example.com", "send_at": iso(send_at)})

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "scheduled"
    assert body["recipients"] == [
        {"email": "jane@example.com", "status": "scheduled"},
        {"email": "bob@example.com", "status": "scheduled"},
    ]
    message = Message.objects.get(email_id=body["email_id"])
    assert message.status == Status.SCHEDULED
    assert abs(message.send_at - send_at) < timedelta(seconds=1)
    assert recipient_statuses(body["email_id"]) == ["scheduled", "scheduled"]
    detail = api.get(f"{EMAILS}/{body['email_id']}").json()
    assert detail["status"] == "scheduled"
    assert [r["status"] for r in detail["recipients"]] == ["scheduled", "scheduled"]


@pytest.mark.parametrize("ago", [timedelta(seconds=0), timedelta(minutes=5), timedelta(days=400)])
def test_past_or_present_send_at_is_queued_at_once(api, ago):
    response = post(api, EMAILS, {**VALID, "send_at": iso(timezone.now() - ago)})

    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert response.json()["recipients"] == [{"email": "jane@example.com", "status": "queued"}]
    assert Message.objects.get().status == Status.QUEUED


def test_null_send_at_is_queued(api):
    response = post(api, EMAILS, {**VALID, "send_at": None})
    assert response.status_code == 202
    assert response.json()["status"] == "queued"


def test_send_at_without_a_zone_is_utc(api):
    moment = (timezone.now() + timedelta(days=1)).astimezone(UTC).replace(microsecond=0)
    naive = moment.replace(tzinfo=None).isoformat()  # e.g. 2026-05-02T10:00:00
    response = post(api, EMAILS, {**VALID, "send_at": naive})

    assert response.status_code == 202
    assert response.json()["status"] == "scheduled"
    assert Message.objects.get().send_at == moment


def test_send_at_with_an_offset_is_that_moment(api):
    moment = (timezone.now() + timedelta(days=1)).astimezone(UTC).replace(microsecond=0)
    with_offset = moment.astimezone(timezone.get_fixed_timezone(120)).isoformat()  # +02:00
    response = post(api, EMAILS, {**VALID, "send_at": with_offset})

    assert response.status_code == 202
    assert Message.objects.get().send_at == moment


def test_send_at_in_the_past_by_its_offset_is_queued(api):
    """10:00+05:00 is 05:00Z: one hour in the past when it is 06:00Z, though '10:00' looks future."""
    now = timezone.now().astimezone(UTC)
    past = (now - timedelta(hours=1)).astimezone(timezone.get_fixed_timezone(300)).isoformat()
    assert post(api, EMAILS, {**VALID, "send_at": past}).json()["status"] == "queued"


@pytest.mark.parametrize(
    "value",
    ["tomorrow", "2026-13-01T09:00:00Z", "2026-02-30T09:00:00Z", "", "12:00", 1767225600, True, ["2030-01-01T00:00:00Z"],
     {"at": "2030-01-01"}, "9999-12-31T23:59:59-01:00"],
)
def test_unparsable_send_at_is_400_invalid_send_at(api, value):
    response = post(api, EMAILS, {**VALID, "send_at": value})

    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_send_at"
    assert "send_at" in body["fields"]
    assert not Message.objects.exists()


def test_send_at_more_than_30_days_ahead_is_400_invalid_send_at(api):
    response = post(api, EMAILS, {**VALID, "send_at": iso(timezone.now() + timedelta(days=30, minutes=5))})

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_send_at"
    assert "send_at" in response.json()["fields"]
    assert not Message.objects.exists()


def test_send_at_just_under_30_days_ahead_is_scheduled(api):
    response = post(api, EMAILS, {**VALID, "send_at": iso(timezone.now() + timedelta(days=29, hours=23))})
    assert response.status_code == 202
    assert response.json()["status"] == "scheduled"


def test_send_at_limit_follows_the_setting(api, settings):
    settings.SEND_AT_MAX_DAYS = 1
    too_far = post(api, EMAILS, {**VALID, "send_at": iso(timezone.now() + timedelta(days=2))})
    assert too_far.status_code == 400
    assert too_far.json()["error"] == "invalid_send_at"


def test_email_id_batch_is_reserved(api):
    response = post(api, EMAILS, {**VALID, "email_id": "batch"})

    assert response.status_code == 400
    assert "email_id" in response.json()["fields"]
    assert not Message.objects.exists()


# --- POST /emails/batch -------------------------------------------------------


def test_batch_of_500_with_3_invalid_items_accepts_497_and_reports_each_error(api, django_assert_max_num_queries):
    emails = [{"to": f"user{i}@example.com", "subject": f"Item {i}", "text": "Hi", "email_id": f"b500-{i}"} for i in range(500)]
    emails[7]["to"] = "not-an-address"
    del emails[250]["subject"]
    emails[499]["from"] = "sender@elsewhere.test"

    with django_assert_max_num_queries(40) as captured:
        response = post(api, BATCH, {"emails": emails})
    print(f"\nPOST /emails/batch with 500 items took {len(captured)} queries")

    assert response.status_code == 200
    body = response.json()
    bad = {7: "invalid_address", 250: "missing_fields", 499: "from_domain_not_allowed"}
    assert [(e["index"], e["error"]) for e in body["errors"]] == list(bad.items())
    for error in body["errors"]:
        assert error["detail"]
    assert "to" in body["errors"][0]["fields"]
    assert "subject" in body["errors"][1]["fields"]
    assert "from" in body["errors"][2]["fields"]

    good = [i for i in range(500) if i not in bad]
    assert len(body["data"]) == 497
    assert [d["index"] for d in body["data"]] == good
    assert [d["email_id"] for d in body["data"]] == [f"b500-{i}" for i in good]
    assert {d["status"] for d in body["data"]} == {"queued"}
    assert {d["group_id"] for d in body["data"]} == {None}

    assert Message.objects.count() == 497
    assert set(Message.objects.values_list("email_id", flat=True)) == {f"b500-{i}" for i in good}
    assert Recipient.objects.count() == 497
    stored = Message.objects.get(email_id="b500-498")
    assert (stored.subject, stored.recipients.get().email, stored.status) == ("Item 498", "user498@example.com", "queued")


def test_batch_of_500_with_groups_cc_attachments_suppressions_and_schedules_stays_bulk(api, django_assert_max_num_queries):
    suppression_add(email="user3@example.com", reason="hard_bounce")
    later = iso(timezone.now() + timedelta(hours=1))
    attachment = {"filename": "note.txt", "content": base64.b64encode(b"hello").decode()}
    emails = [
        {
            "to": f"user{i}@example.com", "cc": [f"cc{i}@example.com"], "subject": "S", "html": "<p>H</p>",
            "group_id": f"campaign-{i % 5}", "attachments": [attachment], "tags": ["bulk"], "metadata": {"i": i},
            **({"send_at": later} if i % 2 else {}),
        }
        for i in range(500)
    ]
    # PostgreSQL inserts each table in one statement. Django splits SQLite bulk
    # inserts into chunks of at most 999 parameters (features.max_query_params),
    # so 1000 recipient rows alone take ~18 INSERTs there: still per chunk, not per item.
    limit = 60 if connection.vendor == "sqlite" else 15
    with django_assert_max_num_queries(limit) as captured:
        response = post(api, BATCH, {"emails": emails})
    print(f"\nPOST /emails/batch with 500 rich items took {len(captured)} queries")

    body = response.json()
    assert body["errors"] == []
    assert len(body["data"]) == 500
    assert body["data"][3]["status"] == "scheduled"  # user3 is suppressed, cc3 is not
    assert [d["status"] for d in body["data"][:3]] == ["queued", "scheduled", "queued"]
    assert Group.objects.count() == 5
    assert (Message.objects.count(), Recipient.objects.count(), Attachment.objects.count()) == (500, 1000, 500)
    assert recipient_statuses(body["data"][3]["email_id"]) == ["suppressed", "scheduled"]


def test_batch_query_count_does_not_grow_per_item(api, django_assert_max_num_queries):
    """Storing is bulk: 10 items and 200 items differ by a few bulk-insert chunks at most."""
    def items(n, prefix):
        return [{"to": f"{prefix}{i}@example.com", "cc": f"cc{prefix}{i}@example.com", "subject": "S", "text": "T"} for i in range(n)]

    with django_assert_max_num_queries(40) as small:
        assert post(api, BATCH, {"emails": items(10, "a")}).status_code == 200
    with django_assert_max_num_queries(40) as large:
        assert post(api, BATCH, {"emails": items(200, "b")}).status_code == 200
    assert len(large) - len(small) < 20
    assert Message.objects.count() == 210
    assert Recipient.objects.count() == 420


def test_batch_of_501_is_400_too_many_emails_and_stores_nothing(api):
    response = post(api, BATCH, {"emails": [dict(VALID) for _ in range(501)]})

    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "too_many_emails"
    assert "emails" in body["fields"]
    assert not Message.objects.exists()


def test_batch_size_limit_follows_the_setting(api, settings):
    settings.MAX_BATCH_SIZE = 3
    assert post(api, BATCH, {"emails": [dict(VALID)] * 3}).status_code == 200
    response = post(api, BATCH, {"emails": [dict(VALID)] * 4})
    assert response.status_code == 400
    assert response.json()["error"] == "too_many_emails"
    assert Message.objects.count() == 3


def test_batch_without_emails_is_400_missing_fields(api):
    response = post(api, BATCH, {})
    assert response.status_code == 400
    assert response.json()["error"] == "missing_fields"
    assert "emails" in response.json()["fields"]


@pytest.mark.parametrize("body", [{"emails": []}, {"emails": None}, {"emails": "x"}, {"emails": {"to": "a@example.com"}}, [VALID], "null"])
def test_batch_with_empty_or_malformed_emails_is_400(api, body):
    response = post(api, BATCH, body)
    assert response.status_code == 400
    assert response.json()["error"] in {"missing_fields", "invalid_field"}
    assert not Message.objects.exists()


def test_batch_invalid_json_is_400_invalid_json(api):
    response = post(api, BATCH, '{"emails": [')
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"


def test_batch_items_that_are_not_objects_fail_alone(api):
    response = post(api, BATCH, {"emails": ["jane@example.com", VALID, 42, [VALID], VALID]})

    assert response.status_code == 200
    body = response.json()
    assert [(e["index"], e["error"]) for e in body["errors"]] == [(0, "invalid_field"), (2, "invalid_field"), (3, "invalid_field")]
    assert [d["index"] for d in body["data"]] == [1, 4]
    assert Message.objects.count() == 2


def test_batch_null_item_fails_alone(api):
    response = post(api, BATCH, {"emails": [VALID, None, VALID]})

    assert response.status_code == 200, response.json()
    body = response.json()
    assert [e["index"] for e in body["errors"]] == [1]
    assert body["errors"][0]["error"] in {"invalid_field", "missing_fields"}
    assert [d["index"] for d in body["data"]] == [0, 2]
    assert Message.objects.count() == 2


def test_batch_item_with_unknown_field_fails_alone(api):
    response = post(api, BATCH, {"emails": [{**VALID, "colour": "red"}, VALID]})
    body = response.json()
    assert [(e["index"], e["error"]) for e in body["errors"]] == [(0, "invalid_field")]
    assert "colour" in body["errors"][0]["fields"]
    assert [d["index"] for d in body["data"]] == [1]


def test_batch_reports_every_validation_code_per_item(api, settings):
    settings.ALLOWED_REPLY_TO_DOMAINS = ["example.com"]
    settings.ALLOWED_RECIPIENT_DOMAINS = ["example.com", "partner.test"]
    settings.MAX_RECIPIENTS = 2
    emails = [
        {**VALID, "headers": {"Bcc": "spy@example.com"}},                       # 0 invalid_header
        {**VALID, "attachments": [{"filename": "a.txt", "content": "%%%"}]},     # 1 invalid_attachment
        {**VALID, "reply_to": "r@elsewhere.test"},                               # 2 reply_to_domain_not_allowed
        {**VALID, "to": "x@outside.test"},                                        # 3 recipient_domain_not_allowed
        {**VALID, "to": ["a@example.com", "b@example.com", "c@example.com"]},  # 4 too_many_recipients
        {**VALID, "send_at": "soon"},                                            # 5 invalid_send_at
        {**VALID, "email_id": "batch"},                                          # 6 reserved id
        {**VALID, "to": "ok@partner.test"},                                      # 7 fine
    ]
    body = post(api, BATCH, {"emails": emails}).json()

    assert [(e["index"], e["error"]) for e in body["errors"]] == [
        (0, "invalid_header"),
        (1, "invalid_attachment"),
        (2, "reply_to_domain_not_allowed"),
        (3, "recipient_domain_not_allowed"),
        (4, "too_many_recipients"),
        (5, "invalid_send_at"),
        (6, "invalid_field"),
    ]
    assert "send_at" in body["errors"][5]["fields"]
    assert "email_id" in body["errors"][6]["fields"]
    assert [d["index"] for d in body["data"]] == [7]
    assert Message.objects.count() == 1


def test_batch_item_too_large_fails_alone_with_payload_too_large(api, settings):
    settings.MAX_MESSAGE_BYTES = 40_000
    big = base64.b64encode(b"x" * 60_000).decode()
    response = post(api, BATCH, {"emails": [{**VALID, "attachments": [{"filename": "big.bin", "content": big}]}, VALID]})

    assert response.status_code == 200
    body = response.json()
    assert [(e["index"], e["error"]) for e in body["errors"]] == [(0, "payload_too_large")]
    assert [d["index"] for d in body["data"]] == [1]


def test_duplicate_email_id_within_batch_keeps_the_first_and_reports_the_rest(api):
    emails = [
        {**VALID, "email_id": "order-1", "subject": "first"},
        {**VALID, "email_id": "order-2"},
        {**VALID, "email_id": "order-1", "subject": "second"},
        {**VALID, "email_id": "order-1", "subject": "third"},
    ]
    body = post(api, BATCH, {"emails": emails}).json()

    assert [(d["index"], d["email_id"]) for d in body["data"]] == [(0, "order-1"), (1, "order-2")]
    assert [(e["index"], e["error"]) for e in body["errors"]] == [(2, "duplicate_email_id"), (3, "duplicate_email_id")]
    assert "order-1" in body["errors"][0]["detail"]
    assert Message.objects.get(email_id="order-1").subject == "first"
    assert Message.objects.count() == 2


def test_batch_email_id_already_stored_is_duplicate_email_id(api):
    assert post(api, EMAILS, {**VALID, "email_id": "welcome-7", "subject": "original"}).status_code == 202

    body = post(api, BATCH, {"emails": [{**VALID, "email_id": "welcome-7", "subject": "again"}, {**VALID, "email_id": "welcome-8"}]}).json()

    assert [(e["index"], e["error"]) for e in body["errors"]] == [(0, "duplicate_email_id")]
    assert [(d["index"], d["email_id"]) for d in body["data"]] == [(1, "welcome-8")]
    assert Message.objects.get(email_id="welcome-7").subject == "original"
    assert Message.objects.count() == 2


def test_an_invalid_item_does_not_take_its_email_id(api):
    body = post(api, BATCH, {"emails": [{**VALID, "email_id": "inv-1", "to": "bad"}, {**VALID, "email_id": "inv-1"}]}).json()

    assert [(e["index"], e["error"]) for e in body["errors"]] == [(0, "invalid_address")]
    assert [(d["index"], d["email_id"]) for d in body["data"]] == [(1, "inv-1")]


def test_batch_marks_suppressed_recipients_suppressed(api):
    suppression_add(email="gone@example.com", reason="hard_bounce")
    emails = [
        {**VALID, "to": "Gone@Example.com"},                             # only a suppressed recipient
        {**VALID, "to": ["gone@example.com", "here@example.com"]},       # one of two
        VALID,
    ]
    body = post(api, BATCH, {"emails": emails}).json()

    assert body["errors"] == []
    assert [d["status"] for d in body["data"]] == ["suppressed", "queued", "queued"]
    first, second, _ = (d["email_id"] for d in body["data"])
    assert recipient_statuses(first) == ["suppressed"]
    assert recipient_statuses(second) == ["suppressed", "queued"]
    assert Message.objects.get(email_id=first).status == Status.SUPPRESSED
    detail = api.get(f"{EMAILS}/{first}").json()
    assert detail["recipients"][0]["status"] == "suppressed"
    assert "hard_bounce" in detail["recipients"][0]["failed_reason"]


def test_batch_creates_each_group_once(api):
    Group.objects.create(id="existing")
    emails = [
        {**VALID, "group_id": "invites-may"},
        {**VALID, "group_id": "invites-may"},
        {**VALID, "group_id": "existing"},
        {**VALID, "group_id": "invites-may"},
        VALID,
        {**VALID, "group_id": "ghost", "to": "not-an-address"},
    ]
    body = post(api, BATCH, {"emails": emails}).json()

    assert [(e["index"], e["error"]) for e in body["errors"]] == [(5, "invalid_address")]
    assert [d["group_id"] for d in body["data"]] == ["invites-may", "invites-may", "existing", "invites-may", None]
    assert sorted(Group.objects.values_list("id", flat=True)) == ["existing", "invites-may"]
    assert Message.objects.filter(group_id="invites-may").count() == 3
    listed = api.get("/api/v1/groups/invites-may/emails").json()
    assert len(listed["results"]) == 3


def test_batch_stores_attachments_of_each_item(api):
    pdf = b"%PDF-1.4 fake"
    emails = [
        {**VALID, "attachments": [{"filename": "invoice.pdf", "content": base64.b64encode(pdf).decode()}]},
        {**VALID, "attachments": [
            {"filename": "a.txt", "content": base64.b64encode(b"aaa").decode(), "content_type": "text/plain"},
            {"filename": "b.csv", "content": base64.b64encode(b"b,c\n").decode()},
        ]},
        VALID,
    ]
    body = post(api, BATCH, {"emails": emails}).json()

    assert body["errors"] == []
    first, second, third = (d["email_id"] for d in body["data"])
    stored = Attachment.objects.get(message__email_id=first)
    assert (stored.filename, stored.content_type, bytes(stored.content), stored.size) == ("invoice.pdf", "application/pdf", pdf, len(pdf))
    assert api.get(f"{EMAILS}/{second}").json()["attachments"] == [
        {"filename": "a.txt", "content_type": "text/plain", "size": 3},
        {"filename": "b.csv", "content_type": "text/csv", "size": 4},
    ]
    assert not Attachment.objects.filter(message__email_id=third).exists()


def test_batch_items_with_future_send_at_are_scheduled(api):
    later = iso(timezone.now() + timedelta(hours=1))
    emails = [{**VALID, "send_at": later}, VALID, {**VALID, "send_at": iso(timezone.now() - timedelta(hours=1))}]
    body = post(api, BATCH, {"emails": emails}).json()

    assert [d["status"] for d in body["data"]] == ["scheduled", "queued", "queued"]
    assert recipient_statuses(body["data"][0]["email_id"]) == ["scheduled"]
    assert recipient_statuses(body["data"][1]["email_id"]) == ["queued"]


UNSTORABLE = {
    "nul-in-metadata": {"metadata": {"note": "a\u0000b"}},
    "nul-in-metadata-key": {"metadata": {"a\u0000b": 1}},
    "300-char-recipient-name": {"to": {"email": "long@example.com", "name": "N" * 300}},
    "300-char-from-name-in-address": {"from": f"{'F' * 300} <noreply@example.com>"},
}


@pytest.mark.parametrize("fields", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_batch_item_the_database_cannot_store_fails_alone(api, fields):
    """Input that passes validation but that PostgreSQL refuses must not fail the whole batch."""
    response = post(api, BATCH, {"emails": [VALID, {**VALID, **fields}, VALID]})

    assert response.status_code == 200
    body = response.json()
    assert [d["index"] for d in body["data"]][:1] == [0]
    assert [d["index"] for d in body["data"]][-1:] == [2]
    assert sorted([d["index"] for d in body["data"]] + [e["index"] for e in body["errors"]]) == [0, 1, 2]
    assert Message.objects.count() == len(body["data"])


@pytest.mark.parametrize("fields", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_single_send_the_database_cannot_store_is_a_clean_answer_not_500(api, fields):
    response = post(api, EMAILS, {**VALID, **fields})
    assert response.status_code in (202, 400)


def test_read_only_key_may_not_send_a_batch_403(make_client):
    response = post(make_client(ApiKey.Permission.READ_ONLY), BATCH, {"emails": [VALID]})
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert not Message.objects.exists()


def test_batch_without_key_is_401(db, client):
    assert post(client, BATCH, {"emails": [VALID]}).status_code == 401


# --- cancel ------------------------------------------------------------------


def _send(api, **fields) -> str:
    response = post(api, EMAILS, {**VALID, **fields})
    assert response.status_code == 202, response.json()
    return response.json()["email_id"]


@pytest.fixture(params=["post", "delete"])
def way(request):
    """Each cancel case both ways: POST …/cancel and DELETE /emails/{id} answer alike."""
    return request.param


def test_cancel_scheduled_email_answers_cancelled_and_get_shows_it(api, way):
    email_id = _send(api, cc="bob@example.com", send_at=iso(timezone.now() + timedelta(hours=3)))

    response = cancel(api, email_id, way)

    assert response.status_code == 200
    assert response.json() == {"email_id": email_id, "status": "cancelled"}
    assert recipient_statuses(email_id) == ["cancelled", "cancelled"]
    detail = api.get(f"{EMAILS}/{email_id}").json()
    assert detail["status"] == "cancelled"
    assert [r["status"] for r in detail["recipients"]] == ["cancelled", "cancelled"]


def test_cancel_queued_email(api, way):
    email_id = _send(api)
    response = cancel(api, email_id, way)

    assert response.status_code == 200
    assert response.json() == {"email_id": email_id, "status": "cancelled"}
    assert Message.objects.get(email_id=email_id).status == Status.CANCELLED
    assert recipient_statuses(email_id) == ["cancelled"]


def test_cancel_keeps_a_suppressed_recipient_suppressed(api, way):
    suppression_add(email="gone@example.com", reason="complaint")
    email_id = _send(api, to=["gone@example.com", "here@example.com"])

    assert cancel(api, email_id, way).json()["status"] == "cancelled"
    assert recipient_statuses(email_id) == ["suppressed", "cancelled"]


def test_second_cancel_is_409_not_cancellable(api, way):
    email_id = _send(api, send_at=iso(timezone.now() + timedelta(hours=1)))
    assert cancel(api, email_id, way).status_code == 200

    response = cancel(api, email_id, way)

    assert response.status_code == 409
    assert response.json()["error"] == "not_cancellable"
    assert Message.objects.get(email_id=email_id).status == Status.CANCELLED


@pytest.mark.parametrize("state", [Status.SENDING, Status.SENT, Status.DELIVERED, Status.FAILED, Status.BOUNCED])
def test_cancel_once_sending_began_or_ended_is_409_not_cancellable(api, state, way):
    email_id = _send(api)
    # A worker claimed it (sending) or it ended (done).
    Message.objects.filter(email_id=email_id).update(status=state, state="sending" if state == Status.SENDING else "done")
    Recipient.objects.filter(message__email_id=email_id).update(status=state)

    response = cancel(api, email_id, way)

    assert response.status_code == 409
    assert response.json()["error"] == "not_cancellable"
    assert Message.objects.get(email_id=email_id).status == state
    assert recipient_statuses(email_id) == [state]


def test_cancel_of_a_fully_suppressed_email_is_409(api, way):
    suppression_add(email="gone@example.com", reason="manual")
    email_id = _send(api, to="gone@example.com")
    response = cancel(api, email_id, way)
    assert response.status_code == 409
    assert response.json()["error"] == "not_cancellable"


def test_cancel_unknown_email_is_404_not_found(api, way):
    response = cancel(api, "no-such-email", way)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_read_only_key_may_not_cancel_403(api, make_client, way):
    email_id = _send(api, send_at=iso(timezone.now() + timedelta(hours=1)))

    response = cancel(make_client(ApiKey.Permission.READ_ONLY), email_id, way)

    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert Message.objects.get(email_id=email_id).status == Status.SCHEDULED
    assert recipient_statuses(email_id) == ["scheduled"]


def test_a_read_only_key_still_reads_the_email_that_delete_would_cancel(api, make_client):
    email_id = _send(api, send_at=iso(timezone.now() + timedelta(hours=1)))
    reader = make_client(ApiKey.Permission.READ_ONLY)

    assert reader.get(f"{EMAILS}/{email_id}").json()["status"] == "scheduled"
    response = reader.put(f"{EMAILS}/{email_id}", VALID, format="json")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


def test_the_schema_lists_delete_beside_post_cancel(client, db):
    paths = client.get("/api/schema/?format=json").json()["paths"]
    delete = paths["/api/v1/emails/{email_id}"]["delete"]
    post = paths["/api/v1/emails/{email_id}/cancel"]["post"]

    assert delete["operationId"] == "delete_email" and "sending" in delete["description"]
    assert delete["responses"].keys() == post["responses"].keys() >= {"200", "404", "409"}
    assert delete["responses"]["200"] == post["responses"]["200"]


# --- scheduled release --------------------------------------------------------


def _make_due(email_id: str) -> None:
    Message.objects.filter(email_id=email_id).update(
        send_at=timezone.now() - timedelta(seconds=1), next_attempt_at=timezone.now() - timedelta(seconds=1)
    )


@pytest.fixture
def nothing_published_yet():
    from core.redisclient import redis_client
    from emailsvc.delivery.scheduling import PUBLISHED_UNTIL_KEY

    redis_client().delete(PUBLISHED_UNTIL_KEY)


def test_scheduled_publish_covers_emails_coming_due_within_the_horizon_once(api, settings, nothing_published_yet):
    settings.SCHEDULED_HORIZON_SECONDS = 120
    soon = _send(api, send_at=iso(timezone.now() + timedelta(seconds=60)), cc="bob@example.com")
    later = _send(api, send_at=iso(timezone.now() + timedelta(hours=1)))

    assert scheduled_publish() == 1
    assert scheduled_publish() == 0  # the window it covered is not published again
    for email_id in (soon, later):
        assert Message.objects.get(email_id=email_id).status == Status.SCHEDULED
        assert set(recipient_statuses(email_id)) == {"scheduled"}


def test_a_due_scheduled_email_is_sent_and_its_suppressed_recipient_stays_suppressed(api):
    suppression_add(email="gone@example.com", reason="hard_bounce")
    email_id = _send(api, to=["gone@example.com", "here@example.com"], send_at=iso(timezone.now() + timedelta(hours=1)))
    assert Message.objects.get(email_id=email_id).status == Status.SCHEDULED
    assert deliver_now() == 0
    _make_due(email_id)

    assert deliver_now() == 1
    assert recipient_statuses(email_id) == ["suppressed", "sent"]
    assert Message.objects.get(email_id=email_id).status == Status.SENT


def test_cancelled_scheduled_email_is_never_sent(api, way):
    email_id = _send(api, send_at=iso(timezone.now() + timedelta(hours=1)))
    assert cancel(api, email_id, way).status_code == 200
    _make_due(email_id)

    assert deliver_now() == 0
    assert Message.objects.get(email_id=email_id).status == Status.CANCELLED
    assert recipient_statuses(email_id) == ["cancelled"]


def test_a_due_scheduled_email_can_be_cancelled_until_a_worker_claims_it(api, way):
    email_id = _send(api, send_at=iso(timezone.now() + timedelta(hours=1)))
    _make_due(email_id)

    assert cancel(api, email_id, way).json() == {"email_id": email_id, "status": "cancelled"}
    assert deliver_now() == 0


# --- Idempotency-Key ----------------------------------------------------------


def test_same_idempotency_key_and_body_answer_the_first_response_and_store_once(api):
    first = post(api, EMAILS, VALID, idempotency_key="req-1")
    again = post(api, EMAILS, VALID, idempotency_key="req-1")

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert Message.objects.count() == 1
    assert Message.objects.get().email_id == first.json()["email_id"]


def test_same_idempotency_key_with_reordered_json_is_the_same_request(api):
    first = post(api, EMAILS, '{"to": "jane@example.com", "subject": "Hello", "text": "Hi"}', idempotency_key="req-2")
    again = post(api, EMAILS, '{"text":"Hi","subject":"Hello","to":"jane@example.com"}', idempotency_key="req-2")

    assert again.status_code == 202
    assert again.json()["email_id"] == first.json()["email_id"]
    assert Message.objects.count() == 1


def test_idempotent_replay_of_a_scheduled_email_answers_scheduled(api):
    body = {**VALID, "send_at": iso(timezone.now() + timedelta(hours=1))}
    first = post(api, EMAILS, body, idempotency_key="sched-1")
    again = post(api, EMAILS, body, idempotency_key="sched-1")
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.json()["status"] == "scheduled"
    assert Message.objects.count() == 1


def test_same_idempotency_key_with_another_body_is_409_idempotency_key_reused(api):
    assert post(api, EMAILS, VALID, idempotency_key="req-3").status_code == 202

    response = post(api, EMAILS, {**VALID, "subject": "Changed"}, idempotency_key="req-3")

    assert response.status_code == 409
    assert response.json()["error"] == "idempotency_key_reused"
    assert Message.objects.count() == 1
    assert Message.objects.get().subject == "Hello"


def test_idempotency_keys_are_per_api_key(make_client):
    alice, bob = make_client(), make_client()

    first = post(alice, EMAILS, VALID, idempotency_key="shared")
    second = post(bob, EMAILS, VALID, idempotency_key="shared")
    other_body = post(bob, EMAILS, {**VALID, "subject": "x"}, idempotency_key="shared")

    assert first.status_code == second.status_code == 202
    assert first.json()["email_id"] != second.json()["email_id"]
    assert other_body.status_code == 409  # bob's own key now remembers bob's first body
    assert Message.objects.count() == 2


def test_failed_request_is_not_remembered_and_may_be_retried_with_the_same_key(api):
    broken = post(api, EMAILS, {"to": "not-an-address", "subject": "Hello", "text": "Hi"}, idempotency_key="retry-me")
    assert broken.status_code == 400
    assert broken.json()["error"] == "invalid_address"
    assert not IdempotencyKey.objects.exists()

    fixed = post(api, EMAILS, VALID, idempotency_key="retry-me")
    assert fixed.status_code == 202

    replay = post(api, EMAILS, VALID, idempotency_key="retry-me")
    assert replay.json() == fixed.json()
    assert Message.objects.count() == 1


def test_conflicting_email_id_is_not_remembered_under_the_key(api):
    _send(api, email_id="taken")
    conflict = post(api, EMAILS, {**VALID, "email_id": "taken"}, idempotency_key="k-dup")
    assert conflict.status_code == 409
    assert conflict.json()["error"] == "duplicate_email_id"

    assert post(api, EMAILS, {**VALID, "email_id": "free"}, idempotency_key="k-dup").status_code == 202


def test_idempotency_key_over_255_characters_is_400(api):
    response = post(api, EMAILS, VALID, idempotency_key="k" * 256)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_idempotency_key"
    assert not Message.objects.exists()
    assert post(api, EMAILS, VALID, idempotency_key="k" * 255).status_code == 202


def test_expired_idempotency_key_is_forgotten(api, settings):
    first = post(api, EMAILS, VALID, idempotency_key="old")
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS, minutes=1))

    same_body = post(api, EMAILS, VALID, idempotency_key="old")
    assert same_body.status_code == 202
    assert same_body.json()["email_id"] != first.json()["email_id"]
    assert Message.objects.count() == 2

    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS, minutes=1))
    other_body = post(api, EMAILS, {**VALID, "subject": "new"}, idempotency_key="old")
    assert other_body.status_code == 202
    assert Message.objects.count() == 3
    assert IdempotencyKey.objects.count() == 1


def test_unexpired_idempotency_key_is_still_remembered(api, settings):
    first = post(api, EMAILS, VALID, idempotency_key="young")
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS) + timedelta(minutes=5))
    assert post(api, EMAILS, VALID, idempotency_key="young").json() == first.json()
    assert Message.objects.count() == 1


def test_batch_with_same_idempotency_key_and_body_answers_the_first_response(api):
    body = {"emails": [VALID, {"to": "bad"}, {**VALID, "to": "bob@example.com"}]}
    first = post(api, BATCH, body, idempotency_key="batch-1")
    again = post(api, BATCH, body, idempotency_key="batch-1")

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert len(first.json()["data"]) == 2
    assert Message.objects.count() == 2


def test_batch_answer_echoing_a_lone_surrogate_or_nul_is_remembered_and_replayed_the_same(api):
    """An item refused for a header name holding a lone UTF-16 surrogate (valid JSON
    escape, not Unicode) or a NUL: its error names the value, and the answer, kept
    for the Idempotency-Key, shows those characters escaped (PostgreSQL keeps no such text)."""
    raw = '{"emails": [{"to": "a@example.com", "subject": "s", "text": "t", "headers": {"X-\\udbee\\u0000": "v"}}]}'
    first = api.post(BATCH, raw, content_type="application/json", HTTP_IDEMPOTENCY_KEY="surrogate")
    again = api.post(BATCH, raw, content_type="application/json", HTTP_IDEMPOTENCY_KEY="surrogate")

    assert first.status_code == again.status_code == 200, first.content
    assert again.json() == first.json()
    assert first.json()["errors"][0]["error"] == "invalid_header"
    assert "\\u0000" in first.json()["errors"][0]["detail"]  # the NUL, escaped


def test_batch_with_same_idempotency_key_and_another_body_is_409(api):
    assert post(api, BATCH, {"emails": [VALID]}, idempotency_key="batch-2").status_code == 200
    response = post(api, BATCH, {"emails": [VALID, VALID]}, idempotency_key="batch-2")
    assert response.status_code == 409
    assert response.json()["error"] == "idempotency_key_reused"
    assert Message.objects.count() == 1


def test_rejected_batch_is_not_remembered(api, settings):
    settings.MAX_BATCH_SIZE = 2
    assert post(api, BATCH, {"emails": [VALID] * 3}, idempotency_key="batch-3").status_code == 400
    assert post(api, BATCH, {"emails": [VALID] * 2}, idempotency_key="batch-3").status_code == 200
    assert Message.objects.count() == 2


def test_idempotency_key_used_on_another_endpoint_is_409(api):
    assert post(api, EMAILS, VALID, idempotency_key="cross").status_code == 202
    response = post(api, BATCH, {"emails": [VALID]}, idempotency_key="cross")
    assert response.status_code == 409
    assert response.json()["error"] == "idempotency_key_reused"
    assert Message.objects.count() == 1


def test_batch_idempotency_key_over_255_characters_is_400(api):
    response = post(api, BATCH, {"emails": [VALID]}, idempotency_key="b" * 256)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_idempotency_key"
    assert not Message.objects.exists()
