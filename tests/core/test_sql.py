"""Every raw statement of core.sql and core.sql_engine, held to what the ORM
reads or writes on the same rows. The suite runs on PostgreSQL (DATABASE_URL)
and on SQLite: a PostgreSQL statement is compared there, its fallback here.

rows_insert stores what Django's bulk_create stores: every column, whatever
the value's type (the plain ones go into the JSON document as they are,
anything else is prepared by its field)."""

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from django.db import connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy

from core import sql, sql_engine
from core.sql import rows_insert
from emailsvc.models import (
    ApiKey,
    Attachment,
    DeliveryJournal,
    Message,
    Recipient,
    SendingCounts,
    SendingPause,
    StatusChange,
    Suppression,
)
from tracking.models import EngagementEvent

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
    made = ApiKey.objects.create(
        name="Zoë's key", prefix="pfx-1", secret_hash="h" * 64, expires_at=AT, domains=["example.com"], test=True
    )
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


@pytest.mark.django_db(transaction=True)
def test_read_snapshot_does_not_see_a_commit_made_between_its_statements():
    import threading

    from django.db import connections

    (message,) = _store_messages("snapshot", 1)

    def other_connection_commits():
        try:
            Recipient.objects.create(message_id=message.pk, email="late@example.org", role="to", status="queued")
        finally:
            connections.close_all()

    with sql.read_snapshot():
        before = Recipient.objects.filter(message_id=message.pk).count()
        writer = threading.Thread(target=other_connection_commits)
        writer.start()
        writer.join()
        assert Recipient.objects.filter(message_id=message.pk).count() == before  # the snapshot's moment
        assert Message.objects.filter(pk=message.pk).exists()
    assert Recipient.objects.filter(message_id=message.pk).count() == before + 1  # committed, seen after
    with transaction.atomic(), sql.read_snapshot():  # inside a transaction: that transaction's view, no error
        assert Recipient.objects.filter(message_id=message.pk).count() == before + 1
    with sql.read_snapshot(), sql.read_snapshot(), transaction.atomic():  # nested, and a write's savepoint inside
        assert Message.objects.filter(pk=message.pk).exists()
    with pytest.raises(ZeroDivisionError), sql.read_snapshot():  # an error inside ends the transaction
        Message.objects.filter(pk=message.pk).exists()
        1 / 0  # noqa: B018
    assert not connection.in_atomic_block and connection.get_autocommit()
    Recipient.objects.filter(email="late@example.org").delete()  # the connection writes again, in autocommit


# --- The status writer's statements (called by emailsvc.status only) ---------------------------


def _recipients(messages: list[Message], per_message: int = 2) -> list[Recipient]:
    recipients = [
        Recipient(message=message, email=f"r{index}@example.org", role="to", status="queued")
        for message in messages
        for index in range(per_message)
    ]
    Recipient.objects.bulk_create(recipients)
    return recipients


def _status_changes(recipients: list[Recipient], tag: str) -> list[StatusChange]:
    details = [{}, {"reason": "550 5.1.1 ✉ “quoted”", "n": [1, None]}, {"event_id": "e-1"}]
    return [
        StatusChange(message_id=r.message_id, recipient_id=r.pk, email=r.email, from_status="queued",
                     to_status=("sent", "failed", "suppressed")[index % 3], at=AT + timedelta(seconds=index),
                     cause=tag, detail=details[index % 3])
        for index, r in enumerate(recipients)
    ]


def test_status_changes_insert_stores_what_bulk_create_stores():
    recipients = _recipients(_store_messages("changes", 3))
    sql_engine.status_changes_insert(StatusChange, _status_changes(recipients, "ours"))
    StatusChange.objects.bulk_create(_status_changes(recipients, "theirs"))
    columns = ("message_id", "recipient_id", "email", "from_status", "to_status", "at", "detail")
    ours = list(StatusChange.objects.filter(cause="ours").order_by("id").values_list(*columns))
    assert len(ours) == 6
    assert ours == list(StatusChange.objects.filter(cause="theirs").order_by("id").values_list(*columns))


def test_rows_lock_reads_what_the_orm_reads():
    messages = _store_messages("lock", 4, attempts=2, claimed_by="worker-1")
    ids = [messages[2].pk, messages[0].pk, 10**12]
    fields = ("status", "state", "sending_domain", "attempts", "claimed_by")
    with transaction.atomic():
        locked = sql_engine.rows_lock(Message, ids, fields)
    assert sorted(locked) == list(Message.objects.filter(pk__in=ids).order_by("id").values_list("id", *fields))
    if connection.vendor == "postgresql":
        assert [row[0] for row in locked] == sorted(row[0] for row in locked)  # the lock order of every writer


