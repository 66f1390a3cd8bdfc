"""SES events on moto's SQS (real HTTP) → the drain task → stored facts and API answers."""

import json

import pytest

from core.redisclient import redis_client
from emailsvc.models import Message, Recipient, Suppression
from tests.conftest import wait_for_status
from tests.tracking.scenario import detail, drain, event, sent_message
from tests.tracking.sesevents import TOPIC_VALIDATED_MESSAGE, ses_event, sns_envelope
from tracking.drain import drain_lock_name, events_drain
from tracking.models import EngagementEvent

pytestmark = pytest.mark.django_db


def test_delivery_event_marks_recipient_delivered_and_shows_in_timeline(api, events_queue):
    message = sent_message(api, ["jane@example.com"])
    events_queue.put(event(message, "Send", seconds=1), event(message, "Delivery", seconds=3))

    result = drain()

    assert result["applied"] == 2 and result["deleted"] == 2
    assert events_queue.depth() == 0
    record = detail(api, message)
    assert record["status"] == "delivered"
    (recipient,) = record["recipients"]
    assert recipient["status"] == "delivered"
    assert recipient["delivered_at"].startswith("2026-11-20T10:00:03")
    assert [e["type"] for e in record["events"]] == ["send", "delivery"]
    assert record["events"][1]["recipient"] == "jane@example.com"
    assert record["events"][1]["detail"]["smtp_response"].startswith("250")


def test_permanent_bounce_records_facts_and_suppresses_address(api, events_queue):
    message = sent_message(api, ["gone@example.com"])
    events_queue.put(
        event(message, "Bounce", bounce_type="Permanent", bounce_subtype="General", diagnostic="smtp; 550 5.1.1 user unknown")
    )

    drain()

    (recipient,) = detail(api, message)["recipients"]
    assert recipient["status"] == "bounced"
    assert recipient["bounce"]["type"] == "Permanent"
    assert recipient["bounce"]["subtype"] == "General"
    assert recipient["bounce"]["diagnostic"] == "smtp; 550 5.1.1 user unknown"
    suppression = Suppression.objects.get(email="gone@example.com")
    assert suppression.reason == "hard_bounce"
    assert suppression.source.startswith("ses:bounce:")


@pytest.mark.parametrize("bounce_type,subtype", [("Transient", "MailboxFull"), ("Undetermined", "Undetermined")])
def test_soft_bounce_is_recorded_without_suppression(api, events_queue, bounce_type, subtype):
    message = sent_message(api, ["full@example.com"])
    events_queue.put(event(message, "Bounce", bounce_type=bounce_type, bounce_subtype=subtype))

    drain()

    (recipient,) = detail(api, message)["recipients"]
    assert recipient["status"] == "soft_bounced"
    assert recipient["bounce"]["type"] == bounce_type
    assert not Suppression.objects.filter(email="full@example.com").exists()


def test_complaint_after_delivery_records_feedback_and_suppresses(api, events_queue):
    message = sent_message(api, ["angry@example.com"])
    events_queue.put(event(message, "Delivery", seconds=2), event(message, "Complaint", seconds=30, feedback_type="abuse"))

    drain()

    (recipient,) = detail(api, message)["recipients"]
    assert recipient["status"] == "complained"
    assert recipient["delivered_at"] is not None
    assert recipient["complained_at"].startswith("2026-11-20T10:00:30")
    assert recipient["complaint_feedback_type"] == "abuse"
    assert Suppression.objects.get(email="angry@example.com").reason == "complaint"


def test_opens_and_clicks_are_listed_counted_and_raise_status(api, events_queue):
    message = sent_message(api, ["reader@example.com"])
    events_queue.put(
        event(message, "Delivery", seconds=2),
        event(message, "Open", seconds=20),
        event(message, "Open", seconds=40),
        event(message, "Click", seconds=50, link="https://example.com/offer"),
    )

    drain()

    (recipient,) = detail(api, message)["recipients"]
    assert recipient["status"] == "clicked"
    assert recipient["open_count"] == 2
    assert [o["opened_at"][:19] for o in recipient["opens"]] == ["2026-11-20T10:00:20", "2026-11-20T10:00:40"]
    assert recipient["last_opened_at"].startswith("2026-11-20T10:00:40")
    assert recipient["click_count"] == 1
    assert recipient["clicks"][0]["url"] == "https://example.com/offer"


