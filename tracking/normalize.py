"""One normalizer for Amazon SES events, whatever way they arrive (SPEC §6.1–3).

Input is what SNS delivers — an SNS Notification envelope whose `Message` is the
SES event JSON — or, with SNS raw message delivery, the bare SES event. Both SES
formats are read: event publishing (`eventType`) and the older identity
notifications (`notificationType`).

django-anymail's SES parser does the common work (recipient expansion, the SNS
MessageId, the message id, tags); it maps DeliveryDelay and Subscription to
"unknown" and keeps bounce types only in a description, so the facts a recipient
needs are read from the SES event itself.
"""

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone

import orjson
from anymail.exceptions import AnymailError
from anymail.webhooks.amazon_ses import AmazonSESTrackingWebhookView
from django.utils.dateparse import parse_datetime

from core.addresses import address_key
from core.errors import ValidationFailed
from tracking.models import EventType

TRACKING_HEADER = "x-emailsvc-tracking-id"

# Messages SES and SNS put on the topic that are not events: acknowledge, ignore.
CONTROL_MESSAGES = ("Successfully validated SNS topic for Amazon SES event publishing.",)

# The anymail parser only needs its esp_to_anymail_events method, which reads no
# view state; building the view would require webhook settings we do not use.
_anymail_ses = AmazonSESTrackingWebhookView.__new__(AmazonSESTrackingWebhookView)

_SES_TYPES = {
    "Send": EventType.SEND,
    "Delivery": EventType.DELIVERY,
    "Bounce": EventType.BOUNCE,
    "Complaint": EventType.COMPLAINT,
    "Open": EventType.OPEN,
    "Click": EventType.CLICK,
    "Reject": EventType.REJECT,
    "DeliveryDelay": EventType.DELIVERY_DELAY,
    "Rendering Failure": EventType.RENDERING_FAILURE,
    "Subscription": EventType.SUBSCRIPTION,
}
# Where each event type keeps its own object in the SES JSON.
_SES_OBJECT_KEYS = {"DeliveryDelay": "deliveryDelay", "Rendering Failure": "failure"}


class MalformedEvent(ValidationFailed, ValueError):
    """The body is neither an SES event nor an SNS envelope of one."""

    code = "invalid_event"


@dataclass(frozen=True)
class NormalizedEvent:
    event_id: str
    event_type: str
    recipient: str
    provider_message_id: str
    tracking_id: str
    occurred_at: datetime
    detail: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    # `raw` as the JSON text it was read from, when there is one: stored as it
    # came (the database reads it once) instead of written out again.
    raw_text: str = field(default="", repr=False, compare=False)

    @property
    def email_id(self) -> str:
        """The public email id carried in X-Emailsvc-Tracking-ID (`<group>/<email_id>`)."""
        return self.tracking_id.rpartition("/")[2]


def ses_body_parse(body: str | bytes | dict) -> list[NormalizedEvent]:
    """Normalized per-recipient events of one SQS/SNS body; [] for control messages.

    Raises MalformedEvent for anything that cannot be read as an SES event.
    """
    return ses_envelope_parse(envelope_read(body))


def envelope_read(body: str | bytes | dict) -> dict:
    """The JSON object of an SQS/SNS body (not yet read as an event)."""
    envelope = _json(body)
    if not isinstance(envelope, dict):
        raise MalformedEvent("the body is not a JSON object")
    return envelope


def envelope_event_id(envelope: dict) -> str:
    """The SNS MessageId of a Notification envelope: the id its events are
    stored under. "" for anything else (a bare SES event's id is a digest of it)."""
    if envelope.get("Type") == "Notification" and isinstance(envelope.get("Message"), str):
        event_id = envelope.get("MessageId")
        return event_id if isinstance(event_id, str) else ""
    return ""


def ses_envelope_parse(envelope: dict) -> list[NormalizedEvent]:
    """`ses_body_parse` of a body already read by `envelope_read`."""
    if envelope.get("Type") == "Notification" and "Message" in envelope:
        message = envelope["Message"]
        if not isinstance(message, str):
            raise MalformedEvent("the SNS Message is not a string")
        if message in CONTROL_MESSAGES:
            return []
        ses_event = _json(message)
        sns_message = envelope
        event_id = envelope.get("MessageId") or ""
        raw_text = message
    elif envelope.get("Type") in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
        return []
    else:  # SNS raw message delivery: the bare SES event
        ses_event, sns_message, event_id, raw_text = envelope, {}, "", ""
    return ses_event_normalize(ses_event, sns_message=sns_message, event_id=event_id, raw_text=raw_text)