def test_rows_claim_takes_the_due_rows_the_orm_reads_in_the_same_order():
    now = AT + timedelta(hours=1)
    plan = [  # priority, state, status, due (minutes before now; negative: not due yet), domain[/stream]
        ("high", "queued", "queued", 5, "a.example"),
        ("high", "queued", "queued", 45, "a.example/broadcast"),  # that stream of the domain is paused
        ("high", "queued", "queued", 44, "b.example/broadcast"),
        ("high", "scheduled", "scheduled", 50, "a.example"),
        ("high", "queued", "delivered", 30, "b.example"),  # shows what its recipients did
        ("high", "queued", "queued", 40, "paused.example"),
        ("high", "sending", "sending", 60, "a.example"),
        ("high", "queued", "queued", -5, "a.example"),
        ("normal", "queued", "queued", 20, "a.example"),
        ("normal", "queued", "queued", 10, "a.example"),
        ("normal", "held", "queued", 70, "a.example"),
        ("low", "queued", "queued", 90, "a.example"),
    ]
    messages = [
        Message(email_id=f"claim-{index}", from_email="sender@example.com", sending_domain=domain.partition("/")[0],
                stream=domain.partition("/")[2] or "transactional", provider="console",
                text="hello", priority=priority, state=state, status=status_name, attempts=1,
                next_attempt_at=now - timedelta(minutes=minutes))
        for index, (priority, state, status_name, minutes, domain) in enumerate(plan)
    ]
    Message.objects.bulk_create(messages)
    priorities, paused, limit = ["high", "normal", "low"], ["paused.example"], 6
    paused_streams = [("a.example", "broadcast"), ("c.example", "transactional")]
    expected: list[int] = []
    for priority in priorities:
        due = Message.objects.filter(state__in=["scheduled", "queued"], priority=priority, next_attempt_at__lte=now)
        due = due.exclude(sending_domain__in=paused).order_by("next_attempt_at")
        for domain, stream in paused_streams:
            due = due.exclude(sending_domain=domain, stream=stream)
        expected += list(due.values_list("id", flat=True)[: limit - len(expected)])
    before = {m.pk: m for m in Message.objects.filter(pk__in=[m.pk for m in messages])}

    with transaction.atomic():
        claimed = sql_engine.rows_claim(
            Message, waiting=("scheduled", "queued"), claimed="sending", shown=("queued", "scheduled"),
            showing="sending", priorities=priorities, limit=limit, now=now, claimed_by="worker-7",
            paused_domains=paused, paused_streams=paused_streams,
        )

    assert sorted(claimed) == sorted(expected) and len(expected) == limit
    after = {m.pk: m for m in Message.objects.filter(pk__in=[m.pk for m in messages])}
    for pk, message in after.items():
        if pk not in expected:
            assert (message.state, message.status, message.attempts) == (before[pk].state, before[pk].status, 1)
            continue
        shown = "sending" if before[pk].status in ("queued", "scheduled") else before[pk].status
        assert (message.state, message.status, message.attempts, message.claimed_by) == ("sending", shown, 2, "worker-7")
        assert message.sending_started_at == now and message.updated_at == now


def test_rows_claim_takes_only_plain_constants():
    with pytest.raises(ValueError):
        sql_engine.rows_claim(
            Message, waiting=("queued') OR ('1' = '1",), claimed="sending", shown=(), showing="sending",
            priorities=["high"], limit=1, now=AT, claimed_by="", paused_domains=(),
        )


# --- Events and counts ------------------------------------------------------------------------


def _event_rows(tag: str, message: Message | None, recipient: Recipient | None) -> list[sql_engine.EventRow]:
    return [
        sql_engine.EventRow(
            f"{tag}-{index}", email, "Delivery" if index % 2 else "Bounce", "pm-“1”", message.pk if message else None,
            recipient.pk if recipient else None, AT + timedelta(minutes=index),
            {"bounce_type": "Transient", "n": [index, None], "ü": "✓"},
            '{"eventType": "Delivery", "mail": {"messageId": "pm-“1”"}, "n": 1.5}',
        )
        for index, email in enumerate(["a@example.org", "b@example.org", ""])
    ]


def _stored_events(received_at) -> list[tuple]:
    columns = ("event_id", "recipient_email", "event_type", "provider_message_id", "message_id", "recipient_id",
               "occurred_at", "source", "detail", "raw")
    rows = EngagementEvent.objects.order_by("event_id", "recipient_email")
    if received_at is not None:
        assert set(rows.values_list("received_at", flat=True)) == {received_at}
    return list(rows.values_list(*columns))


