"""Steps the tracking tests share: a message sent through the API, its SES events, a drain."""

import json
from datetime import datetime, timedelta, timezone

from emailsvc.models import Message
from tests.conftest import deliver_now
from tests.tracking.sesevents import iso, ses_event, sns_envelope
from tracking.tasks import events_drain_task

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)


def at(seconds: float) -> str:
    return iso(T0 + timedelta(seconds=seconds))


def accepted_message(api, to, **fields) -> Message:
    body = {"to": to, "subject": "Welcome", "text": "Hello", **fields}
    response = api.post("/api/v1/emails", json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.content
    return Message.objects.get(email_id=response.json()["email_id"])


def sent_message(api, to, **fields) -> Message:
    """A message accepted by the API and handed to the (console) provider in-process."""
    message = accepted_message(api, to, **fields)
    deliver_now()
    message.refresh_from_db()
    return message


def event(message: Message, event_type: str, recipients=None, *, seconds: float = 10, **details) -> dict:
    """The SNS envelope of one SES event about `message`, at T0 + seconds."""
    recipients = recipients or list(message.recipients.values_list("email", flat=True))
    return sns_envelope(
        ses_event(event_type, message_id=message.provider_message_id, recipients=recipients, timestamp=at(seconds), **details),
        timestamp=at(seconds + 0.5),
    )


def detail(api, message: Message) -> dict:
    response = api.get(f"/api/v1/emails/{message.email_id}")
    assert response.status_code == 200
    return response.json()


def drain() -> dict:
    """One run of the beat task, as beat would start it."""
    return events_drain_task.apply().get()
