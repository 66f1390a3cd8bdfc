"""messages_sweep directly: work no task will take gets one, dead workers' claims are recovered
(from the delivery journal, from provider events, or by sending again — counted as attempts)."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from config.celery import app
from emailsvc.models import Message, StatusChange
from emailsvc.services.delivery import SendOutcome, _journal_write, _load
from emailsvc.services.queueing import delivery_enqueue, delivery_queue_depths
from emailsvc.services.scheduling import messages_sweep
from tests.tracking.scenario import accepted_message, event
from tracking.apply import event_apply
from tracking.normalize import ses_body_parse

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def sweep_settings(settings):
    settings.SWEEP_QUEUED_AFTER_SECONDS = 60
    settings.SWEEP_SENDING_AFTER_SECONDS = 600
    settings.DELIVERY_MAX_ATTEMPTS = 3
    app.control.purge()  # the broker's delivery queues start empty
    yield
    app.control.purge()


def ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def claimed_by_a_dead_worker(message: Message, *, attempts: int = 1, seconds_ago: float = 601) -> Message:
    Message.objects.filter(pk=message.pk).update(
        state="sending", status="sending", sending_started_at=ago(seconds_ago), attempts=attempts
    )
    message.refresh_from_db()
    return message


def test_overdue_email_whose_queue_is_empty_gets_a_task_once(api):
    stuck = accepted_message(api, ["stuck@example.com"])
    accepted_message(api, ["fresh@example.com"])  # due, but not for long: its own task may still come
    Message.objects.filter(pk=stuck.pk).update(next_attempt_at=ago(61))

    first, second = messages_sweep(), messages_sweep()

    assert (first.published, second.published) == (1, 0)  # the second sees the first's task waiting
    assert delivery_queue_depths()["normal"] == 1


def test_overdue_email_behind_a_backlog_is_left_to_the_queued_tasks(api):
    accepted_message(api, ["waiting@example.com"], priority="low")
    Message.objects.update(next_attempt_at=ago(300))
    delivery_enqueue(priority="low", tasks=3)  # the backlog's own tasks

    assert messages_sweep().published == 0
    assert delivery_queue_depths()["low"] == 3


def test_email_waiting_for_a_long_retry_is_left_alone_until_due(api):
    waiting = accepted_message(api, ["later@example.com"])
    Message.objects.filter(pk=waiting.pk).update(next_attempt_at=timezone.now() + timedelta(hours=1), last_error="Daily message quota exceeded")

    assert messages_sweep().published == 0


def test_sending_left_by_a_dead_worker_without_any_answer_goes_back_to_queued(api):
    message = claimed_by_a_dead_worker(accepted_message(api, ["orphan@example.com"]))

    result = messages_sweep()

    assert result.recovered_requeued == 1
    message.refresh_from_db()
    assert (message.status, message.state, message.attempts) == ("queued", "queued", 1)
    assert "stopped while sending" in message.last_error
    assert delivery_queue_depths()["normal"] == 1


def test_a_message_whose_workers_keep_dying_fails_after_the_attempt_limit(api):
    message = claimed_by_a_dead_worker(accepted_message(api, ["cursed@example.com"]), attempts=3)

    result = messages_sweep()

    assert result.recovered_failed == 1
    message.refresh_from_db()
    assert (message.status, message.state) == ("failed", "done")
    assert message.recipients.get().failed_reason == "the worker stopped while sending, 3 times"


def test_the_journaled_answer_of_a_dead_worker_is_recorded_not_sent_again(api):
    message = claimed_by_a_dead_worker(accepted_message(api, ["journaled@example.com", "refused@example.com"]))
    outgoing = _load([message.pk])[message.pk]
    ok, refused = (r.id for r in sorted(outgoing.recipients, key=lambda r: r.email))
    # What the worker's send slot wrote right after the provider answered, before it died.
    _journal_write(outgoing, SendOutcome(
        provider_message_id="provider-42", sent_at=ago(602), sent=[ok], failed={refused: "550 5.1.1 no such user"},
    ))

    result = messages_sweep()

    assert result.recovered_journal == 1
    message.refresh_from_db()
    assert (message.status, message.state, message.provider_message_id) == ("sent", "done", "provider-42")
    statuses = dict(message.recipients.values_list("email", "status"))
    assert statuses == {"journaled@example.com": "sent", "refused@example.com": "failed"}
    assert StatusChange.objects.filter(message=message).count() == 2
    assert delivery_queue_depths()["normal"] == 0  # nothing is sent again


def test_a_journal_entry_of_an_earlier_attempt_is_not_taken_for_this_one(api):
    message = claimed_by_a_dead_worker(accepted_message(api, ["again@example.com"]), attempts=1)
    outgoing = _load([message.pk])[message.pk]
    _journal_write(outgoing, SendOutcome(provider_message_id="old", sent_at=ago(900), sent=[outgoing.recipients[0].id]))
    claimed_by_a_dead_worker(message, attempts=2)  # claimed again since; that attempt left nothing

    assert messages_sweep().recovered_requeued == 1


def test_sending_left_by_a_dead_worker_after_the_provider_accepted_is_recorded_as_sent(api):
    message = claimed_by_a_dead_worker(accepted_message(api, ["accepted@example.com"], group_id="g"))
    # SES's Send event, matched by X-Emailsvc-Tracking-ID: the provider id was never recorded.
    envelope = event(message, "Send")
    body = json.loads(envelope["Message"])
    body["mail"]["messageId"] = "ses-accepted-id"
    body["mail"]["headers"].append({"name": "X-Emailsvc-Tracking-ID", "value": f"g/{message.email_id}"})
    envelope["Message"] = json.dumps(body)
    for normalized in ses_body_parse(envelope):
        event_apply(event=normalized, source="sqs")

    result = messages_sweep()

    assert result.recovered_sent == 1
    message.refresh_from_db()
    assert (message.status, message.state, message.provider_message_id) == ("sent", "done", "ses-accepted-id")
    assert message.recipients.get().status == "sent"


def test_claim_younger_than_the_threshold_is_not_touched(api):
    message = claimed_by_a_dead_worker(accepted_message(api, ["busy@example.com"]), seconds_ago=30)

    result = messages_sweep()

    assert (result.recovered_sent, result.recovered_requeued, result.recovered_journal) == (0, 0, 0)
    message.refresh_from_db()
    assert (message.status, message.state) == ("sending", "sending")