def test_delivery_delay_counts_and_marks_delayed(api, events_queue):
    message = sent_message(api, ["slow@example.com"])
    events_queue.put(event(message, "DeliveryDelay", delay_type="TransientCommunicationFailure"))

    drain()

    (recipient,) = detail(api, message)["recipients"]
    assert recipient["status"] == "delayed"
    assert recipient["delayed"] == 1


@pytest.mark.parametrize(
    "event_type,details,reason",
    [
        ("Reject", {"reason": "Bad content"}, "Bad content"),
        ("Rendering Failure", {"error_message": "Attribute 'name' is not present"}, "Attribute 'name' is not present"),
    ],
)
def test_reject_and_rendering_failure_fail_the_recipient(api, events_queue, event_type, details, reason):
    message = sent_message(api, ["x@example.com"])
    events_queue.put(event(message, event_type, **details))

    drain()

    record = detail(api, message)
    assert record["status"] == "failed"
    assert reason in record["recipients"][0]["failed_reason"]


def test_subscription_unsubscribe_all_suppresses_without_changing_status(api, events_queue):
    message = sent_message(api, ["optout@example.com"])
    events_queue.put(event(message, "Subscription", unsubscribe_all=True, contact_list="Newsletter"))

    drain()

    assert detail(api, message)["recipients"][0]["status"] == "sent"
    suppression = Suppression.objects.get(email="optout@example.com")
    assert suppression.reason == "unsubscribe"
    assert suppression.note == "Newsletter"


@pytest.mark.parametrize("event_type,status", [("Delivery", "delivered"), ("Bounce", "bounced"), ("Complaint", "complained")])
def test_older_notification_format_is_read_too(api, events_queue, event_type, status):
    message = sent_message(api, ["old@example.com"])
    body = ses_event(event_type, message_id=message.provider_message_id, recipients=["old@example.com"], fmt="notification")
    events_queue.put(sns_envelope(body))

    drain()

    assert detail(api, message)["recipients"][0]["status"] == status


def test_raw_message_delivery_body_without_envelope_is_applied_once(api, events_queue):
    message = sent_message(api, ["raw@example.com"])
    bare = ses_event("Delivery", message_id=message.provider_message_id, recipients=["raw@example.com"])
    events_queue.put(bare, bare)

    result = drain()

    assert (result["applied"], result["duplicates"]) == (1, 1)
    assert detail(api, message)["recipients"][0]["status"] == "delivered"


def test_event_without_known_provider_id_is_matched_by_tracking_header(api, events_queue):
    message = sent_message(api, ["Jane@Example.com"], group_id="invites/2026")
    body = ses_event(
        "Delivery",
        message_id="0100018c-unknown-provider-id",
        recipients=["Jane <Jane@Example.com>"],
        headers={"X-Emailsvc-Tracking-ID": f"invites%2F2026/{message.email_id}"},
    )
    events_queue.put(sns_envelope(body))

    drain()

    assert detail(api, message)["recipients"][0]["status"] == "delivered"


def test_event_for_unknown_message_is_stored_and_counted(api, events_queue):
    events_queue.put(sns_envelope(ses_event("Delivery", message_id="nobody-sent-this", recipients=["who@example.com"])))

    result = drain()

    assert (result["applied"], result["unmatched"], result["deleted"]) == (0, 1, 1)
    stored = EngagementEvent.objects.get()
    assert stored.message is None and stored.recipient_email == "who@example.com"
    assert stored.raw["mail"]["messageId"] == "nobody-sent-this"


def test_control_messages_are_acknowledged_and_ignored(events_queue):
    events_queue.put(sns_envelope(TOPIC_VALIDATED_MESSAGE), {"notificationType": "AmazonSnsSubscriptionSucceeded", "mail": {}})

    result = drain()

    assert result["deleted"] == 2
    assert events_queue.depth() == 0
    assert not EngagementEvent.objects.exists()


def test_malformed_messages_stay_on_the_queue_for_the_dead_letter_queue(api, events_queue):
    message = sent_message(api, ["ok@example.com"])
    events_queue.put("not json at all", {"Type": "Notification", "Message": "{\"no\": \"mail\"}"}, event(message, "Delivery"))

    result = drain()

    assert (result["malformed"], result["applied"], result["deleted"]) == (2, 1, 1)
    assert events_queue.depth() == 2
    assert detail(api, message)["recipients"][0]["status"] == "delivered"


