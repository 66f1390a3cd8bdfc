"""core.sql.rows_insert stores what Django's bulk_create stores: every
column, whatever the value's type (the plain ones go into the JSON document as
they are, anything else is prepared by its field)."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils.translation import gettext_lazy

from core.sql import rows_insert
from emailsvc.models import Message, Recipient

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
