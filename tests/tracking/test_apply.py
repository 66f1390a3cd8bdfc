"""event_apply directly: facts do not depend on arrival order, early events are
linked later, automatic suppressions keep what support wrote."""

import random

import pytest
from django.db import connection

from emailsvc.models import Message, Suppression
from emailsvc.suppressions.services import suppression_add
from tests.tracking.scenario import accepted_message, drain, event, sent_message
from tests.tracking.sesevents import ses_event, sns_envelope
from tracking.apply import event_apply, events_relink
from tracking.models import EngagementEvent
from tracking.normalize import ses_body_parse

pytestmark = pytest.mark.django_db


def apply_all(envelopes) -> None:
    for envelope in envelopes:
        for normalized in ses_body_parse(envelope):
            event_apply(event=normalized, source="sqs")


def facts(message: Message) -> dict:
    message.refresh_from_db()
    result = {"status": message.status}
    for r in message.recipients.order_by("email"):
        result[r.email] = (
            r.status, r.sent_at, r.delivered_at, r.delayed, r.open_count, r.last_opened_at,
            [o["event_id"] for o in r.opens], r.click_count, r.bounce, r.complained_at,
            r.complaint_feedback_type, r.rejected_at, r.failed_reason,
        )
    return result


def reset(message: Message) -> None:
    EngagementEvent.objects.filter(message=message).delete()
    message.recipients.update(
        status="sent", delivered_at=None, delayed=0, opens=[], open_count=0, last_opened_at=None, clicks=[],
        click_count=0, bounce=None, complained_at=None, complaint_feedback_type="", rejected_at=None, failed_reason="",
    )
    Message.objects.filter(pk=message.pk).update(status="sent")
    Suppression.objects.all().delete()


def test_every_arrival_order_gives_the_same_facts(api):
    message = sent_message(api, ["a@example.com", "b@example.com", "c@example.com", "d@example.com"])
    a, b, c, d = (f"{name}@example.com" for name in "abcd")
    story = [
        event(message, "Send", seconds=0),
        event(message, "DeliveryDelay", [a], seconds=5),
        event(message, "Delivery", [a], seconds=60),
        event(message, "Open", [a], seconds=70),
        event(message, "Click", [a], seconds=90),
        event(message, "Complaint", [a], seconds=300, feedback_type="abuse"),
        event(message, "Complaint", [a], seconds=200, feedback_type="fraud"),
        event(message, "Bounce", [b], seconds=10, bounce_type="Transient", bounce_subtype="MailboxFull"),
        event(message, "Bounce", [b], seconds=20, bounce_type="Permanent", bounce_subtype="General"),
        event(message, "Reject", [c], seconds=1, reason="Bad content"),
        event(message, "DeliveryDelay", [c], seconds=30),
        event(message, "Rendering Failure", [d], seconds=2, error_message="missing name"),
        event(message, "Reject", [d], seconds=3, reason="Bad content"),
    ]
    apply_all(story)
    expected = facts(message)
    assert expected[a][0] == "complained" and expected[a][10] == "fraud"  # the earliest complaint's type
    assert expected[b][0] == "bounced"
    assert expected[c][0] == "failed" and expected[c][3] == 1
    assert expected[d][0] == "failed" and expected[d][12].startswith("rendering_failure")

    shuffler = random.Random(20261123)
    for _ in range(12):
        reset(message)
        order = story[:]
        shuffler.shuffle(order)
        apply_all(order + order[:5])  # and some of them twice
        assert facts(message) == expected


def test_reject_then_late_send_stays_failed(api):
    message = sent_message(api, ["r@example.com"])

    apply_all([event(message, "Reject", seconds=1), event(message, "Send", seconds=0)])

    message.refresh_from_db()
    assert message.status == "failed"


def test_event_that_arrived_before_the_provider_id_was_recorded_is_applied_once_it_is(api, events_queue):
    message = accepted_message(api, ["early@example.com"])
    early = ses_event("Delivery", message_id="ses-id-not-yet-recorded", recipients=["early@example.com"], include_headers=False)
    events_queue.put(sns_envelope(early))
    assert drain()["unmatched"] == 1

    # The worker records the provider's id (what delivery writes: state, status, id).
    Message.objects.filter(pk=message.pk).update(provider_message_id="ses-id-not-yet-recorded", status="sent", state="done")
    message.recipients.update(status="sent")

    assert events_relink() == 1
    assert events_relink() == 0
    message.refresh_from_db()
    assert message.status == "delivered"
    assert EngagementEvent.objects.get().message_id == message.pk


def test_bounce_keeps_a_suppression_support_already_added(api):
    suppression_add(email="vip@example.com", reason="manual", source="support", note="asked by phone")
    message = sent_message(api, ["other@example.com"])
    apply_all([event(message, "Bounce", ["vip@example.com"], bounce_type="Permanent")])

    suppression = Suppression.objects.get(email="vip@example.com")
    assert (suppression.reason, suppression.note) == ("manual", "asked by phone")


def test_not_spam_feedback_is_recorded_but_neither_complains_nor_suppresses(api):
    message = sent_message(api, ["fine@example.com"])

    apply_all([event(message, "Delivery", seconds=1), event(message, "Complaint", seconds=5, feedback_type="not-spam")])

    message.refresh_from_db()
    assert message.status == "delivered"
    assert EngagementEvent.objects.filter(event_type="complaint").count() == 1
    assert not Suppression.objects.exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs a database that enforces column lengths")
