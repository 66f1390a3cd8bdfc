"""POST /webhooks/ses/ (tracking.apis.SesSnsWebhookView), end to end through Django.

Every body is signed the way Amazon SNS signs (tests.tracking.snssign) around SES
event JSON shaped as AWS documents it (tests.tracking.sesevents). The messages the
events are about are real: accepted through the API and delivered in-process with
the console provider, so they carry a provider_message_id to correlate with.
Subscription confirmations are sent to a real moto server over HTTP.

Tests are plain `db` tests: nothing is committed, so on_commit never enqueues a
delivery task and the test alone decides when delivery runs.
"""

import json
import uuid
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from emailsvc.models import Message, Suppression
from tests.conftest import deliver_now
from tests.tracking.sesevents import (
    TOPIC_VALIDATED_MESSAGE,
    iso,
    ses_event,
    sns_envelope,
    sns_request_meta,
    subscription_confirmation,
)
from tests.tracking.snssign import (
    TOPIC_ARN,
    signing_key_create,
    sns_sign,
    trust_test_certificate,
)
from tracking import sns as tracking_sns
from tracking.models import EngagementEvent

pytestmark = pytest.mark.django_db

URL = "/webhooks/ses/"
JANE = "jane@example.com"
FOREIGN_CERT_URL = "https://sns.us-east-1.amazonaws.com.evil.example/x.pem"


# --- fixtures and helpers -----------------------------------------------------


@pytest.fixture(autouse=True)
def sns_trust(settings, monkeypatch):
    """Trust the test signing certificate, allow the test topic, never touch the network."""
    trust_test_certificate()

    def no_download(url):
        raise AssertionError(f"the webhook tried to download a certificate: {url}")

    monkeypatch.setattr(tracking_sns, "_certificate_download", no_download)
    settings.SNS_ALLOWED_TOPIC_ARNS = [TOPIC_ARN]
    settings.SNS_MAX_AGE_SECONDS = 3600


@pytest.fixture
def sent_message(api) -> Message:
    """A real message to jane@example.com in group g1, delivered by the console provider."""
    response = api.post(
        "/api/v1/emails",
        json.dumps({"to": [JANE], "subject": "s", "text": "t", "group_id": "g1"}),
        content_type="application/json",
    )
    assert response.status_code == 202, response.content
    message = Message.objects.get(email_id=response.json()["email_id"])
    deliver_now()
    message.refresh_from_db()
    assert message.status == "sent"
    assert message.provider_message_id
    return message


def signed_notification(event, *, topic_arn=TOPIC_ARN, sns_message_id=None, timestamp=None, **sign) -> dict:
    """`event` (an SES event dict or a string) in an SNS Notification, signed."""
    return sns_sign(sns_envelope(event, topic_arn=topic_arn, sns_message_id=sns_message_id, timestamp=timestamp), **sign)


def post(client, body: dict, *, url: str = URL, **meta):
    """POST `body` as SNS does: text/plain JSON with the x-amz-sns-* headers."""
    return client.post(
        url, json.dumps(body), content_type="text/plain; charset=UTF-8", **(sns_request_meta(body) | meta)
    )


def recipient_of(message: Message, email: str = JANE):
    return message.recipients.get(email=email)


def detail(api, message: Message) -> dict:
    response = api.get(f"/api/v1/emails/{message.email_id}")
    assert response.status_code == 200, response.content
    return response.json()


def assert_nothing_applied(message: Message, email: str = JANE) -> None:
    message.refresh_from_db()
    recipient = recipient_of(message, email)
    assert EngagementEvent.objects.count() == 0
    assert message.status == "sent"
    assert recipient.status == "sent"
    assert recipient.delivered_at is None and recipient.bounce is None and recipient.complained_at is None
    assert not Suppression.objects.filter(email=email).exists()


def hard_bounce(message: Message, **details) -> dict:
    return ses_event(
        "Bounce", message_id=message.provider_message_id, recipients=[JANE],
        bounce_type="Permanent", bounce_subtype="General", **details,
    )


# --- applying genuine notifications -------------------------------------------


@pytest.mark.parametrize("version", ["2", "1"])
def test_signed_delivery_marks_the_recipient_delivered(client, api, sent_message, version):
    event = ses_event("Delivery", message_id=sent_message.provider_message_id, recipients=[JANE])
    body = signed_notification(event, version=version)

    response = post(client, body)

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "applied": 1, "duplicate": 0, "unmatched": 0}
    shown = detail(api, sent_message)
    assert shown["status"] == "delivered"
    (recipient,) = shown["recipients"]
    assert recipient["email"] == JANE
    assert recipient["status"] == "delivered"
    assert recipient["delivered_at"] is not None
    assert datetime.fromisoformat(recipient["delivered_at"]) == datetime.fromisoformat(
        event["delivery"]["timestamp"].replace("Z", "+00:00")
    )
    (timeline_event,) = shown["events"]
    assert timeline_event["type"] == "delivery"
    assert timeline_event["event_id"] == body["MessageId"]
    assert timeline_event["recipient"] == JANE
    stored = EngagementEvent.objects.get()
    assert stored.source == "sns"
    assert stored.message_id == sent_message.pk
    assert stored.recipient_id == recipient_of(sent_message).pk


