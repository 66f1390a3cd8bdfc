"""messages_sweep directly: work no task will take gets one, dead workers' claims are recovered
(from the delivery journal, or by sending again — counted as attempts); a recipient is never
recorded `sent` without the answer of the attempt that sent it."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from config.celery import app
from emailsvc.delivery import journal
from emailsvc.delivery.chunks import SendOutcome, chunk_load
from emailsvc.delivery.queueing import delivery_enqueue, delivery_queue_depths
from emailsvc.delivery.scheduling import messages_sweep
from emailsvc.models import DeliveryJournal, DeliveryProcess, Message, StatusChange
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


def claimed_by_a_dead_worker(
    message: Message, *, attempts: int = 1, seconds_ago: float = 601, claimed_by: str = "dead-process"
) -> Message:
    Message.objects.filter(pk=message.pk).update(
        state="sending", status="sending", sending_started_at=ago(seconds_ago), attempts=attempts, claimed_by=claimed_by
    )
    message.refresh_from_db()
    return message


def journaled(message: Message, outcome: SendOutcome, *, attempt: int | None = None) -> None:
    """What the worker's send slot wrote right after the provider answered, before it died."""
    DeliveryJournal.objects.update_or_create(
        message_id=message.pk,
        defaults={"attempt": attempt or message.attempts, "outcome": outcome.journal(), "written_at": timezone.now()},
    )


def beating(token: str, *, seconds_ago: float) -> None:
    now = timezone.now()
    DeliveryProcess.objects.create(token=token, hostname="host", pid=1, started_at=ago(3600), beat_at=now - timedelta(seconds=seconds_ago))


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
    outgoing = chunk_load([message.pk])[message.pk]
    ok, refused = (r.id for r in sorted(outgoing.recipients, key=lambda r: r.email))
    journaled(message, SendOutcome(
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
    assert not DeliveryJournal.objects.filter(message=message).exists()  # recorded: the entry is gone


def test_a_journal_entry_of_an_earlier_attempt_is_not_taken_for_this_one(api):
    message = claimed_by_a_dead_worker(accepted_message(api, ["again@example.com"]), attempts=1)
    outgoing = chunk_load([message.pk])[message.pk]
    journaled(message, SendOutcome(provider_message_id="old", sent_at=ago(900), sent=[outgoing.recipients[0].id]))
    claimed_by_a_dead_worker(message, attempts=2)  # claimed again since; that attempt left nothing

    assert messages_sweep().recovered_requeued == 1


def test_a_claim_whose_every_recipient_events_moved_on_is_done_with_their_facts(api):
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

    assert result.recovered_done == 1
    message.refresh_from_db()
    assert (message.status, message.state, message.provider_message_id) == ("sent", "done", "ses-accepted-id")
    assert message.recipients.get().status == "sent"
    assert delivery_queue_depths()["normal"] == 0


def test_a_recipient_sent_by_an_earlier_attempt_is_no_evidence_for_a_pending_one(api):
    """Attempt 1 sent the first recipient and was deferred (451) for the second; attempt 2
    died without an answer. The second recipient was never sent: it is queued again, not
    recorded `sent` with attempt 1's provider id."""
    message = accepted_message(api, ["first@example.com", "second@example.com"])
    outgoing = chunk_load([message.pk])[message.pk]
    first, second = (r.id for r in sorted(outgoing.recipients, key=lambda r: r.email))
    claimed_by_a_dead_worker(message, attempts=1)
    journaled(message, SendOutcome(
        provider_message_id="attempt-1", sent_at=ago(700), sent=[first], deferred={second: "451 4.3.0 try later"},
    ))
    assert messages_sweep().recovered_journal == 1
    claimed_by_a_dead_worker(message, attempts=2)  # the retry was claimed, then its worker was killed

    result = messages_sweep()

    assert (result.recovered_requeued, result.recovered_done, result.recovered_journal) == (1, 0, 0)
    statuses = dict(message.recipients.values_list("email", "status"))
    assert statuses == {"first@example.com": "sent", "second@example.com": "queued"}
    changes = list(StatusChange.objects.filter(message=message).values_list("email", "from_status", "to_status"))
    assert changes == [("first@example.com", "queued", "sent")]
    message.refresh_from_db()
    assert (message.state, message.attempts, message.provider_message_id) == ("queued", 2, "attempt-1")
    assert delivery_queue_depths()["normal"] == 1


def test_claims_of_a_process_that_still_beats_are_left_alone_however_old(api):
    message = claimed_by_a_dead_worker(accepted_message(api, ["slow@example.com"]), seconds_ago=3600, claimed_by="alive")
    beating("alive", seconds_ago=5)

    assert messages_sweep().recovered_requeued == 0
    message.refresh_from_db()
    assert message.state == "sending"


def test_claims_of_a_process_silent_for_the_lease_are_recovered(api, settings):
    settings.SWEEP_SENDING_AFTER_SECONDS = 60
    message = claimed_by_a_dead_worker(accepted_message(api, ["gone@example.com"]), seconds_ago=65, claimed_by="gone")
    beating("gone", seconds_ago=61)

    assert messages_sweep().recovered_requeued == 1
    message.refresh_from_db()
    assert (message.state, message.status) == ("queued", "queued")


def test_this_process_claims_under_its_own_name_and_beats_with_the_claim(api):
    message = accepted_message(api, ["mine@example.com"])
    from emailsvc.delivery.engine import deliver_due

    journal._this_process().beaten_at = None  # an earlier test's beat was rolled back with it

    assert deliver_due().claimed == 1

    message.refresh_from_db()
    assert message.claimed_by == journal.process_token()
    assert DeliveryProcess.objects.filter(token=journal.process_token()).exists()


def test_claim_younger_than_the_threshold_is_not_touched(api):
    message = claimed_by_a_dead_worker(accepted_message(api, ["busy@example.com"]), seconds_ago=30)

    result = messages_sweep()

    assert (result.recovered_done, result.recovered_requeued, result.recovered_journal) == (0, 0, 0)
    message.refresh_from_db()
    assert (message.status, message.state) == ("sending", "sending")