def test_more_than_one_receive_per_run_drains_the_whole_queue(api, events_queue):
    message = sent_message(api, ["many@example.com"])
    events_queue.put(*[event(message, "Open", seconds=20 + i) for i in range(25)])

    result = drain()

    assert result["receives"] >= 3
    assert (result["applied"], result["deleted"]) == (25, 25)
    assert detail(api, message)["recipients"][0]["open_count"] == 25


def test_no_more_drains_than_the_concurrency_run_at_once(api, events_queue, settings):
    settings.SES_EVENTS_DRAIN_CONCURRENCY = 2
    message = sent_message(api, ["one@example.com"])
    events_queue.put(event(message, "Delivery"))
    # Two drains hold the two slots (on other machines, say).
    locks = [redis_client().lock(drain_lock_name(events_queue.url, slot), timeout=30) for slot in (0, 1)]
    assert all(lock.acquire(blocking=False) for lock in locks)
    try:
        result = events_drain()
    finally:
        locks[1].release()
    assert result.skipped == "all 2 drain slots are taken" and result.received == 0
    assert events_queue.depth() == 1

    try:
        assert events_drain().applied == 1  # a slot is free again
    finally:
        locks[0].release()


@pytest.mark.django_db(transaction=True)
def test_two_drains_at_once_apply_every_event_exactly_once(api, events_queue, settings):
    """Parallel drains on one queue: applying is idempotent and locks rows in one order."""
    import threading

    from django.db import connection

    settings.SES_EVENTS_DRAIN_CONCURRENCY = 2
    settings.SES_EVENTS_APPLY_BATCH = 10
    # Committed, so the suite's worker (if one runs) may deliver them first: wait for the record.
    messages = [wait_for_status(sent_message(api, [f"p{i}@example.com", f"q{i}@example.com"]).email_id) for i in range(20)]
    envelopes = [event(m, kind, seconds=s) for m in messages for kind, s in (("Delivery", 1), ("Open", 2))]
    events_queue.put(*envelopes, *envelopes[:10])  # and some replays
    results = []

    def drain():
        try:
            results.append(events_drain(max_seconds=10))
        finally:
            connection.close()

    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises writers: two drains cannot overlap")
    threads = [threading.Thread(target=drain) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # SQS delivers at least once: moto, like SQS, may hand one message to both
    # receivers at the same moment. Each such extra receipt is a duplicate, never
    # applied twice.
    received = sum(r.received for r in results)
    assert received >= 50
    assert sum(r.applied for r in results) == 80  # 40 envelopes × 2 recipients
    assert sum(r.duplicates for r in results) == 20 + 2 * (received - 50)
    assert events_queue.depth() == 0
    assert set(Recipient.objects.filter(message__in=messages).values_list("status", flat=True)) == {"opened"}


def test_without_a_queue_the_drain_is_a_no_op(settings):
    settings.SES_EVENTS_QUEUE_URL = ""
    settings.EMAIL_PROVIDER = "smtp"

    assert events_drain().skipped == "no SES_EVENTS_QUEUE_URL"


# --- Replays and order -------------------------------------------------------


def _facts(message: Message) -> dict:
    """A message's facts with the provider's event ids left out, to compare two messages."""
    message.refresh_from_db()
    facts = {"status": message.status, "events": EngagementEvent.objects.filter(message=message).count()}
    for recipient in message.recipients.all():
        bounce = dict(recipient.bounce or {})
        bounce.pop("event_id", None)
        facts[recipient.email.split("@")[0]] = {
            "status": recipient.status,
            "delivered_at": recipient.delivered_at,
            "delayed": recipient.delayed,
            "opens": [o["opened_at"] for o in recipient.opens],
            "open_count": recipient.open_count,
            "last_opened_at": recipient.last_opened_at,
            "clicks": [(c["url"], c["clicked_at"]) for c in recipient.clicks],
            "bounce": bounce,
            "complained_at": recipient.complained_at,
            "complaint_feedback_type": recipient.complaint_feedback_type,
        }
    return facts


def _story(message: Message) -> list[dict]:
    """Everything that can happen to the recipients a, b and c of one message."""
    a, b, c = (f"{name}@example.com" for name in "abc")
    return [
        event(message, "Send", seconds=0),
        event(message, "DeliveryDelay", [a], seconds=5),
        event(message, "Delivery", [a], seconds=60),
        event(message, "Open", [a], seconds=70),
        event(message, "Open", [a], seconds=80),
        event(message, "Click", [a], seconds=90, link="https://example.com/a"),
        event(message, "Complaint", [a], seconds=300),
        event(message, "Bounce", [b], seconds=10, bounce_type="Transient", bounce_subtype="MailboxFull"),
        event(message, "Bounce", [b], seconds=20, bounce_type="Permanent", bounce_subtype="General"),
        event(message, "Delivery", [c], seconds=3),
        event(message, "Open", [c], seconds=30),
    ]


def test_replayed_and_reordered_events_give_identical_facts(api, events_queue):
    recipients = ["a@example.com", "b@example.com", "c@example.com"]
    in_order = sent_message(api, recipients, group_id="replay")
    shuffled = sent_message(api, recipients, group_id="replay")

    events_queue.put(*_story(in_order))
    first = drain()
    story = _story(shuffled)
    events_queue.put(*reversed(story))
    events_queue.put(*story)  # every event of the second message twice
    second = drain()
    expected = _facts(in_order)

    assert first["applied"] == 13 and first["duplicates"] == 0
    assert second["applied"] == 13 and second["duplicates"] == 13
    assert _facts(shuffled) == expected
    assert expected["status"] == "complained"
    assert expected["a"]["status"] == "complained" and expected["a"]["open_count"] == 2 and expected["a"]["delayed"] == 1
    assert expected["b"]["status"] == "bounced" and expected["b"]["bounce"]["type"] == "Permanent"
    assert expected["c"]["status"] == "opened"

    # The same SNS messages once more: nothing changes at all.
    events_queue.put(*story)
    third = drain()
    assert third["applied"] == 0 and third["duplicates"] == 13
    assert _facts(shuffled) == expected


def test_a_replay_is_known_by_its_sns_message_id_and_not_read_again(api, events_queue):
    """SNS delivers at least once: a notification whose MessageId is stored was
    applied whole, so its copy is acknowledged without being read again."""
    message = sent_message(api, ["one@example.com", "two@example.com"])
    delivery = event(message, "Delivery")
    events_queue.put(delivery)
    assert drain()["applied"] == 2

    copy = dict(delivery, Message="{}")  # what it says is not looked at again
    events_queue.put(copy, delivery)
    replay = drain()

    assert (replay["applied"], replay["duplicates"], replay["malformed"], replay["deleted"]) == (0, 4, 0, 2)
    assert events_queue.depth() == 0
    assert EngagementEvent.objects.count() == 2
    stored = EngagementEvent.objects.filter(recipient_email="one@example.com").get()
    assert stored.raw == json.loads(delivery["Message"])  # the SES event, stored as it came


def test_unreachable_queue_is_reported_not_raised(settings, events_queue):
    settings.SES_EVENTS_QUEUE_URL = events_queue.url.rsplit("/", 1)[0] + "/no-such-queue"

    result = drain()

    assert result["received"] == 0
    assert result["errors"] and result["errors"][0].startswith("receive failed")


def test_the_drain_reports_its_lag_and_what_waits_in_readyz(api, client, events_queue, settings):
    settings.SES_EVENTS_APPLY_BATCH = 10
    message = sent_message(api, ["lag@example.com"])
    events_queue.put(*[event(message, "Open", seconds=s) for s in range(25)])

    result = events_drain(max_seconds=0.001)  # stops after its first batch of ten

    assert (result.applied, result.batches) == (10, 1)
    assert result.lag_seconds is not None and result.lag_seconds >= 0
    assert result.waiting == 15
    detail = client.get("/readyz").json()["events"]
    assert detail["queue_depth"] == 15
    assert detail["last_drain"]["waiting"] == 15 and detail["last_drain"]["applied"] == 10
    assert detail["last_drain"]["lag_seconds"] == result.lag_seconds
    assert 0 <= detail["last_drain"]["age_seconds"] < 60
