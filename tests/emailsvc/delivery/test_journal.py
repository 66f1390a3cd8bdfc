"""The delivery journal's own statement, held to what the ORM writes (both databases)."""

import pytest
from django.utils import timezone

from emailsvc.delivery.journal import JournalEntry, _entries_insert, journal_delete, journal_entries
from emailsvc.models import DeliveryJournal
from tests.tracking.scenario import accepted_message

pytestmark = pytest.mark.django_db

OUTCOMES = [
    {"provider_message_id": "p-1", "sent_at": "2026-12-07T05:00:00+00:00", "sent": [11, 12], "failed": {13: "550 5.1.1 no such user"},
     "deferred": {}, "released_for": None, "reason": "550 5.1.1 no such user"},
    {"provider_message_id": "", "sent_at": None, "sent": [], "failed": {}, "deferred": {21: "451 4.3.0 later ✉"},
     "released_for": None, "reason": "451 4.3.0 later ✉"},
]


def rows() -> list[tuple]:
    return sorted(DeliveryJournal.objects.values_list("message_id", "attempt", "outcome"))


def test_entries_written_by_the_statement_read_back_as_the_orm_writes_them(api):
    first, second = accepted_message(api, ["a@example.com"]), accepted_message(api, ["b@example.com"])
    now = timezone.now()
    DeliveryJournal.objects.bulk_create(
        [DeliveryJournal(message_id=first.pk, attempt=1, outcome=OUTCOMES[0], written_at=now),
         DeliveryJournal(message_id=second.pk, attempt=2, outcome=OUTCOMES[1], written_at=now)],
    )
    by_orm = rows()
    DeliveryJournal.objects.all().delete()

    _entries_insert([JournalEntry(first.pk, 1, OUTCOMES[0]), JournalEntry(second.pk, 2, OUTCOMES[1])])

    assert rows() == by_orm
    assert all(abs((w - now).total_seconds()) < 5 for w in DeliveryJournal.objects.values_list("written_at", flat=True))


def test_a_later_attempt_replaces_the_entry_and_recording_an_earlier_one_leaves_it(api):
    message = accepted_message(api, ["c@example.com"])
    _entries_insert([JournalEntry(message.pk, 1, OUTCOMES[1])])
    _entries_insert([JournalEntry(message.pk, 2, OUTCOMES[0])])

    assert journal_entries(message_ids=[message.pk]) == {message.pk: (2, rows()[0][2])}
    journal_delete(attempts={message.pk: 1})  # a late record of attempt 1
    assert len(rows()) == 1
    journal_delete(attempts={message.pk: 2})
    assert rows() == []