def ses_event_normalize(
    ses_event: dict, *, sns_message: dict | None = None, event_id: str = "", raw_text: str = ""
) -> list[NormalizedEvent]:
    """Per-recipient events of one SES event (`raw_text`: the JSON it was read
    from, if any). Without an SNS MessageId the id is a digest of the event, so
    the same bare event replayed is still one event."""
    if not isinstance(ses_event, dict):
        raise MalformedEvent("the SES event is not a JSON object")
    if ses_event.get("notificationType") == "AmazonSnsSubscriptionSucceeded":
        return []
    ses_type = ses_event.get("eventType") or ses_event.get("notificationType")
    if not isinstance(ses_type, str) or not isinstance(ses_event.get("mail"), dict):
        raise MalformedEvent("no eventType/notificationType or no mail object")
    if not event_id:
        canonical = json.dumps(ses_event, sort_keys=True, separators=(",", ":"))
        event_id = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    try:
        anymail_events = _anymail_ses.esp_to_anymail_events(ses_event, sns_message or {})
    except (AnymailError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise MalformedEvent(f"unreadable {ses_type} event: {type(error).__name__}: {error}") from error

    mail = ses_event["mail"]
    event_object = ses_event.get(_SES_OBJECT_KEYS.get(ses_type, ses_type.lower())) or {}
    if not isinstance(event_object, dict):
        raise MalformedEvent(f"the {ses_type} object is not a JSON object")
    event_type = _SES_TYPES.get(ses_type, EventType.UNKNOWN)
    occurred_at = (
        _timestamp(event_object.get("timestamp"))
        or _timestamp((sns_message or {}).get("Timestamp"))
        or _timestamp(mail.get("timestamp"))
        or datetime.now(dt_timezone.utc)
    )
    common = {
        "event_id": event_id,
        "event_type": event_type,
        "provider_message_id": str(mail.get("messageId") or ""),
        "tracking_id": _header(mail, TRACKING_HEADER),
        "occurred_at": occurred_at,
        "raw": ses_event,
        "raw_text": raw_text,
    }
    per_recipient = _per_recipient_detail(ses_type, event_object)
    events = []
    recipients = [e.recipient for e in anymail_events]
    if ses_type == "DeliveryDelay" and per_recipient:
        recipients = list(per_recipient)
    recipients = [r for r in dict.fromkeys(recipients) if isinstance(r, str) and r.strip()]
    if not recipients:
        recipients = [""]  # still stored (and counted), just not tied to an address
    for recipient in recipients:
        address = _bare_address(recipient)
        detail = _detail(ses_type, event_object) | per_recipient.get(recipient, {})
        events.append(NormalizedEvent(recipient=address, detail=detail, **common))
    return events


def _per_recipient_detail(ses_type: str, event_object: dict) -> dict[str, dict]:
    rows = {
        "Bounce": "bouncedRecipients",
        "DeliveryDelay": "delayedRecipients",
    }.get(ses_type)
    if not rows:
        return {}
    detail = {}
    for row in event_object.get(rows) or []:
        if isinstance(row, dict) and row.get("emailAddress"):
            detail[row["emailAddress"]] = _drop_empty(
                {"diagnostic": row.get("diagnosticCode"), "status": row.get("status"), "action": row.get("action")}
            )
    return detail


def _detail(ses_type: str, event_object: dict) -> dict:
    if ses_type == "Bounce":
        return _drop_empty({"bounce_type": event_object.get("bounceType"), "bounce_subtype": event_object.get("bounceSubType")})
    if ses_type == "Complaint":
        return _drop_empty(
            {"feedback_type": event_object.get("complaintFeedbackType"), "user_agent": event_object.get("userAgent")}
        )
    if ses_type == "Delivery":
        return _drop_empty({"smtp_response": event_object.get("smtpResponse")})
    if ses_type == "Open":
        return _drop_empty({"user_agent": event_object.get("userAgent"), "ip": event_object.get("ipAddress")})
    if ses_type == "Click":
        return _drop_empty(
            {"url": event_object.get("link"), "user_agent": event_object.get("userAgent"), "ip": event_object.get("ipAddress")}
        )
    if ses_type == "Reject":
        return _drop_empty({"reason": event_object.get("reason")})
    if ses_type == "DeliveryDelay":
        return _drop_empty({"delay_type": event_object.get("delayType"), "expires_at": event_object.get("expirationTime")})
    if ses_type == "Rendering Failure":
        return _drop_empty({"reason": event_object.get("errorMessage"), "template": event_object.get("templateName")})
    if ses_type == "Subscription":
        preferences = event_object.get("newTopicPreferences")
        preferences = preferences if isinstance(preferences, dict) else {}
        return {"contact_list": event_object.get("contactList", ""), "unsubscribe_all": bool(preferences.get("unsubscribeAll"))}
    if ses_type == "Send":
        return {}
    return {"ses_type": ses_type}


def _drop_empty(values: dict) -> dict:
    return {key: value for key, value in values.items() if value not in (None, "")}


def _header(mail: dict, name: str) -> str:
    for header in mail.get("headers") or []:
        if isinstance(header, dict) and str(header.get("name", "")).lower() == name:
            return str(header.get("value", "")).strip()
    return ""


def _bare_address(recipient: str) -> str:
    """SES reports `destination` as given, possibly `Name <a@b>`; facts key on the
    address in its canonical form, so an event for any spelling of it matches."""
    recipient = recipient.strip()
    if recipient.endswith(">") and "<" in recipient:
        recipient = recipient[recipient.rindex("<") + 1 : -1]
    return address_key(recipient)


def _timestamp(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:
        return None
    if parsed is not None and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt_timezone.utc)
    return parsed


def _json(value: str | bytes | dict):
    if isinstance(value, dict):
        return value
    try:
        # orjson: a third of the time of json.loads on an SNS envelope and its
        # SES event (the drain reads two per event); stricter, too (no NaN).
        return orjson.loads(value)
    except (TypeError, ValueError) as error:
        raise MalformedEvent(f"not JSON: {error}") from error
