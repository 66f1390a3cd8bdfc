"""The interface every delivery backend fills in."""

from dataclasses import dataclass, field

from emailsvc.delivery.retry import DeliveryError
from emailsvc.providers.mime import OutboundEmail


@dataclass
class SendResult:
    """The provider's answer to one send.

    `refused` holds the recipients (lower-cased address → error) the provider
    refused while accepting the message for the others; an error that concerns
    the whole message is raised instead.
    """

    provider_message_id: str
    refused: dict[str, DeliveryError] = field(default_factory=dict)


class ProviderBackend:
    """One open provider connection, used by one thread at a time."""

    name = ""

    def prepare(self) -> None:
        """Make the connection ready for a send (open it, or check an idle one),
        so that the send itself is only the provider call. By default nothing:
        a backend whose connection is cheap or shared has nothing to do."""

    def send(self, email: OutboundEmail) -> SendResult:
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection; the next send opens a new one."""
