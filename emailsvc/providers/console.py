"""EMAIL_PROVIDER=console: records everything, delivers nothing, logs one line."""

import logging
import uuid

from emailsvc.providers.base import ProviderBackend, SendResult
from emailsvc.providers.mime import OutboundEmail, wire_bytes

logger = logging.getLogger(__name__)


class ConsoleBackend(ProviderBackend):
    name = "console"

    def send(self, email: OutboundEmail) -> SendResult:
        wire_bytes(email)  # build it as a real send would, so a message that cannot be built fails here too
        logger.info(
            "console delivery (not sent) message_id=%s recipients=%d subject_chars=%d",
            email.extra_headers.get("Message-ID", ""), len(email.recipients()), len(email.subject or ""),
        )
        return SendResult(provider_message_id=f"console-{uuid.uuid4()}")