def test_the_url_without_its_trailing_slash_answers_the_same_without_a_redirect(client, api, sent_message):
    """SNS does not follow redirects: a topic subscribed to /webhooks/ses must get the same answers."""
    event = ses_event("Delivery", message_id=sent_message.provider_message_id, recipients=[JANE])
    body = signed_notification(event)

    response = post(client, body, url="/webhooks/ses")
    replayed = post(client, body, url="/webhooks/ses/")
    forged = post(client, {**body, "Message": "{}"}, url="/webhooks/ses")

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "applied": 1, "duplicate": 0, "unmatched": 0}
    assert replayed.json() == {"status": "ok", "applied": 0, "duplicate": 1, "unmatched": 0}
    assert detail(api, sent_message)["status"] == "delivered"
    assert forged.status_code == 403, forged.content
    assert forged.json() == post(client, {**body, "Message": "{}"}).json()


def test_event_is_correlated_by_the_tracking_header_when_the_ses_id_is_unknown(client, api, sent_message):
    event = ses_event(
        "Delivery", message_id=f"unknown-{uuid.uuid4()}", recipients=[JANE],
        headers={"X-Emailsvc-Tracking-ID": f"g1/{sent_message.email_id}"},
    )

    response = post(client, signed_notification(event))

    assert response.status_code == 200, response.content
    assert response.json()["applied"] == 1
    assert detail(api, sent_message)["status"] == "delivered"
    assert EngagementEvent.objects.get().message_id == sent_message.pk


def test_signed_permanent_bounce_bounces_and_suppresses(client, api, sent_message):
    event = hard_bounce(sent_message, diagnostic="smtp; 550 5.1.1 user unknown")
    body = signed_notification(event)

    response = post(client, body)

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "applied": 1, "duplicate": 0, "unmatched": 0}
    shown = detail(api, sent_message)
    assert shown["status"] == "bounced"
    (recipient,) = shown["recipients"]
    assert recipient["status"] == "bounced"
    bounce = recipient["bounce"]
    assert bounce["type"] == "Permanent"
    assert bounce["subtype"] == "General"
    assert bounce["diagnostic"] == "smtp; 550 5.1.1 user unknown"
    assert bounce["event_id"] == body["MessageId"]
    assert datetime.fromisoformat(bounce["at"]) == datetime.fromisoformat(
        event["bounce"]["timestamp"].replace("Z", "+00:00")
    )
    assert [e["type"] for e in shown["events"]] == ["bounce"]
    suppression = Suppression.objects.get(email=JANE)
    assert suppression.reason == Suppression.Reason.HARD_BOUNCE


def test_signed_complaint_marks_complained_and_suppresses(client, api, sent_message):
    event = ses_event("Complaint", message_id=sent_message.provider_message_id, recipients=[JANE])

    response = post(client, signed_notification(event))

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "applied": 1, "duplicate": 0, "unmatched": 0}
    shown = detail(api, sent_message)
    assert shown["status"] == "complained"
    (recipient,) = shown["recipients"]
    assert recipient["status"] == "complained"
    assert recipient["complained_at"] is not None
    assert recipient["complaint_feedback_type"] == "abuse"
    assert [e["type"] for e in shown["events"]] == ["complaint"]
    assert Suppression.objects.get(email=JANE).reason == Suppression.Reason.COMPLAINT


def test_recipient_is_matched_whatever_the_case_and_display_name(client, sent_message):
    event = ses_event(
        "Bounce", message_id=sent_message.provider_message_id, recipients=["Jane Doe <JANE@Example.com>"],
        bounce_type="Permanent", bounce_subtype="General",
    )

    response = post(client, signed_notification(event))

    assert response.json()["applied"] == 1
    assert recipient_of(sent_message).status == "bounced"
    assert EngagementEvent.objects.get().recipient_email == JANE
    assert Suppression.objects.filter(email=JANE).exists()


