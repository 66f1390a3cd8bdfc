"""EMAIL_PROVIDER=sandbox: the real SES code path against the local AWS emulator,
plus the SES events a real account would publish (SPEC §8).

The emulator accepts the SES call but publishes no events, so after each send
this backend puts the events real SES would publish — SES event-publishing JSON
inside SNS Notification envelopes — on the sandbox SQS queue. They follow the
SES mailbox simulator:

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
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from email.utils import parseaddr

from django.conf import settings

from emailsvc.providers.base import SendResult
from emailsvc.providers.mime import TRACKING_HEADER, OutboundEmail
from emailsvc.providers.ses import SesBackend

logger = logging.getLogger(__name__)


class SandboxBackend(SesBackend):
    name = "sandbox"

    def send(self, email: OutboundEmail) -> SendResult:
        result = super().send(email)
        try:
            sandbox_events_publish(email=email, provider_message_id=result.provider_message_id)
        except Exception:  # the send happened; a simulator failure must not turn it into a retry
            logger.warning("sandbox events not published message_id=%s", result.provider_message_id, exc_info=True)
        return result


@dataclass(frozen=True)
class SentMail:
    """What the simulator needs to know of one sent email."""

    provider_message_id: str
    from_email: str
    subject: str
    tracking_id: str
    recipients: list[tuple[str, str]]  # (address, role)


def sandbox_events_publish(*, email: OutboundEmail, provider_message_id: str) -> int:
    """Put the simulated events of one sent email on the sandbox queue; how many."""
    from core.sqs import events_queue_url, sqs_client

    sent = SentMail(
        provider_message_id=provider_message_id,
        from_email=parseaddr(email.from_email)[1],
        subject=email.subject,
        tracking_id=email.extra_headers.get(TRACKING_HEADER, ""),
        recipients=list(email.recipient_roles),
    )
    envelopes = sandbox_events(sent=sent, sent_at=datetime.now(dt_timezone.utc))
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


def sandbox_events(*, sent: SentMail, sent_at: datetime) -> list[dict]:
    """SNS envelopes of the SES events the simulator addresses produce."""
    mail = _mail_object(sent, sent_at)
    events = [_event("Send", mail, "send", {})]
    for offset, (address, _role) in enumerate(sent.recipients, start=1):
        at = sent_at + timedelta(seconds=offset)
        local = address.partition("@")[0].partition("+")[0] if address.endswith("@" + SIMULATOR_DOMAIN) else ""
        if local in ("bounce", "suppressionlist"):
            subtype = "General" if local == "bounce" else "OnAccountSuppressionList"
            status, diagnostic = BOUNCE_DIAGNOSTICS[subtype]
            events.append(_event("Bounce", mail, "bounce", {
                "bounceType": "Permanent",
                "bounceSubType": subtype,
                "bouncedRecipients": [
                    {"emailAddress": address, "action": "failed", "status": status, "diagnosticCode": diagnostic}
                ],
                "timestamp": _iso(at),
                "feedbackId": _feedback_id(),
                "reportingMTA": f"dns; {REPORTING_MTA}",
            }))
            continue
        events.append(_event("Delivery", mail, "delivery", {
            "timestamp": _iso(at),
            "processingTimeMillis": 1000 * offset,
            "recipients": [address],
            "smtpResponse": "250 2.6.0 Message received",
            "reportingMTA": REPORTING_MTA,
        }))
        if local == "complaint":
            events.append(_event("Complaint", mail, "complaint", {
                "complainedRecipients": [{"emailAddress": address}],
                "timestamp": _iso(at + timedelta(seconds=1)),
                "feedbackId": _feedback_id(),
                "userAgent": "Amazon SES Mailbox Simulator",
                "complaintFeedbackType": "abuse",
                "arrivalDate": _iso(at),
            }))
    return [_sns_envelope(event, sent_at) for event in events]


def _mail_object(sent: SentMail, sent_at: datetime) -> dict:
    domain = sent.from_email.rpartition("@")[2]
    to = [address for address, role in sent.recipients if role == "to"]
    headers = [
        {"name": "From", "value": sent.from_email},
        {"name": "To", "value": ", ".join(to)},
        {"name": "Subject", "value": sent.subject},
        {"name": TRACKING_HEADER, "value": sent.tracking_id},
    ]
    mail = {
        "timestamp": _iso(sent_at),
        "source": sent.from_email,
        "sourceArn": f"arn:aws:ses:{settings.AWS_REGION}:{ACCOUNT}:identity/{domain}",
        "sendingAccountId": ACCOUNT,
        "messageId": sent.provider_message_id,
        "destination": [address for address, _ in sent.recipients],
        "headersTruncated": False,
        "headers": headers,
        "commonHeaders": {"from": [sent.from_email], "to": to, "messageId": sent.provider_message_id, "subject": sent.subject},
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