def test_events_insert_stores_what_bulk_create_ignoring_conflicts_stores():
    (message,) = _store_messages("events", 1)
    (recipient, _) = _recipients([message])
    rows = _event_rows("ev", message, recipient) + _event_rows("orphan", None, None)[:1]
    already = rows[1]._replace(event_type="Send", detail={"first": True})

    def model_of(row, source="ses"):
        return EngagementEvent(
            event_id=row.event_id, recipient_email=row.recipient_email, event_type=row.event_type,
            provider_message_id=row.provider_message_id, message_id=row.message_id, recipient_id=row.recipient_id,
            occurred_at=row.occurred_at, source=source, detail=row.detail, raw=orjson.loads(row.raw),
        )

    EngagementEvent.objects.bulk_create([model_of(already)])
    EngagementEvent.objects.bulk_create([model_of(row) for row in rows], ignore_conflicts=True)
    by_orm = _stored_events(None)
    EngagementEvent.objects.all().delete()

    EngagementEvent.objects.bulk_create([model_of(already)])
    EngagementEvent.objects.update(received_at=AT)
    inserted = sql_engine.events_insert(EngagementEvent, rows, received_at=AT, source="ses")
    assert inserted == {(row.event_id, row.recipient_email) for row in rows} - {(already.event_id, already.recipient_email)}
    assert _stored_events(AT) == by_orm


def test_counts_among_counts_what_the_orm_counts():
    (message,) = _store_messages("counted", 1)
    rows = _event_rows("cnt", message, None) + _event_rows("cnt-other", None, None)[:2]
    rows[1] = rows[1]._replace(event_id="cnt-0")  # two recipients of one provider event
    sql_engine.events_insert(EngagementEvent, rows, received_at=AT, source="ses")
    among = {"cnt-0", "cnt-2", "cnt-other-1", "absent"}
    orm = dict(EngagementEvent.objects.filter(event_id__in=among).values("event_id").annotate(n=Count("id"))
               .values_list("event_id", "n"))
    assert sql_engine.counts_among(EngagementEvent, "event_id", among) == orm == {"cnt-0": 2, "cnt-2": 1, "cnt-other-1": 1}
    assert sql_engine.counts_among(EngagementEvent, "event_id", set()) == {}


def test_events_unlinked_reads_what_the_orm_filter_reads():
    (message,) = _store_messages("unlinked", 1)
    rows = _event_rows("linked", message, None) + _event_rows("orphan", None, None)
    rows.append(_event_rows("no-provider-id", None, None)[0]._replace(provider_message_id=""))
    sql_engine.events_insert(EngagementEvent, rows, received_at=AT, source="ses")
    old = _event_rows("old", None, None)[:1]
    sql_engine.events_insert(EngagementEvent, old, received_at=AT - timedelta(days=2), source="ses")
    since = AT - timedelta(days=1)
    orm = EngagementEvent.objects.filter(message__isnull=True, received_at__gte=since).exclude(provider_message_id="")
    expected = sorted(orm.values_list("id", "provider_message_id"))
    assert sorted(sql_engine.events_unlinked(EngagementEvent, since=since, limit=100)) == expected
    assert len(expected) == 3
    assert len(sql_engine.events_unlinked(EngagementEvent, since=since, limit=2)) == 2


def test_any_null_answers_what_exists_answers():
    def both() -> tuple[bool, bool]:
        return sql_engine.any_null(SendingPause, "resumed_at"), SendingPause.objects.filter(resumed_at__isnull=True).exists()

    assert both() == (False, False)
    pause = SendingPause.objects.create(domain="a.example", cause="breaker", paused_at=AT, resumed_at=AT)
    assert both() == (False, False)
    SendingPause.objects.create(domain="b.example", cause="breaker", paused_at=AT)
    assert both() == (True, True)
    pause.delete()
    assert both() == (True, True)


def test_counts_add_writes_what_update_or_create_with_f_adds_writes():
    hour = AT.replace(minute=0, second=0, microsecond=0)
    batches = [
        [("a.example", "transactional", hour, 3, 0, 1), ("b.example", "transactional", hour, 1, 1, 0)],
        [("a.example", "transactional", hour, 2, 1, 0), ("a.example", "broadcast", hour, 4, 0, 2),
         ("a.example", "transactional", hour + timedelta(hours=1), 5, 0, 0)],
    ]
    counters = ("sent", "bounced", "complained")
    for batch in batches:
        for domain, stream, at, *added in batch:
            row, created = SendingCounts.objects.get_or_create(
                sending_domain=domain, stream=stream, hour=at, defaults=dict(zip(counters, added))
            )
            if not created:
                SendingCounts.objects.filter(pk=row.pk).update(
                    **{name: F(name) + value for name, value in zip(counters, added)}
                )
    columns = ("sending_domain", "stream", "hour", *counters)
    by_orm = list(SendingCounts.objects.order_by(*columns[:3]).values_list(*columns))
    SendingCounts.objects.all().delete()
    for batch in batches:
        sql_engine.counts_add(SendingCounts, batch, key=("sending_domain", "stream", "hour"), counters=counters)
    assert list(SendingCounts.objects.order_by(*columns[:3]).values_list(*columns)) == by_orm
    assert by_orm[0] == ("a.example", "broadcast", hour, 4, 0, 2)
    assert by_orm[1] == ("a.example", "transactional", hour, 5, 1, 1)
