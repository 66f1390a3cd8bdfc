"""Every raw statement of core.sql and core.sql_engine, held to what the ORM
reads or writes on the same rows. The suite runs on PostgreSQL (DATABASE_URL)
and on SQLite: a PostgreSQL statement is compared there, its fallback here.

rows_insert stores what Django's bulk_create stores: every column, whatever
the value's type (the plain ones go into the JSON document as they are,
anything else is prepared by its field)."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy

from core import sql, sql_engine
from core.sql import rows_insert
from emailsvc.models import ApiKey, Attachment, DeliveryJournal, Message, Recipient, Suppression

pytestmark = pytest.mark.django_db

AT = datetime(2026, 12, 2, 3, 4, 5, 678901, tzinfo=UTC)

VARIANTS = [
    {},
    {"from_name": "Zoë “quoted” \\ back\\slash", "subject": "Tab\there, newline\nthere, NUL-free ✓"},
    {"reply_to": ["a@example.com", "Näme <b@example.com>"], "headers": {"X-A": "1", "X-Ü": "ü"}},
    {"tags": ["t1", "ţ2"], "metadata": {"n": 1, "f": 1.5, "nested": {"l": [1, None, True]}, "s": "x" * 3000}},
    {"metadata": {"amount": "12.50"}, "template_data": None, "template_version": 3, "send_at": AT + timedelta(days=1)},
    {"template_data": {"items": [{"sku": 1}], "empty": {}}, "attempts": 2, "queued_at": AT, "sent_at": None},
    # Values of other types than the column's plain one: prepared by the field, as bulk_create does.
    {"subject": gettext_lazy("Lazy subject"), "attempts": True, "metadata": {"big": 2**70}},
    {"metadata": {1: "int key"}, "template_data": ["list", 1]},
]


def _messages(tag: str) -> list[Message]:
    messages = []
    for index, variant in enumerate(VARIANTS):
        fields = dict(
            email_id=f"{tag}-{index}", from_email="sender@example.com", sending_domain="example.com",
            provider="console", next_attempt_at=AT, text="hello",
        )
        fields.update(variant)
        messages.append(Message(**fields))
    return messages


def _stored(model, ids: list[int], leave_out: set[str]) -> list[dict]:
    rows = {row["id"]: row for row in model.objects.filter(pk__in=ids).values()}
    return [{k: v for k, v in rows[pk].items() if k not in leave_out} for pk in ids]


def test_rows_insert_stores_what_bulk_create_stores():
    ours, theirs = _messages("ours"), _messages("theirs")
    rows_insert(Message, ours)
    Message.objects.bulk_create(theirs)
    assert all(m.pk for m in ours) and all(not m._state.adding for m in ours)
    leave_out = {"id", "email_id", "created_at", "updated_at"}
    assert _stored(Message, [m.pk for m in ours], leave_out) == _stored(Message, [m.pk for m in theirs], leave_out)

    recipients = {}
    for tag, messages in (("ours", ours), ("theirs", theirs)):
        recipients[tag] = [
            Recipient(message=message, email=f"r{i}-{role}@example.org", name=name, role=role, status="queued")
            for i, message in enumerate(messages)
            for name, role in (("", "to"), ("Ünal", "cc"))
        ]
    rows_insert(Recipient, recipients["ours"])
    Recipient.objects.bulk_create(recipients["theirs"])
    ours_rows = _stored(Recipient, [r.pk for r in recipients["ours"]], {"id", "message_id", "updated_at"})
    theirs_rows = _stored(Recipient, [r.pk for r in recipients["theirs"]], {"id", "message_id", "updated_at"})
    assert ours_rows == theirs_rows
    assert [r.message_id for r in recipients["ours"]] == [m.pk for m in ours for _ in range(2)]


def test_rows_update_writes_what_the_orm_writes():
    """rows_update (one statement, rows with different columns) leaves each row
    as a per-row QuerySet.update of the same values does."""
    from core.sql import rows_update

    ours, theirs = _messages("upd-ours"), _messages("upd-theirs")
    Message.objects.bulk_create(ours + theirs)
    changes = [
        {"status": "sent", "sent_at": AT, "provider_message_id": "pm-1", "attempts": 3},
        {"last_error": "4.2.2 mailbox full ✉", "state": "queued", "next_attempt_at": AT + timedelta(minutes=5)},
        {"metadata": {"after": ["x", 1, None]}, "tags": []},
        {"template_data": None, "headers": {"X-Ü": "ü"}},
        {"subject": gettext_lazy("Lazy again"), "attempts": True},  # other types: the field prepares them
        {"metadata": {2: "int key"}, "sent_at": None},
        {},
        {"status": "failed"},
    ]
    rows_update(Message, {m.pk: change for m, change in zip(ours, changes) if change}, at=AT)
    for message, change in zip(theirs, changes):
        if change:
            Message.objects.filter(pk=message.pk).update(**change, updated_at=AT)
    leave_out = {"id", "email_id", "created_at", "updated_at"}
    assert _stored(Message, [m.pk for m in ours], leave_out) == _stored(Message, [m.pk for m in theirs], leave_out)
    stamped = dict(Message.objects.filter(pk__in=[m.pk for m in ours]).values_list("pk", "updated_at"))
    assert [stamped[m.pk] == AT for m in ours] == [bool(change) for change in changes]


# --- Plain statements on paths that run for every request -------------------------------

def test_database_ping_answers():
    sql.database_ping()


def test_row_by_unique_reads_the_row_the_orm_reads():
    made = ApiKey.objects.create(name="Zoë's key", prefix="pfx-1", secret_hash="h" * 64, expires_at=AT)
    ApiKey.objects.create(name="other", prefix="pfx-2", secret_hash="g" * 64)
    found = sql.row_by_unique(ApiKey, "prefix", "pfx-1")
    orm = ApiKey.objects.get(prefix="pfx-1")
    assert found is not None and found.pk == made.pk and not found._state.adding
    assert {f.attname: getattr(found, f.attname) for f in ApiKey._meta.concrete_fields} == {
        f.attname: getattr(orm, f.attname) for f in ApiKey._meta.concrete_fields
    }
    assert sql.row_by_unique(ApiKey, "prefix", "nope") is None


def test_values_unexpired_reads_what_the_orm_filter_reads():
    now = timezone.now()
    Suppression.objects.bulk_create([
        Suppression(email="forever@example.com", reason="bounce"),
        Suppression(email="later@example.com", reason="complaint", expires_at=now + timedelta(hours=1)),
        Suppression(email="gone@example.com", reason="manual", expires_at=now - timedelta(seconds=1)),
        Suppression(email="now@example.com", reason="manual", expires_at=now),
        Suppression(email="other@example.com", reason="bounce"),
    ])
    among = ["forever@example.com", "later@example.com", "gone@example.com", "now@example.com", "absent@example.com"]
    found = sql.values_unexpired(Suppression, ["email", "reason"], key="email", among=among, now=now)
    orm = Suppression.objects.filter(email__in=among).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
    assert sorted(found) == sorted(orm.values_list("email", "reason"))
    assert sorted(email for email, _ in found) == ["forever@example.com", "later@example.com"]


def test_table_row_estimate_is_the_count_once_analysed_on_postgresql_and_none_elsewhere():
    _store_messages("estimate", 7)
    if connection.vendor != "postgresql":
        assert sql.table_row_estimate(Message) is None
        return
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Message._meta.db_table}")
    assert sql.table_row_estimate(Message) == Message.objects.count()


# --- The list reads -----------------------------------------------------------------------------


def _store_messages(tag: str, count: int, **fields) -> list[Message]:
    messages = [
        Message(email_id=f"{tag}-{index}", from_email="sender@example.com", sending_domain="example.com",
                provider="console", next_attempt_at=AT, text="hello", **fields)
        for index in range(count)
    ]
    Message.objects.bulk_create(messages)
    return messages


def _tagged_messages() -> list[Message]:
    variants = [
        {"tags": ["a", "b"], "metadata": {"tier": "1", "k__x": "v"}},
        {"tags": ["b"], "metadata": {"tier": 1}},
        {"tags": [], "metadata": {"tier": ["1"]}},
        {"tags": ["ab", "A"], "metadata": {"tier": "1", "other": "2"}},
        {"tags": [1, "1"], "metadata": {}},
    ]
    messages = []
    for index, variant in enumerate(variants):
        messages += _store_messages(f"tagged-{index}", 1, **variant)
    return messages


def _ids(condition: Q) -> list[int]:
    return sorted(Message.objects.filter(condition).values_list("id", flat=True))


def _python_ids(messages: list[Message], admits) -> list[int]:
    return sorted(message.pk for message in messages if admits(message))


def test_json_list_has_admits_what_a_python_membership_admits():
    messages = _tagged_messages()
    for tag in ("a", "b", "ab", "A", "1", "absent"):
        assert _ids(sql.json_list_has("tags", tag, model=Message)) == _python_ids(messages, lambda m: tag in m.tags), tag


def test_json_key_is_admits_the_string_value_only():
    messages = _tagged_messages()
    for key, value in (("tier", "1"), ("other", "2"), ("k__x", "v"), ("tier", "2"), ("absent", "1")):
        expected = _python_ids(messages, lambda m: m.metadata.get(key) == value)
        assert _ids(sql.json_key_is("metadata", key, value)) == expected, (key, value)
    # The ORM's own containment agrees on PostgreSQL, its key lookup on SQLite.
    orm = Q(metadata__contains={"tier": "1"}) if connection.vendor == "postgresql" else Q(metadata__tier="1")
    assert _ids(sql.json_key_is("metadata", "tier", "1")) == _ids(orm)


def test_pk_among_admits_what_pk_in_admits():
    messages = _store_messages("among", 6)
    wanted = [messages[0].pk, messages[3].pk, messages[5].pk, 10**12]
    assert _ids(sql.pk_among(Message, wanted)) == _ids(Q(pk__in=wanted))
    rows = Message.objects.filter(sql.pk_among(Message, wanted)).filter(email_id__endswith="-3")
    assert list(rows.values_list("id", flat=True)) == [messages[3].pk]


def test_planner_settings_hold_inside_and_are_back_after_without_changing_answers():
    messages = _store_messages("planner", 4)
    expected = sorted(m.pk for m in messages)
    with transaction.atomic():
        with sql.planner_settings(enable_sort="off", enable_bitmapscan="off"):
            inside = sorted(Message.objects.filter(pk__in=expected).values_list("id", flat=True))
            shown = _setting("enable_sort")
        after = _setting("enable_sort")
        before = sql.planner_settings_set({"enable_hashjoin": "off"}) if connection.vendor == "postgresql" else {}
        set_now = _setting("enable_hashjoin")
        if before:
            sql.planner_settings_set(before, read=False)
        back = _setting("enable_hashjoin")
    assert inside == expected
    if connection.vendor == "postgresql":
        assert (shown, after) == ("off", "on")
        assert (before, set_now, back) == ({"enable_hashjoin": "on"}, "off", "on")


def _setting(name: str) -> str | None:
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting(%s)", [name])
        return cursor.fetchone()[0]


def test_index_lookups_change_no_answer():
    messages = _store_messages("lookups", 3)
    with transaction.atomic():
        sql.index_lookups()
        inside = sorted(Message.objects.filter(email_id__in=[m.email_id for m in messages]).values_list("id", flat=True))
        seqscan = _setting("enable_seqscan")
    assert inside == sorted(m.pk for m in messages)
    if connection.vendor == "postgresql":
        assert seqscan == "off"  # until the transaction ends (the test's own, here)


# --- The delivery engine's statements (core.sql_engine) ---------------------------------------


def test_values_among_reads_what_values_list_reads():
    messages = _store_messages("chunk", 3, reply_to=["r@example.com"], headers={"X-Ü": "ü"}, tags=["t"],
                               metadata={"n": [1, None]})
    first, second, third = messages
    Recipient.objects.bulk_create([
        Recipient(message=message, email=f"{role}-{index}@example.org", name="Ünal", role=role, status=status)
        for index, message in enumerate(messages)
        for role, status in (("to", "queued"), ("cc", "sent"), ("bcc", "deferred"))
    ])
    Attachment.objects.bulk_create([
        Attachment(message=first, filename="a.txt", content_type="text/plain", content=b"\x00\xffbytes", size=7),
        Attachment(message=second, filename="b.pdf", content_type="application/pdf", content=b"%PDF", size=4),
    ])
    ids = [first.pk, third.pk]
    columns = ("id", "email_id", "group_id", "attempts", "reply_to", "headers", "tags", "metadata", "sent_at", "next_attempt_at")
    assert sorted(sql_engine.values_among(Message, columns, among={"id": ids})) == sorted(
        Message.objects.filter(id__in=ids).values_list(*columns)
    )
    statuses = ["queued", "deferred"]
    recipient_columns = ("id", "message_id", "email", "name", "role")
    assert sql_engine.values_among(
        Recipient, recipient_columns, among={"message_id": ids, "status": statuses}, order_by="id"
    ) == list(Recipient.objects.filter(message_id__in=ids, status__in=statuses).order_by("id").values_list(*recipient_columns))
    read = sql_engine.values_among(
        Attachment, ("message_id", "filename", "content"), among={"message_id": [first.pk, second.pk]}, order_by="id"
    )
    orm = Attachment.objects.filter(message_id__in=[first.pk, second.pk]).order_by("id").values_list("message_id", "filename", "content")
    assert [(m, f, bytes(c)) for m, f, c in read] == [(m, f, bytes(c)) for m, f, c in orm]


JOURNALED = [
    {"provider_message_id": "p-1", "sent": [11, 12], "failed": {13: "550 5.1.1 no such user ✉"}, "released_for": None},
    {"provider_message_id": "", "sent": [], "deferred": {"21": "451 later"}, "released_for": 2.5},
]


def test_journal_upsert_writes_what_bulk_create_with_update_conflicts_writes():
    first, second = _store_messages("journal", 2)
    now = timezone.now()
    DeliveryJournal.objects.bulk_create(
        [DeliveryJournal(message_id=first.pk, attempt=1, outcome={"old": True}, written_at=now)]
    )
    DeliveryJournal.objects.bulk_create(
        [DeliveryJournal(message_id=first.pk, attempt=2, outcome=JOURNALED[0], written_at=now),
         DeliveryJournal(message_id=second.pk, attempt=1, outcome=JOURNALED[1], written_at=now)],
        update_conflicts=True, unique_fields=["message"], update_fields=["attempt", "outcome", "written_at"],
    )
    by_orm = sorted(DeliveryJournal.objects.values_list("message_id", "attempt", "outcome"))
    DeliveryJournal.objects.all().delete()
    sql_engine.journal_upsert(DeliveryJournal, [(first.pk, 1, {"old": True})])
    sql_engine.journal_upsert(DeliveryJournal, [(first.pk, 2, JOURNALED[0]), (second.pk, 1, JOURNALED[1])])
    assert sorted(DeliveryJournal.objects.values_list("message_id", "attempt", "outcome")) == by_orm
    assert all(abs((w - now).total_seconds()) < 5 for w in DeliveryJournal.objects.values_list("written_at", flat=True))


@pytest.mark.django_db(transaction=True)
def test_commit_asynchronously_keeps_every_write():
    sql_engine.commit_asynchronously()
    try:
        (message,) = _store_messages("async", 1)
        sql_engine.journal_upsert(DeliveryJournal, [(message.pk, 1, JOURNALED[1])])
        assert DeliveryJournal.objects.filter(message_id=message.pk).values_list("outcome", flat=True).get() == JOURNALED[1]
        if connection.vendor == "postgresql":
            assert _setting("synchronous_commit") == "off"
    finally:
        connection.close()  # the setting holds for the session: no later test gets it
