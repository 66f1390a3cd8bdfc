"""messages_sweep directly: lost enqueues and dead workers' claims are recovered."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from emailsvc.models import Message
from emailsvc.services.scheduling import messages_sweep
from tests.tracking.scenario import accepted_message, event
from tracking.normalize import ses_body_parse
from tracking.services import event_apply

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def sweep_settings(settings):
    settings.SWEEP_QUEUED_AFTER_SECONDS = 60
    settings.SWEEP_SENDING_AFTER_SECONDS = 600


def ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def test_queued_email_past_its_due_time_is_enqueued_again_once(api):
    stuck = accepted_message(api, ["stuck@example.com"])
    fresh = accepted_message(api, ["fresh@example.com"])
    Message.objects.filter(pk=stuck.pk).update(next_attempt_at=ago(61))

    first, second = messages_sweep(), messages_sweep()

    assert (first.requeued, second.requeued) == (1, 0)
    stuck.refresh_from_db()
    assert stuck.status == "queued" and stuck.next_attempt_at > ago(5)
    fresh.refresh_from_db()
    assert fresh.status == "queued"


def test_email_waiting_for_a_long_retry_is_left_alone_until_due(api):
    waiting = accepted_message(api, ["later@example.com"])
    Message.objects.filter(pk=waiting.pk).update(next_attempt_at=timezone.now() + timedelta(hours=1), last_error="Daily message quota exceeded")

    assert messages_sweep().requeued == 0


def test_sending_left_by_a_dead_worker_without_provider_evidence_goes_back_to_queued(api):
    message = accepted_message(api, ["orphan@example.com"])
    Message.objects.filter(pk=message.pk).update(status="sending", sending_started_at=ago(601), attempts=1)

    result = messages_sweep()

    assert result.recovered_requeued == 1
    message.refresh_from_db()
    assert message.status == "queued"
    assert "stopped while sending" in message.last_error


def test_sending_left_by_a_dead_worker_after_the_provider_accepted_is_recorded_as_sent(api):
    message = accepted_message(api, ["accepted@example.com"], group_id="g")
    Message.objects.filter(pk=message.pk).update(status="sending", sending_started_at=ago(601), attempts=1)
    message.refresh_from_db()
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
    assert (message.status, message.provider_message_id) == ("sent", "ses-accepted-id")
    assert message.recipients.get().status == "sent"


def test_claim_younger_than_the_threshold_is_not_touched(api):
    message = accepted_message(api, ["busy@example.com"])
    Message.objects.filter(pk=message.pk).update(status="sending", sending_started_at=ago(30))

    result = messages_sweep()

    assert (result.recovered_sent, result.recovered_requeued) == (0, 0)
    message.refresh_from_db()
    assert message.status == "sending"


def test_queued_email_stored_before_due_times_existed_is_swept_too(api):
    old = accepted_message(api, ["old@example.com"])
    Message.objects.filter(pk=old.pk).update(next_attempt_at=None, created_at=ago(61))

    assert messages_sweep().requeued == 1
    old.refresh_from_db()
    assert old.next_attempt_at is not None