def test_an_event_the_database_refuses_does_not_hold_up_the_others(api, events_queue):
    good = sent_message(api, ["good@example.com"])
    too_long = "x" * 330 + "@example.com"
    events_queue.put(
        sns_envelope(ses_event("Delivery", message_id="unknown-id", recipients=[too_long])),
        event(good, "Delivery"),
    )

    result = drain()

    assert (result["failed"], result["applied"], result["deleted"]) == (1, 1, 1)
    assert events_queue.depth() == 1
    good.refresh_from_db()
    assert good.status == "delivered"


def _random_stream(messages: list[Message], shuffler: random.Random) -> list[dict]:
    """A random story per recipient: every event type, some twice, in any order."""
    envelopes = []
    kinds = [
        ("Send", {}), ("Delivery", {}), ("DeliveryDelay", {}), ("Open", {}), ("Click", {}),
        ("Bounce", {"bounce_type": "Transient", "bounce_subtype": "MailboxFull"}),
        ("Bounce", {"bounce_type": "Permanent", "bounce_subtype": "General"}),
        ("Complaint", {"feedback_type": "abuse"}), ("Complaint", {"feedback_type": "not-spam"}),
        ("Reject", {"reason": "Bad content"}),
    ]
    for message in messages:
        for recipient in message.recipients.values_list("email", flat=True):
            for _ in range(shuffler.randint(1, 6)):
                kind, details = shuffler.choice(kinds)
                envelopes.append(event(message, kind, [recipient], seconds=shuffler.randint(0, 600), **details))
        envelopes.append(event(message, "Delivery", seconds=shuffler.randint(0, 600)))  # all recipients at once
    envelopes += shuffler.sample(envelopes, len(envelopes) // 5)  # replays
    shuffler.shuffle(envelopes)
    return envelopes


def test_bulk_apply_gives_the_facts_of_applying_one_event_at_a_time(api):
    from tracking.apply import events_apply

    messages = [sent_message(api, [f"x{i}@example.com", f"y{i}@example.com", f"z{i}@example.com"]) for i in range(8)]
    shuffler = random.Random(20261201)
    stream = _random_stream(messages, shuffler)
    events = [normalized for envelope in stream for normalized in ses_body_parse(envelope)]

    one_by_one = [event_apply(event=e, source="sqs").outcome for e in events]
    expected = [facts(m) for m in messages]
    # Which of two automatic reasons (hard bounce, complaint) an address keeps is
    # the first to arrive, by design: compare the addresses.
    expected_suppressions = sorted(Suppression.objects.values_list("email", flat=True))
    expected_rows = EngagementEvent.objects.count()
    assert one_by_one.count("applied") == expected_rows and "duplicate" in one_by_one

    for batch_size in (7, 100, len(events)):
        for message in messages:
            reset(message)
        order = events[:]
        shuffler.shuffle(order)
        outcomes = []
        for start in range(0, len(order), batch_size):
            outcomes += [a.outcome for a in events_apply(events=order[start : start + batch_size], source="sqs")]
        assert [facts(m) for m in messages] == expected, batch_size
        assert sorted(Suppression.objects.values_list("email", flat=True)) == expected_suppressions
        assert EngagementEvent.objects.count() == expected_rows == outcomes.count("applied")
        assert sorted(outcomes) == sorted(one_by_one)


def test_bulk_apply_statements_do_not_grow_with_the_batch(api):
    from django.test.utils import CaptureQueriesContext

    from tracking.apply import events_apply

    messages = [sent_message(api, [f"s{i}@example.com"]) for i in range(60)]
    small = [e for m in messages[:2] for e in ses_body_parse(event(m, "Delivery"))]
    large = [e for m in messages[2:] for e in ses_body_parse(event(m, "Open", seconds=5))]
    with CaptureQueriesContext(connection) as two:
        events_apply(events=small, source="sqs")
    with CaptureQueriesContext(connection) as fifty_eight:
        events_apply(events=large, source="sqs")
    assert len(fifty_eight) <= len(two) + (0 if connection.vendor == "postgresql" else 2), [
        q["sql"][:100] for q in fifty_eight.captured_queries
    ]
    assert set(Message.objects.filter(pk__in=[m.pk for m in messages[2:]]).values_list("status", flat=True)) == {"opened"}


def test_an_event_for_any_spelling_of_an_address_reaches_its_recipient_and_suppresses_the_mailbox(api):
    quoted = sent_message(api, ['"Jane"@Example.NET'])
    bare = sent_message(api, ["kim@example.net"])
    assert list(quoted.recipients.values_list("email", flat=True)) == ["jane@example.net"]
    apply_all([
        event(quoted, "Bounce", ["jane@example.net"], bounce_type="Permanent"),
        event(bare, "Complaint", ['Kim <"K\\im"@EXAMPLE.net>']),
    ])

    assert facts(quoted)["jane@example.net"][0] == "bounced"
    assert facts(bare)["kim@example.net"][0] == "complained"
    assert sorted(Suppression.objects.values_list("email", "reason")) == [
        ("jane@example.net", "hard_bounce"), ("kim@example.net", "complaint"),
    ]
    later = accepted_message(api, ['"JANE"@example.net', "kim@Example.net"])
    assert set(later.recipients.values_list("status", flat=True)) == {"suppressed"}
