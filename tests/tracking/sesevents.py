"""Realistic Amazon SES event JSON, and the SNS envelopes it travels in, for tests.

Shapes are copied from the AWS documentation:

* Amazon SES Developer Guide, "Contents of event data that Amazon SES publishes to Amazon SNS"
  and "Examples of event data that Amazon SES publishes to Amazon SNS" -- event publishing
  through a configuration set, top-level key ``eventType``, ten kinds (``fmt="event"``).
* Amazon SES Developer Guide, "Amazon SNS notification contents for Amazon SES" and
  "Amazon SNS notification examples for Amazon SES" -- the older per-identity feedback
  notifications, top-level key ``notificationType``, Bounce/Complaint/Delivery only
  (``fmt="notification"``).
* Amazon SNS Developer Guide, "HTTP/HTTPS notification JSON format" and "HTTP/HTTPS
  subscription confirmation JSON format" -- the envelope. SNS puts the same JSON document in
  an SQS message body (unless raw message delivery is switched on).

Where the two SES formats differ (reproduced here):

* ``eventType`` vs ``notificationType``.
* Notifications carry ``mail.sourceIp`` and, when SES reached the remote MTA,
  ``bounce.remoteMtaIp`` / ``delivery.remoteMtaIp``; event records document neither.
* Event records carry ``mail.tags`` (``ses:configuration-set``, ``ses:from-domain``, ...);
  identity notifications do not ("If using feedback notifications directly on the identity,
  SES does not publish tags").
* Notifications include ``headersTruncated``/``headers``/``commonHeaders`` only when the
  identity is set to include original headers; event records always have
  ``headersTruncated``, and the documented Rendering Failure and DeliveryDelay examples have
  no ``headers``/``commonHeaders`` (default here: omitted for Rendering Failure only -- pass
  ``include_headers=`` to choose).
* The event-type-specific object is named after the type (``bounce``, ``deliveryDelay``,
  ...) except Rendering Failure, whose object is ``failure``; Send's ``send`` is always ``{}``.

Usage::

    event = ses_event("Bounce", message_id=msg_id, recipients=["a@example.com"],
                      headers={"X-Emailsvc-Tracking-ID": "signup/42"}, bounce_subtype="NoEmail")
    body = sns_envelope(event)          # what SNS POSTs / what an SQS message body holds
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

ACCOUNT_ID = "123456789012"
DEFAULT_TOPIC_ARN = f"arn:aws:sns:us-east-1:{ACCOUNT_ID}:ses-events"
DEFAULT_SOURCE = "sender@example.com"
DEFAULT_SNS_TOKEN = (
    "2336412f37fb687f5d51e6e2425dacbba9e5f5ea7d2a4b7e7b0e1f4e4d0f0c3a8b2f6e1d3c5a7b9e0f2d4c6a8b0e"
    "1f3d5c7a9b1e3f5d7c9a1b3e5f7d9c1a3b5e7f9d1c3a5b7e9f1d3c5a7b9e1f3d5c7a9b1e3f5d7c9a1b3e5f7d9c1a3"
)
# The Message of the Notification SES publishes when an SNS event destination is added.
TOPIC_VALIDATED_MESSAGE = "Successfully validated SNS topic for Amazon SES event publishing."

EVENT_TYPES = ("Send", "Delivery", "Bounce", "Complaint", "Open", "Click", "Reject",
               "DeliveryDelay", "Rendering Failure", "Subscription")
NOTIFICATION_TYPES = ("Bounce", "Complaint", "Delivery")

# Name of the type-specific object in the record.
OBJECT_KEYS = {"Send": "send", "Delivery": "delivery", "Bounce": "bounce", "Complaint": "complaint",
               "Open": "open", "Click": "click", "Reject": "reject", "DeliveryDelay": "deliveryDelay",
               "Rendering Failure": "failure", "Subscription": "subscription"}

# Seconds between mail.timestamp (SES accepted the message) and the event's own timestamp.
# Send, Reject and Rendering Failure have no timestamp of their own: `timestamp` is mail's.
_LEAD_SECONDS = {"Delivery": 1.2, "Bounce": 2.5, "Complaint": 30, "Open": 20, "Click": 25,
                 "DeliveryDelay": 60, "Subscription": 5}

_SES_OUTBOUND_MTA = "a8-70.smtp-out.amazonses.com"
_REMOTE_MTA_IP = "203.0.113.25"
_SUPPRESSION_SUBTYPES = {"Suppressed", "OnAccountSuppressionList"}
_BOUNCE_DIAGNOSTICS = {
    ("Permanent", "General"): "smtp; 550 5.1.1 user unknown",
    ("Permanent", "NoEmail"): "smtp; 550 5.1.1 The email account that you tried to reach does not exist.",
    ("Permanent", "Suppressed"): (
        "Amazon SES has suppressed sending to this address because it has a recent history of "
        "bouncing as an invalid address."),
    ("Permanent", "OnAccountSuppressionList"): (
        "Amazon SES did not send the message to this address because it is on the suppression "
        "list for your account."),
    ("Transient", "General"): "smtp; 421 4.4.7 Delivery time expired",
    ("Transient", "MailboxFull"): "smtp; 552 5.2.2 Mailbox full",
    ("Transient", "MessageTooLarge"): "smtp; 552 5.3.4 Message size exceeds fixed maximum message size",
    ("Transient", "ContentRejected"): "smtp; 550 5.7.1 Message rejected due to content restrictions",
    ("Transient", "AttachmentRejected"): "smtp; 554 5.6.1 Attachment type not allowed",
}


# --- time -------------------------------------------------------------------


def iso(dt: datetime) -> str:
    """ISO-8601 UTC with milliseconds and Z, as SES and SNS write it: 2017-08-05T00:41:02.669Z."""
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def now_iso() -> str:
    return iso(datetime.now(timezone.utc))


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- SES records --------------------------------------------------------------


def ses_event(event_type: str, *, message_id: str, recipients: list[str], timestamp: str | None = None,
              headers: dict[str, str] | None = None, fmt: str = "event", **details) -> dict:
    """One SES event record as a dict (see the module docstring for the documents followed).

    event_type: Send, Delivery, Bounce, Complaint, Open, Click, Reject, DeliveryDelay,
    Rendering Failure or Subscription. fmt="event" writes `eventType` (event publishing);
    fmt="notification" writes `notificationType` (identity notifications: Bounce, Complaint and
    Delivery only; ValueError for the rest).

    timestamp: the event's own time (delivery.timestamp, bounce.timestamp, ...), default now;
    mail.timestamp is a little earlier. For Send/Reject/Rendering Failure it is mail.timestamp.

    headers: added to (or replacing, case-insensitively) the default From/To/Subject/Date/
    Message-ID/MIME-Version/Content-Type entries of mail.headers.

    details, all optional:
      any type:   source, subject, configuration_set, tags (dict, event format only),
                  include_headers (bool)
      Bounce:     bounce_type ("Permanent"|"Transient"|"Undetermined"), bounce_subtype,
                  diagnostic, bounced (addresses; default recipients)
      Complaint:  feedback_type (default "abuse"; None = no feedback report attached),
                  complained (default recipients), complaint_subtype (None|"OnAccountSuppressionList")
      Delivery:   smtp_response
      Open:       user_agent, ip
      Click:      user_agent, ip, link, link_tags (dict; linkTags is left out when not given)
      Reject:     reason
      DeliveryDelay:     delay_type, diagnostic, delayed (default recipients)
      Rendering Failure: template_name, error_message
      Subscription:      contact_list, unsubscribe_all (default True), topic, subscription_source
    """
    if fmt not in ("event", "notification"):
        raise ValueError(f"fmt must be 'event' or 'notification', not {fmt!r}")
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown SES event type {event_type!r}; expected one of {EVENT_TYPES}")
    if fmt == "notification" and event_type not in NOTIFICATION_TYPES:
        raise ValueError(f"SES notifications exist only for {NOTIFICATION_TYPES}, not {event_type!r}")

    at = _parse(timestamp) if timestamp else datetime.now(timezone.utc)
    mail_at = at - timedelta(seconds=_LEAD_SECONDS.get(event_type, 0))
    mail = _mail(event_type, fmt, message_id, list(recipients), mail_at, headers or {}, details)
    ctx = _Context(fmt=fmt, recipients=list(recipients), at=at, mail_at=mail_at)
    event_object = _BUILDERS[event_type](ctx, **details)  # unknown details -> TypeError
    type_key = "eventType" if fmt == "event" else "notificationType"
    return {type_key: event_type, "mail": mail, OBJECT_KEYS[event_type]: event_object}


class _Context:
    def __init__(self, *, fmt: str, recipients: list[str], at: datetime, mail_at: datetime):
        self.fmt, self.recipients, self.at, self.mail_at = fmt, recipients, at, mail_at
        self.timestamp = iso(at)

    @property
    def notification(self) -> bool:
        return self.fmt == "notification"

    def feedback_id(self) -> str:
        """Shaped like SES ids: hex milliseconds since the epoch, a UUID, a counter."""
        return f"{int(self.at.timestamp() * 1000):016x}-{uuid.uuid4()}-000000"


def _mail(event_type: str, fmt: str, message_id: str, recipients: list[str], mail_at: datetime,
          extra_headers: dict[str, str], details: dict) -> dict:
    source = details.pop("source", DEFAULT_SOURCE)
    subject = details.pop("subject", "Message sent from Amazon SES")
    configuration_set = details.pop("configuration_set", "tracking")
    custom_tags = details.pop("tags", {})
    include_headers = details.pop("include_headers", event_type != "Rendering Failure")
    domain = source.rpartition("@")[2].strip("<> ")

    mail = {"timestamp": iso(mail_at), "source": source,
            "sourceArn": f"arn:aws:ses:us-east-1:{ACCOUNT_ID}:identity/{domain}"}
    if fmt == "notification":
        mail["sourceIp"] = "192.0.2.10"
    mail.update(sendingAccountId=ACCOUNT_ID, messageId=message_id, destination=recipients)
    if include_headers:
        header_list = _headers(source, recipients, subject, message_id, mail_at, extra_headers)
        first = {}
        for header in header_list:
            first.setdefault(header["name"].lower(), header["value"])
        mail["headersTruncated"] = False
        mail["headers"] = header_list
        mail["commonHeaders"] = {"from": [first["from"]], "date": first["date"],
                                 "to": [a.strip() for a in first["to"].split(",") if a.strip()],
                                 "messageId": first["message-id"], "subject": first["subject"]}
    elif fmt == "event":
        mail["headersTruncated"] = False  # present even where the examples show no headers
    if fmt == "event":
        mail["tags"] = {"ses:operation": ["SendEmail"], "ses:configuration-set": [configuration_set],
                        "ses:source-ip": ["192.0.2.10"], "ses:from-domain": [domain],
                        "ses:caller-identity": ["emailsvc"]}
        if event_type == "Delivery":
            mail["tags"]["ses:outgoing-ip"] = ["198.51.100.7"]
        mail["tags"].update({k: v if isinstance(v, list) else [v] for k, v in custom_tags.items()})
    return mail


def _headers(source, recipients, subject, message_id, mail_at, extra: dict[str, str]) -> list[dict]:
    """mail.headers: a list of {name, value}, original header names and order."""
    values = {"From": source, "To": ", ".join(recipients), "Subject": subject,
              "Date": format_datetime(mail_at.astimezone(timezone.utc)), "Message-ID": message_id,
              "MIME-Version": "1.0",
              "Content-Type": 'multipart/alternative; boundary="----=_Part_7307378_1629847660.1516840721503"'}
    for name, value in extra.items():
        existing = next((n for n in values if n.lower() == name.lower()), None)
        values[existing or name] = value
    return [{"name": name, "value": value} for name, value in values.items()]


def _status(diagnostic: str | None, fallback: str) -> str:
    found = re.search(r"\b([245]\.\d{1,3}\.\d{1,3})\b", diagnostic or "")
    return found.group(1) if found else fallback


def _send(ctx: _Context) -> dict:
    return {}


def _delivery(ctx: _Context, *, smtp_response: str = "250 2.0.0 OK  1700000000 gsmtp") -> dict:
    delivery = {"timestamp": ctx.timestamp,
                "processingTimeMillis": int((ctx.at - ctx.mail_at).total_seconds() * 1000),
                "recipients": ctx.recipients, "smtpResponse": smtp_response, "reportingMTA": _SES_OUTBOUND_MTA}
    if ctx.notification:
        delivery["remoteMtaIp"] = _REMOTE_MTA_IP
    return delivery


def _bounce(ctx: _Context, *, bounce_type: str = "Permanent", bounce_subtype: str | None = None,
            diagnostic: str | None = None, bounced: list[str] | None = None) -> dict:
    subtype = bounce_subtype or ("Undetermined" if bounce_type == "Undetermined" else "General")
    has_dsn = bounce_type != "Undetermined"  # no DSN: recipients carry only emailAddress
    diagnostic = diagnostic or _BOUNCE_DIAGNOSTICS.get((bounce_type, subtype))
    status = _status(diagnostic, "4.0.0" if bounce_type == "Transient" else "5.1.1")
    recipients = []
    for address in bounced if bounced is not None else ctx.recipients:
        row = {"emailAddress": address}
        if has_dsn:
            row.update(action="failed", status=status)
            if diagnostic:
                row["diagnosticCode"] = diagnostic
        recipients.append(row)
    bounce = {"bounceType": bounce_type, "bounceSubType": subtype, "bouncedRecipients": recipients,
              "timestamp": ctx.timestamp, "feedbackId": ctx.feedback_id()}
    suppressed = subtype in _SUPPRESSION_SUBTYPES
    if has_dsn:
        # RFC 3464 "Reporting-MTA: dns; host" (the event-publishing example spells it "dsn;").
        bounce["reportingMTA"] = "dns; amazonses.com" if suppressed else "dns; mx.example.net"
    if ctx.notification and not suppressed:
        bounce["remoteMtaIp"] = _REMOTE_MTA_IP
    return bounce


def _complaint(ctx: _Context, *, feedback_type: str | None = "abuse", complained: list[str] | None = None,
               complaint_subtype: str | None = None) -> dict:
    complaint = {"complainedRecipients": [{"emailAddress": a} for a in
                                          (complained if complained is not None else ctx.recipients)],
                 "timestamp": ctx.timestamp, "feedbackId": ctx.feedback_id(),
                 "complaintSubType": complaint_subtype}
    if feedback_type is not None:  # only when the ISP attached a feedback report (ARF)
        complaint.update(userAgent="ExampleCorp Feedback Loop (V0.01)", complaintFeedbackType=feedback_type,
                         arrivalDate=iso(ctx.mail_at + timedelta(seconds=1)))
    return complaint


_MOBILE_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 10_3_3 like Mac OS X) AppleWebKit/603.3.8 "
              "(KHTML, like Gecko) Mobile/14G60")
_DESKTOP_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
               "Chrome/60.0.3112.90 Safari/537.36")


def _open(ctx: _Context, *, user_agent: str = _MOBILE_UA, ip: str = "192.0.2.1") -> dict:
    return {"ipAddress": ip, "timestamp": ctx.timestamp, "userAgent": user_agent}


def _click(ctx: _Context, *, user_agent: str = _DESKTOP_UA, ip: str = "192.0.2.1",
           link: str = "https://example.com/welcome", link_tags: dict | None = None) -> dict:
    click = {"ipAddress": ip, "link": link}
    if link_tags is not None:  # from ses:tags on the <a>; values are lists
        click["linkTags"] = {k: v if isinstance(v, list) else [v] for k, v in link_tags.items()}
    click.update(timestamp=ctx.timestamp, userAgent=user_agent)
    return click


def _reject(ctx: _Context, *, reason: str = "Bad content") -> dict:
    return {"reason": reason}


def _delivery_delay(ctx: _Context, *, delay_type: str = "TransientCommunicationFailure",
                    diagnostic: str = "smtp; 421 4.4.1 Unable to connect to remote host",
                    delayed: list[str] | None = None) -> dict:
    status = _status(diagnostic, "4.0.0")
    return {"timestamp": ctx.timestamp, "delayType": delay_type,
            "expirationTime": iso(ctx.mail_at + timedelta(hours=14)),  # when SES stops retrying
            "delayedRecipients": [{"emailAddress": a, "status": status, "diagnosticCode": diagnostic}
                                  for a in (delayed if delayed is not None else ctx.recipients)],
            "reportingMTA": "192.0.2.25"}


def _rendering_failure(ctx: _Context, *, template_name: str = "MyTemplate",
                       error_message: str = "Attribute 'attributeName' is not present in the rendering data.") -> dict:
    return {"errorMessage": error_message, "templateName": template_name}


def _subscription(ctx: _Context, *, contact_list: str = "ContactListName", unsubscribe_all: bool = True,
                  topic: str | None = "ExampleTopicName", subscription_source: str = "UnsubscribeHeader") -> dict:
    def preferences(all_off: bool, status: str) -> dict:
        topics = [{"topicName": topic, "subscriptionStatus": status}] if topic else []
        return {"unsubscribeAll": all_off, "topicSubscriptionStatus": topics}

    return {"contactList": contact_list, "timestamp": ctx.timestamp, "source": subscription_source,
            "newTopicPreferences": preferences(unsubscribe_all, "OptOut"),
            "oldTopicPreferences": preferences(False, "OptIn")}


_BUILDERS = {"Send": _send, "Delivery": _delivery, "Bounce": _bounce, "Complaint": _complaint,
             "Open": _open, "Click": _click, "Reject": _reject, "DeliveryDelay": _delivery_delay,
             "Rendering Failure": _rendering_failure, "Subscription": _subscription}


# --- SNS envelopes -------------------------------------------------------------


def _region(topic_arn: str) -> str:
    return topic_arn.split(":")[3]


def _signature(seed: str) -> str:
    """A dummy base64 signature the length of a real RSA-2048 one (344 characters)."""
    return base64.b64encode(hashlib.sha256(seed.encode()).digest() * 8).decode()


def _signing_cert_url(region: str) -> str:
    return f"https://sns.{region}.amazonaws.com/SimpleNotificationService-{hashlib.md5(region.encode()).hexdigest()}.pem"


def sns_envelope(ses_event: dict | str, *, sns_message_id: str | None = None, topic_arn: str = DEFAULT_TOPIC_ARN,
                 timestamp: str | None = None, subject: str | None = None) -> dict:
    """An SNS Notification as SNS POSTs it to HTTPS endpoints and puts it in SQS message bodies.

    Message is the compact JSON of ses_event, or the string as given (e.g.
    TOPIC_VALIDATED_MESSAGE). Subject appears only when given: SNS leaves the key out when the
    publisher set none, and SES sets none.
    """
    region = _region(topic_arn)
    message_id = sns_message_id or str(uuid.uuid4())
    envelope = {"Type": "Notification", "MessageId": message_id, "TopicArn": topic_arn}
    if subject is not None:
        envelope["Subject"] = subject
    envelope.update(
        Message=ses_event if isinstance(ses_event, str) else json.dumps(ses_event, separators=(",", ":")),
        Timestamp=timestamp or now_iso(),
        SignatureVersion="1",
        Signature=_signature(message_id),
        SigningCertURL=_signing_cert_url(region),
        UnsubscribeURL=(f"https://sns.{region}.amazonaws.com/?Action=Unsubscribe"
                        f"&SubscriptionArn={topic_arn}:{uuid.uuid5(uuid.NAMESPACE_URL, topic_arn)}"),
    )
    return envelope


def subscription_confirmation(*, topic_arn: str = DEFAULT_TOPIC_ARN, token: str = DEFAULT_SNS_TOKEN,
                              sns_message_id: str | None = None, timestamp: str | None = None) -> dict:
    """An SNS SubscriptionConfirmation body (no UnsubscribeURL; Token and SubscribeURL instead)."""
    region = _region(topic_arn)
    message_id = sns_message_id or str(uuid.uuid4())
    return {
        "Type": "SubscriptionConfirmation",
        "MessageId": message_id,
        "Token": token,
        "TopicArn": topic_arn,
        "Message": (f"You have chosen to subscribe to the topic {topic_arn}.\n"
                    "To confirm the subscription, visit the SubscribeURL included in this message."),
        "SubscribeURL": (f"https://sns.{region}.amazonaws.com/?Action=ConfirmSubscription"
                         f"&TopicArn={topic_arn}&Token={token}"),
        "Timestamp": timestamp or now_iso(),
        "SignatureVersion": "1",
        "Signature": _signature(message_id),
        "SigningCertURL": _signing_cert_url(region),
    }


def sns_request_meta(envelope: dict) -> dict:
    """The x-amz-sns-* request headers SNS sends with an HTTPS POST, as Django test-client kwargs."""
    meta = {"HTTP_X_AMZ_SNS_MESSAGE_TYPE": envelope["Type"], "HTTP_X_AMZ_SNS_MESSAGE_ID": envelope["MessageId"],
            "HTTP_X_AMZ_SNS_TOPIC_ARN": envelope["TopicArn"]}
    if envelope["Type"] == "Notification":
        meta["HTTP_X_AMZ_SNS_SUBSCRIPTION_ARN"] = envelope["UnsubscribeURL"].rpartition("SubscriptionArn=")[2]
    return meta
