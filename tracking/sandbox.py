"""The sandbox's stand-in for SES event publishing (SPEC §8).

In `sandbox` mode the local AWS emulator accepts the SES call but publishes no
events, so after each send this module puts the events real SES would publish —
SES event-publishing JSON inside SNS Notification envelopes — on the sandbox SQS
queue. They follow the SES mailbox simulator:

    success@simulator.amazonses.com         Send, Delivery
    bounce@simulator.amazonses.com          Send, Bounce (Permanent / General)
    ooto@simulator.amazonses.com            Send, Delivery (the auto-reply goes to the sender)
    complaint@simulator.amazonses.com       Send, Delivery, Complaint (abuse)
    suppressionlist@simulator.amazonses.com Send, Bounce (Permanent / OnAccountSuppressionList)
    any other address                       Send, Delivery

A `+label` in the local part is ignored, as SES does.
"""

import json
import logging
import uuid
from datetime import datetime, timedelta, timezone as dt_timezone

from django.conf import settings

from emailsvc.models import Message, Recipient
from emailsvc.providers import tracking_id

logger = logging.getLogger(__name__)

SIMULATOR_DOMAIN = "simulator.amazonses.com"
ACCOUNT = "123456789012"
TOPIC_ARN = f"arn:aws:sns:us-east-1:{ACCOUNT}:emailsvc-ses-events"
REPORTING_MTA = "a8-70.smtp-out.amazonses.com"
BOUNCE_DIAGNOSTICS = {
    "General": ("5.1.1", "smtp; 550 5.1.1 user unknown"),
    "OnAccountSuppressionList": (
        "5.1.1",
        "Amazon SES did not send the message to this address because it is on the suppression list for your account.",
    ),
}


def sandbox_events_publish(*, message: Message, recipients: list[Recipient]) -> int:
    """Put the simulated events of one sent message on the sandbox queue; how many."""
    from tracking.services import events_queue_url, sqs_client

    envelopes = sandbox_events(message=message, recipients=recipients, sent_at=datetime.now(dt_timezone.utc))
    client, queue_url = sqs_client(), events_queue_url()
    for start in range(0, len(envelopes), 10):
        batch = envelopes[start : start + 10]
        response = client.send_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(index), "MessageBody": json.dumps(body)} for index, body in enumerate(batch)],
        )
        for failure in response.get("Failed", []):
            logger.error("sandbox event not queued entry=%s code=%s", failure.get("Id"), failure.get("Code"))
    return len(envelopes)


def sandbox_events(*, message: Message, recipients: list[Recipient], sent_at: datetime) -> list[dict]:
    """SNS envelopes of the SES events the simulator addresses produce."""
    mail = _mail_object(message, recipients, sent_at)
    events = [_event("Send", mail, "send", {})]
    for offset, recipient in enumerate(recipients, start=1):
        at = sent_at + timedelta(seconds=offset)
        local = recipient.email.partition("@")[0].partition("+")[0] if recipient.email.endswith("@" + SIMULATOR_DOMAIN) else ""
        if local in ("bounce", "suppressionlist"):
            subtype = "General" if local == "bounce" else "OnAccountSuppressionList"
            status, diagnostic = BOUNCE_DIAGNOSTICS[subtype]
            events.append(_event("Bounce", mail, "bounce", {
                "bounceType": "Permanent",
                "bounceSubType": subtype,
                "bouncedRecipients": [
                    {"emailAddress": recipient.email, "action": "failed", "status": status, "diagnosticCode": diagnostic}
                ],
                "timestamp": _iso(at),
                "feedbackId": _feedback_id(),
                "reportingMTA": f"dns; {REPORTING_MTA}",
            }))
            continue
        events.append(_event("Delivery", mail, "delivery", {
            "timestamp": _iso(at),
            "processingTimeMillis": 1000 * offset,
            "recipients": [recipient.email],
            "smtpResponse": "250 2.6.0 Message received",
            "reportingMTA": REPORTING_MTA,
        }))
        if local == "complaint":
            events.append(_event("Complaint", mail, "complaint", {
                "complainedRecipients": [{"emailAddress": recipient.email}],
                "timestamp": _iso(at + timedelta(seconds=1)),
                "feedbackId": _feedback_id(),
                "userAgent": "Amazon SES Mailbox Simulator",
                "complaintFeedbackType": "abuse",
                "arrivalDate": _iso(at),
            }))
    return [_sns_envelope(event, sent_at) for event in events]


def _mail_object(message: Message, recipients: list[Recipient], sent_at: datetime) -> dict:
    domain = message.from_email.rpartition("@")[2]
    to = [r.email for r in recipients if r.role == Recipient.Role.TO]
    headers = [
        {"name": "From", "value": message.from_email},
        {"name": "To", "value": ", ".join(to)},
        {"name": "Subject", "value": message.subject},
        {"name": "X-Emailsvc-Tracking-ID", "value": tracking_id(message)},
    ]
    mail = {
        "timestamp": _iso(sent_at),
        "source": message.from_email,
        "sourceArn": f"arn:aws:ses:{settings.AWS_REGION}:{ACCOUNT}:identity/{domain}",
        "sendingAccountId": ACCOUNT,
        "messageId": message.provider_message_id,
        "destination": [r.email for r in recipients],
        "headersTruncated": False,
        "headers": headers,
        "commonHeaders": {"from": [message.from_email], "to": to, "messageId": message.provider_message_id, "subject": message.subject},
        "tags": {"ses:operation": ["SendEmail"], "ses:source-ip": ["127.0.0.1"]},
    }
    if settings.SES_CONFIGURATION_SET:
        mail["tags"]["ses:configuration-set"] = [settings.SES_CONFIGURATION_SET]
    return mail


def _event(event_type: str, mail: dict, key: str, body: dict) -> dict:
    return {"eventType": event_type, "mail": mail, key: body}


def _sns_envelope(event: dict, at: datetime) -> dict:
    message_id = str(uuid.uuid4())
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC_ARN,
        "Subject": "Amazon SES Email Event Notification",
        "Message": json.dumps(event),
        "Timestamp": _iso(at),
        "SignatureVersion": "1",
        "Signature": "",  # the sandbox queue is trusted; SQS bodies are not signature-checked
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-sandbox.pem",
        "UnsubscribeURL": f"https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={TOPIC_ARN}:{message_id}",
    }


def _feedback_id() -> str:
    return f"{uuid.uuid4().hex}-000000"


def _iso(at: datetime) -> str:
    return at.astimezone(dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
