"""Sanity checks of the SES/SNS test-data builders against the documented shapes, and against
django-anymail's independent SES parser."""

import json
from datetime import datetime, timedelta, timezone

import pytest
from anymail.webhooks.amazon_ses import AmazonSESTrackingWebhookView

from tests.tracking.sesevents import (
    EVENT_TYPES,
    NOTIFICATION_TYPES,
    OBJECT_KEYS,
    TOPIC_VALIDATED_MESSAGE,
    iso,
    ses_event,
    sns_envelope,
    sns_request_meta,
    subscription_confirmation,
)

MESSAGE_ID = "0100019a2b3c4d5e-6f7a8b9c-0d1e-2f3a-4b5c-6d7e8f9a0b1c-000000"
RECIPIENTS = ["ann@example.com", "bob@example.org"]
TRACKING = {"X-Emailsvc-Tracking-ID": "signup/42"}

MAIL_KEYS = {"timestamp", "source", "sourceArn", "sendingAccountId", "messageId", "destination",
             "headersTruncated", "headers", "commonHeaders", "tags"}
OBJECT_FIELDS = {
    "Send": set(),
    "Delivery": {"timestamp", "processingTimeMillis", "recipients", "smtpResponse", "reportingMTA"},
    "Bounce": {"bounceType", "bounceSubType", "bouncedRecipients", "timestamp", "feedbackId", "reportingMTA"},
    "Complaint": {"complainedRecipients", "timestamp", "feedbackId", "complaintSubType", "userAgent",
                  "complaintFeedbackType", "arrivalDate"},
    "Open": {"ipAddress", "timestamp", "userAgent"},
    "Click": {"ipAddress", "timestamp", "userAgent", "link"},
    "Reject": {"reason"},
    "DeliveryDelay": {"timestamp", "delayType", "expirationTime", "delayedRecipients", "reportingMTA"},
    "Rendering Failure": {"errorMessage", "templateName"},
    "Subscription": {"contactList", "timestamp", "source", "newTopicPreferences", "oldTopicPreferences"},
}
ANYMAIL_TYPES = {"Send": "sent", "Delivery": "delivered", "Bounce": "bounced", "Complaint": "complained",
                 "Open": "opened", "Click": "clicked", "Reject": "rejected", "Rendering Failure": "failed",
                 "DeliveryDelay": "unknown", "Subscription": "unknown"}


def _header(mail: dict, name: str) -> str | None:
    return next((h["value"] for h in mail.get("headers", []) if h["name"].lower() == name.lower()), None)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_event_format_has_documented_shape(event_type):
    event = ses_event(event_type, message_id=MESSAGE_ID, recipients=RECIPIENTS, headers=TRACKING)

    assert json.loads(json.dumps(event)) == event
    assert set(event) == {"eventType", "mail", OBJECT_KEYS[event_type]}
    assert event["eventType"] == event_type
    mail = event["mail"]
    expected_mail = MAIL_KEYS - ({"headers", "commonHeaders"} if event_type == "Rendering Failure" else set())
    assert set(mail) == expected_mail
    assert mail["messageId"] == MESSAGE_ID and mail["destination"] == RECIPIENTS
    assert set(event[OBJECT_KEYS[event_type]]) == OBJECT_FIELDS[event_type]
    if event_type != "Rendering Failure":
        assert _header(mail, "x-emailsvc-tracking-id") == "signup/42"
        assert mail["commonHeaders"]["to"] == RECIPIENTS
        assert set(mail["commonHeaders"]) == {"from", "date", "to", "messageId", "subject"}


@pytest.mark.parametrize("event_type", NOTIFICATION_TYPES)
def test_notification_format(event_type):
    event = ses_event(event_type, message_id=MESSAGE_ID, recipients=RECIPIENTS, headers=TRACKING, fmt="notification")

    assert json.loads(json.dumps(event)) == event
    assert set(event) == {"notificationType", "mail", OBJECT_KEYS[event_type]}
    assert "sourceIp" in event["mail"] and "tags" not in event["mail"]
    assert _header(event["mail"], "X-Emailsvc-Tracking-ID") == "signup/42"
    if event_type in ("Bounce", "Delivery"):
        assert "remoteMtaIp" in event[OBJECT_KEYS[event_type]]

    bare = ses_event(event_type, message_id=MESSAGE_ID, recipients=RECIPIENTS, fmt="notification",
                     include_headers=False)
    assert not {"headersTruncated", "headers", "commonHeaders"} & set(bare["mail"])


@pytest.mark.parametrize("event_type", sorted(set(EVENT_TYPES) - set(NOTIFICATION_TYPES)))
def test_notification_format_only_has_three_types(event_type):
    with pytest.raises(ValueError):
        ses_event(event_type, message_id=MESSAGE_ID, recipients=RECIPIENTS, fmt="notification")


