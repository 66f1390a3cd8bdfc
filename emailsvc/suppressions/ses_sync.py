"""SES's account-level suppression list, through the SES v2 API: list, put, delete.

Only the calls and their errors live here; what they mean for our own
suppressions (emailsvc.suppressions.services: ses_suppressions_pull/push)
does not. The client reaches AWS_ENDPOINT_URL when set (the sandbox's
emulator), like every other AWS client of the service.

SES keeps two reasons on that list, BOUNCE and COMPLAINT, and accepts only
those two in PutSuppressedDestination. An address on it is not sent to: SES
drops the send and reports a bounce with the subtype OnAccountSuppressionList.
"""

from collections.abc import Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

from core.errors import DependencyFailed

# ListSuppressedDestinations answers at most 1,000 entries a page.
PAGE_SIZE = 1000
# Errors worth trying again later: SES or the network was busy, not the request wrong.
_TRANSIENT_CODES = {"TooManyRequestsException", "Throttling", "ThrottlingException", "InternalFailure", "ServiceUnavailable"}


class SesSuppressionListError(DependencyFailed):
    """A call to SES's suppression list failed; `ses_code` is SES's error code."""

    code = "ses_suppression_list_failed"

    def __init__(self, operation: str, code: str, message: str, *, status: int | None = None):
        self.operation = operation
        self.ses_code = code
        self.status = status
        self.transient = code in _TRANSIENT_CODES or (status is not None and status >= 500)
        if status == 404 and code in {"404", "NotFound"}:
            # Not SES's NotFoundException (a JSON error with that code): the
            # endpoint has no such operation at all. moto 5.2, the sandbox's
            # emulator, does not implement the suppression list.
            message = (
                f"the endpoint ({settings.AWS_ENDPOINT_URL or 'AWS'}) does not implement {operation} "
                "(moto, the sandbox's AWS emulator, has no account-level suppression list)"
            )
        super().__init__(f"SES {operation} failed: {code}: {message}")


def ses_client():
    """A boto3 SES v2 client; botocore retries throttling a few times with backoff."""
    return boto3.client(
        "sesv2",
        region_name=settings.AWS_REGION,
        endpoint_url=settings.AWS_ENDPOINT_URL or None,
        config=Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30),
    )


def _call(operation: str, method, **kwargs) -> dict:
    try:
        return method(**kwargs)
    except ClientError as error:
        details = error.response.get("Error", {})
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = " ".join(str(details.get("Message") or "").split())[:300]
        raise SesSuppressionListError(operation, str(details.get("Code") or status), message, status=status) from None
    except BotoCoreError as error:  # no answer at all: connection refused, timeout, no credentials
        raise SesSuppressionListError(operation, type(error).__name__, str(error), status=None) from None


def suppressed_destination_pages(*, client=None) -> Iterator[list[dict]]:
    """Every page of ListSuppressedDestinations, following NextToken: each a list of
    {"EmailAddress", "Reason", "LastUpdateTime"} as botocore returns them.

    Raises SesSuppressionListError for a failed call (pages already yielded stay yielded).
    """
    client = client or ses_client()
    token = None
    while True:
        request = {"PageSize": PAGE_SIZE, **({"NextToken": token} if token else {})}
        answer = _call("ListSuppressedDestinations", client.list_suppressed_destinations, **request)
        yield answer.get("SuppressedDestinationSummaries", [])
        token = answer.get("NextToken")
        if not token:
            return


def suppressed_destination_put(*, email: str, reason: str, client=None) -> None:
    """Put `email` on SES's list with `reason` ("BOUNCE" or "COMPLAINT"); an entry there is replaced."""
    client = client or ses_client()
    _call("PutSuppressedDestination", client.put_suppressed_destination, EmailAddress=email, Reason=reason)


def suppressed_destination_delete(*, email: str, client=None) -> bool:
    """Take `email` off SES's list; False when it was not on it."""
    client = client or ses_client()
    try:
        _call("DeleteSuppressedDestination", client.delete_suppressed_destination, EmailAddress=email)
    except SesSuppressionListError as error:
        if error.ses_code == "NotFoundException":
            return False
        raise
    return True