def test_bounce_of_one_recipient_leaves_the_other_alone(client, api):
    response = api.post(
        "/api/v1/emails",
        json.dumps({"to": ["a@example.com", "b@example.com"], "subject": "s", "text": "t"}),
        content_type="application/json",
    )
    message = Message.objects.get(email_id=response.json()["email_id"])
    deliver_now()
    message.refresh_from_db()
    event = ses_event(
        "Bounce", message_id=message.provider_message_id, recipients=["a@example.com", "b@example.com"],
        bounced=["a@example.com"], bounce_type="Permanent", bounce_subtype="NoEmail",
    )

    answer = post(client, signed_notification(event))

    assert answer.json() == {"status": "ok", "applied": 1, "duplicate": 0, "unmatched": 0}
    assert dict(message.recipients.values_list("email", "status")) == {"a@example.com": "bounced", "b@example.com": "sent"}
    assert list(Suppression.objects.values_list("email", flat=True)) == ["a@example.com"]
    message.refresh_from_db()
    assert message.status == "bounced"  # the most advanced recipient status


def test_same_notification_posted_twice_is_applied_once(client, sent_message):
    body = signed_notification(hard_bounce(sent_message))
    first = post(client, body)
    assert first.status_code == 200, first.content
    assert first.json() == {"status": "ok", "applied": 1, "duplicate": 0, "unmatched": 0}
    sent_message.refresh_from_db()
    recipient = recipient_of(sent_message)
    facts = (sent_message.status, recipient.status, recipient.bounce, recipient.updated_at)
    suppressions = list(Suppression.objects.values_list("email", "reason", "source", "created_at"))

    second = post(client, body)

    assert second.status_code == 200, second.content
    assert second.json() == {"status": "ok", "applied": 0, "duplicate": 1, "unmatched": 0}
    sent_message.refresh_from_db()
    recipient = recipient_of(sent_message)
    assert (sent_message.status, recipient.status, recipient.bounce, recipient.updated_at) == facts
    assert EngagementEvent.objects.count() == 1
    assert list(Suppression.objects.values_list("email", "reason", "source", "created_at")) == suppressions


# --- refused: forged, foreign, stale ------------------------------------------


def test_body_changed_after_signing_is_refused(client, sent_message):
    body = signed_notification(hard_bounce(sent_message))
    ses = json.loads(body["Message"])
    ses["bounce"]["bounceSubType"] = "NoEmail"
    body["Message"] = json.dumps(ses)

    response = post(client, body)

    assert response.status_code == 403
    assert response.json()["error"] == "sns_signature_invalid"
    assert_nothing_applied(sent_message)


def test_signature_by_another_key_is_refused(client, sent_message):
    body = signed_notification(hard_bounce(sent_message), key=signing_key_create())

    response = post(client, body)

    assert response.status_code == 403
    assert response.json()["error"] == "sns_signature_invalid"
    assert_nothing_applied(sent_message)


def test_signing_certificate_on_another_host_is_refused(client, sent_message):
    body = signed_notification(hard_bounce(sent_message), cert_url=FOREIGN_CERT_URL)

    response = post(client, body)

    assert response.status_code == 403
    assert response.json()["error"] == "sns_certificate_url_invalid"
    assert_nothing_applied(sent_message)


def test_topic_not_allowed_is_refused(client, sent_message):
    other_topic = "arn:aws:sns:us-east-1:123456789012:someone-elses-topic"
    body = signed_notification(hard_bounce(sent_message), topic_arn=other_topic)

    response = post(client, body)

    assert response.status_code == 403
    assert response.json()["error"] == "sns_topic_not_allowed"
    assert_nothing_applied(sent_message)


def test_expired_notification_is_refused(client, settings, sent_message):
    settings.SNS_MAX_AGE_SECONDS = 600
    old = iso(datetime.now(UTC) - timedelta(seconds=settings.SNS_MAX_AGE_SECONDS + 60))
    body = signed_notification(hard_bounce(sent_message), timestamp=old)

    response = post(client, body)

    assert response.status_code == 403
    assert response.json()["error"] == "sns_message_expired"
    assert_nothing_applied(sent_message)


def test_error_bodies_have_error_and_detail(client, sent_message):
    body = signed_notification(hard_bounce(sent_message), key=signing_key_create())

    response = post(client, body)

    assert set(response.json()) == {"error", "detail"}
    assert response.json()["detail"]


# --- subscription confirmation (against moto) ---------------------------------


@pytest.fixture
def confirm_calls(monkeypatch):
    """Every ConfirmSubscription the service makes: (request params, moto's parsed answer)."""
    calls = []
    real_client = boto3.client

    def recording_client(service, *args, **kwargs):
        client = real_client(service, *args, **kwargs)
        if service == "sns":
            def record(params, model, **_):
                calls.append({"params": params, "response": None, "endpoint": client.meta.endpoint_url})

            def answered(parsed, model, **_):
                calls[-1]["response"] = parsed

            client.meta.events.register("provide-client-params.sns.ConfirmSubscription", record)
            client.meta.events.register("after-call.sns.ConfirmSubscription", answered)
        return client

    monkeypatch.setattr(tracking_sns.boto3, "client", recording_client)
    return calls


