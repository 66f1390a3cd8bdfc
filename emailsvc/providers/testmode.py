"""The emails of a test key (docs/api-keys.md#test-keys): stored, checked and
claimed like any other, built into MIME, but never handed to a provider. The
"send" answers at once with a provider message id of its own (`test-…`), takes
no rate-limit tokens, and with its record (in the same transaction) the events
the SES mailbox simulator would publish for it (emailsvc.providers.sandbox.sandbox_events) are
handed to the tracking side (`simulated_events`), which applies them as it
applies SES's own: statuses, the timeline, suppressions, webhooks.

So `success@simulator.amazonses.com` is delivered, `bounce@…` bounces,
`complaint@…` complains, `suppressionlist@…` bounces as on the account's
suppression list, and every other address is delivered — without leaving the
service, whatever EMAIL_PROVIDER is.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from django.dispatch import Signal

from emailsvc.models import Provider
from emailsvc.providers.base import ProviderBackend, SendResult
from emailsvc.providers.mime import OutboundEmail, tracking_id
from emailsvc.providers.sandbox import SentMail, sandbox_events

if TYPE_CHECKING:
    from emailsvc.delivery.chunks import Outgoing, SendOutcome

logger = logging.getLogger(__name__)

# Sent inside the transaction that records a chunk's test emails, with
# `envelopes`: the SNS envelopes of the SES events the simulator publishes for
# them. The tracking side applies them (tracking.apps connects the receiver).
simulated_events = Signal()


class SimulatedBackend(ProviderBackend):
    """Answers every send at once; nothing leaves the process."""

    name = Provider.TEST

    def send(self, email: OutboundEmail) -> SendResult:
        return SendResult(provider_message_id=f"test-{uuid.uuid4()}")


def simulated_sends_publish(sends: Sequence[tuple[Outgoing, SendOutcome]]) -> int:
    """Within the transaction that records test emails: hand the simulator's
    events of each one's sent recipients to the tracking side. How many envelopes."""
    envelopes: list[dict] = []
    for message, outcome in sends:
        sent = set(outcome.sent)
        recipients = [(r.email, r.role) for r in message.recipients if r.id in sent]
        if not recipients or outcome.sent_at is None:
            continue
        mail = SentMail(
            provider_message_id=outcome.provider_message_id, from_email=message.from_email, subject=message.subject,
            tracking_id=tracking_id(message), recipients=recipients,
        )
        envelopes += sandbox_events(sent=mail, sent_at=outcome.sent_at)
    if envelopes:
        receivers = simulated_events.send(sender=SimulatedBackend, envelopes=envelopes)
        if not receivers:
            logger.warning("test emails' simulated events were not applied: no receiver (tracking not installed)")
    return len(envelopes)
