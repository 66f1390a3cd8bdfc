"""A support case to look at: one address's emails, delivered, soft-bounced (and
so sent again), hard-bounced (and so suppressed) and suppressed at the door;
built through the real API, delivery engine, SQS (moto) and event drain."""

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from emailsvc.models import Message, Suppression
from tests.tracking.scenario import accepted_message, drain, sent_message
from tests.tracking.sesevents import iso, ses_event, sns_envelope

ADDRESS = "jane.doe@example.com"


def envelope(message: Message, event_type: str, *, at: datetime, recipients: list[str] | None = None, **details) -> dict:
    """The SNS envelope of one SES event about `message`, at `at`."""
    recipients = recipients or list(message.recipients.values_list("email", flat=True))
    event = ses_event(event_type, message_id=message.provider_message_id, recipients=recipients, timestamp=iso(at), **details)
    return sns_envelope(event, timestamp=iso(at + timedelta(milliseconds=500)))


@dataclass
class SupportCase:
    address: str
    delivered: Message
    soft_bounced: Message
    retry: Message  # the re-send the soft bounce earned: scheduled
    hard_bounced: Message
    suppressed: Message  # accepted after the hard bounce: suppressed, no events
    complained: Message  # to another address, which complained


@pytest.fixture
def support_case(api, events_queue) -> SupportCase:
    delivered = sent_message(api, [ADDRESS, "bob@example.com"], subject="Welcome aboard")
    soft_bounced = sent_message(api, [ADDRESS], subject="Your invoice")
    hard_bounced = sent_message(api, [ADDRESS], subject="Reset your password")
    complained = sent_message(api, ["carol@example.com"], subject="Weekly digest")
    # The events happen between the sends and the drain, as they would (a status
    # change is stamped when its event is applied).
    now = timezone.now()
    events_queue.put(
        envelope(delivered, "Delivery", at=now + timedelta(milliseconds=20), recipients=[ADDRESS], smtp_response="250 2.0.0 OK"),
        envelope(delivered, "Open", at=now + timedelta(milliseconds=240), recipients=[ADDRESS]),
        envelope(soft_bounced, "Bounce", at=now + timedelta(milliseconds=60), bounce_type="Transient", bounce_subtype="MailboxFull",
                 diagnostic="smtp; 452 4.2.2 mailbox full"),
        envelope(hard_bounced, "Bounce", at=now + timedelta(milliseconds=80), bounce_type="Permanent", bounce_subtype="General",
                 diagnostic="smtp; 550 5.1.1 user unknown"),
        envelope(complained, "Delivery", at=now + timedelta(milliseconds=30)),
        envelope(complained, "Complaint", at=now + timedelta(milliseconds=150), feedback_type="abuse"),
    )
    time.sleep(0.3)
    drain()
    suppressed = accepted_message(api, [ADDRESS], subject="We miss you")
    retry = Message.objects.get(retry_of=soft_bounced)
    assert Suppression.objects.filter(email=ADDRESS, reason="hard_bounce").exists()
    for message in (delivered, soft_bounced, hard_bounced, complained):
        message.refresh_from_db()
    return SupportCase(ADDRESS, delivered, soft_bounced, retry, hard_bounced, suppressed, complained)