@pytest.fixture
def moto_topic(moto_server, settings) -> str:
    settings.AWS_ENDPOINT_URL = moto_server.url
    arn = moto_server.client("sns").create_topic(Name=f"ses-events-{uuid.uuid4().hex[:12]}")["TopicArn"]
    settings.SNS_ALLOWED_TOPIC_ARNS = [TOPIC_ARN, arn]
    return arn


def test_subscription_confirmation_confirms_through_the_sns_api(client, moto_server, moto_topic, confirm_calls):
    body = sns_sign(subscription_confirmation(topic_arn=moto_topic))

    response = post(client, body)

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "confirmed"}
    (call,) = confirm_calls
    assert call["endpoint"] == moto_server.url
    assert call["params"]["TopicArn"] == moto_topic
    assert call["params"]["Token"] == body["Token"]
    # moto (which accepts any token for an existing topic) answered over HTTP with the
    # subscription's ARN: the call reached it and succeeded.
    assert call["response"]["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert call["response"]["SubscriptionArn"].startswith(f"{moto_topic}:")
    assert EngagementEvent.objects.count() == 0


def test_subscription_confirmation_for_a_topic_not_allowed_is_refused_without_a_call(
    client, moto_server, settings, confirm_calls
):
    settings.AWS_ENDPOINT_URL = moto_server.url
    arn = moto_server.client("sns").create_topic(Name=f"not-ours-{uuid.uuid4().hex[:12]}")["TopicArn"]
    body = sns_sign(subscription_confirmation(topic_arn=arn))

    response = post(client, body)

    assert response.status_code == 403
    assert response.json()["error"] == "sns_topic_not_allowed"
    assert confirm_calls == []


def test_forged_subscription_confirmation_is_refused_without_a_call(client, moto_topic, confirm_calls):
    body = sns_sign(subscription_confirmation(topic_arn=moto_topic), key=signing_key_create())

    response = post(client, body)

    assert response.status_code == 403
    assert response.json()["error"] == "sns_signature_invalid"
    assert confirm_calls == []


# --- control messages, malformed requests, unknown messages ---------------------


def test_topic_validation_message_is_acknowledged_and_ignored(client, sent_message):
    response = post(client, signed_notification(TOPIC_VALIDATED_MESSAGE))

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "applied": 0, "duplicate": 0, "unmatched": 0}
    assert_nothing_applied(sent_message)


@pytest.mark.parametrize("raw", [b"{not json", b"\xc3\x28 not utf-8", b"", b"[1, 2]", b'"a string"'])
def test_body_that_is_not_a_json_object_is_invalid_json(client, raw):
    # No charset in the content type: the test client then sends the bytes as they are.
    response = client.post(URL, raw, content_type="text/plain", HTTP_X_AMZ_SNS_MESSAGE_TYPE="Notification")

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    assert EngagementEvent.objects.count() == 0


def test_message_type_header_that_does_not_match_the_body_is_refused(client, sent_message):
    body = signed_notification(hard_bounce(sent_message))

    response = post(client, body, HTTP_X_AMZ_SNS_MESSAGE_TYPE="SubscriptionConfirmation")

    assert response.status_code == 400
    assert response.json()["error"] == "sns_malformed"
    assert_nothing_applied(sent_message)


def test_signed_notification_without_a_readable_ses_event_is_invalid_event(client, sent_message):
    response = post(client, signed_notification(json.dumps({"hello": "world"})))

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_event"
    assert_nothing_applied(sent_message)


def test_event_for_an_unknown_message_is_stored_unmatched(client):
    provider_id = f"0100018f-{uuid.uuid4()}-000000"
    event = ses_event("Delivery", message_id=provider_id, recipients=["nobody@example.com"])
    body = signed_notification(event)

    response = post(client, body)

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "applied": 0, "duplicate": 0, "unmatched": 1}
    stored = EngagementEvent.objects.get()
    assert stored.message is None
    assert stored.recipient is None
    assert stored.event_id == body["MessageId"]
    assert stored.provider_message_id == provider_id
    assert stored.recipient_email == "nobody@example.com"
    assert stored.event_type == "delivery"


def test_subscription_confirmation_that_sns_refuses_answers_502_with_a_code(client, moto_server, settings):
    settings.AWS_ENDPOINT_URL = moto_server.url
    missing = "arn:aws:sns:us-east-1:123456789012:deleted-topic"
    settings.SNS_ALLOWED_TOPIC_ARNS = [missing]

    response = post(client, sns_sign(subscription_confirmation(topic_arn=missing)))

    assert response.status_code == 502
    assert response.json()["error"] == "sns_confirm_failed"


def test_other_methods_get_a_json_405(client):
    response = client.get("/webhooks/ses/")

    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