def test_unknown_type_format_and_detail_are_refused():
    with pytest.raises(ValueError):
        ses_event("Deliver", message_id=MESSAGE_ID, recipients=RECIPIENTS)
    with pytest.raises(ValueError):
        ses_event("Bounce", message_id=MESSAGE_ID, recipients=RECIPIENTS, fmt="firehose")
    with pytest.raises(TypeError):
        ses_event("Bounce", message_id=MESSAGE_ID, recipients=RECIPIENTS, bounce_typ="Transient")


def test_timestamps_and_details():
    at = "2026-03-01T10:00:05.250Z"
    delivery = ses_event("Delivery", message_id=MESSAGE_ID, recipients=RECIPIENTS, timestamp=at)
    assert delivery["delivery"]["timestamp"] == at
    assert delivery["mail"]["timestamp"] < at

    fresh = ses_event("Open", message_id=MESSAGE_ID, recipients=RECIPIENTS)["open"]["timestamp"]
    assert abs(datetime.fromisoformat(fresh.replace("Z", "+00:00")) - datetime.now(timezone.utc)) < timedelta(seconds=5)
    assert len(fresh) == len("2017-08-05T00:41:02.669Z") and fresh.endswith("Z")

    bounce = ses_event("Bounce", message_id=MESSAGE_ID, recipients=RECIPIENTS, bounce_type="Transient",
                       bounce_subtype="MailboxFull", bounced=["bob@example.org"])["bounce"]
    assert bounce["bouncedRecipients"] == [{"emailAddress": "bob@example.org", "action": "failed",
                                            "status": "5.2.2", "diagnosticCode": "smtp; 552 5.2.2 Mailbox full"}]

    click = ses_event("Click", message_id=MESSAGE_ID, recipients=RECIPIENTS, link_tags={"campaign": "spring"})["click"]
    assert click["link"] == "https://example.com/welcome" and click["linkTags"] == {"campaign": ["spring"]}

    subscription = ses_event("Subscription", message_id=MESSAGE_ID, recipients=RECIPIENTS,
                             contact_list="news", unsubscribe_all=False)["subscription"]
    assert subscription["contactList"] == "news"
    assert subscription["newTopicPreferences"]["unsubscribeAll"] is False


def test_sns_envelope_and_subscription_confirmation():
    event = ses_event("Send", message_id=MESSAGE_ID, recipients=RECIPIENTS)
    envelope = sns_envelope(event)
    assert set(envelope) == {"Type", "MessageId", "TopicArn", "Message", "Timestamp", "SignatureVersion",
                             "Signature", "SigningCertURL", "UnsubscribeURL"}
    assert envelope["Type"] == "Notification" and envelope["SignatureVersion"] == "1"
    assert json.loads(envelope["Message"]) == event
    assert envelope["SigningCertURL"].startswith("https://sns.us-east-1.amazonaws.com/")
    assert envelope["UnsubscribeURL"].startswith("https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe")
    assert sns_envelope(event)["MessageId"] != envelope["MessageId"]
    assert sns_envelope(TOPIC_VALIDATED_MESSAGE, subject="x")["Message"] == TOPIC_VALIDATED_MESSAGE
    assert sns_request_meta(envelope)["HTTP_X_AMZ_SNS_MESSAGE_ID"] == envelope["MessageId"]

    confirmation = subscription_confirmation(sns_message_id="m-1", timestamp=iso(datetime.now(timezone.utc)))
    assert set(confirmation) == {"Type", "MessageId", "Token", "TopicArn", "Message", "SubscribeURL", "Timestamp",
                                 "SignatureVersion", "Signature", "SigningCertURL"}
    assert confirmation["Type"] == "SubscriptionConfirmation" and confirmation["MessageId"] == "m-1"
    assert confirmation["Token"] in confirmation["SubscribeURL"]


@pytest.mark.parametrize("fmt,event_type", [("event", t) for t in EVENT_TYPES]
                         + [("notification", t) for t in NOTIFICATION_TYPES])
def test_anymail_parses_builders_output(fmt, event_type):
    event = ses_event(event_type, message_id=MESSAGE_ID, recipients=RECIPIENTS, fmt=fmt)
    envelope = sns_envelope(event)
    view = AmazonSESTrackingWebhookView.__new__(AmazonSESTrackingWebhookView)

    parsed = view.esp_to_anymail_events(json.loads(envelope["Message"]), envelope)

    assert [e.event_type for e in parsed] == [ANYMAIL_TYPES[event_type]] * len(RECIPIENTS)
    assert [e.recipient for e in parsed] == RECIPIENTS
    assert {e.message_id for e in parsed} == {MESSAGE_ID}
    assert {e.event_id for e in parsed} == {envelope["MessageId"]}
