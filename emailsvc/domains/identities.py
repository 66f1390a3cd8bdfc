"""Sending domains as SES v2 identities: create (Easy DKIM, custom MAIL FROM),
read, delete. Only the calls and what they answer live here.

EMAIL_PROVIDER=ses talks to Amazon SES. EMAIL_PROVIDER=sandbox talks to the
local emulator (moto), which creates, reads and deletes identities but has no
DKIM tokens, no MAIL FROM API and verifies at once; the sandbox fills in what it
lacks the way SES behaves: three DKIM tokens derived from the name, MAIL FROM
accepted, and the identity, its DKIM and its MAIL FROM verified
SANDBOX_DOMAIN_VERIFY_SECONDS after the domain was added.
"""

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.utils import timezone

from core.errors import Conflict, DependencyFailed


class SesIdentityError(DependencyFailed):
    """An SES identity call failed; the detail names the operation and SES's code."""

    code = "ses_identity_failed"

    def __init__(self, operation: str, code: str, message: str):
        self.operation, self.ses_code = operation, code
        super().__init__(f"SES {operation} failed: {code}: {message}")


class DomainsNeedSes(Conflict):
    code = "domains_need_ses"
    default_detail = (
        "Sending domains are SES identities: they need EMAIL_PROVIDER=ses (or sandbox). "
        "With another provider, ALLOWED_FROM_DOMAINS decides the from domains."
    )


@dataclass(frozen=True)
class IdentityFacts:
    """What SES reports of one domain identity (GetEmailIdentity)."""

    verified_for_sending: bool
    verification_status: str  # PENDING, SUCCESS, FAILED, TEMPORARY_FAILURE, NOT_STARTED; NOT_FOUND: no identity
    dkim_status: str
    dkim_tokens: list[str]
    mail_from_status: str


def _client():
    if settings.EMAIL_PROVIDER not in ("ses", "sandbox"):
        raise DomainsNeedSes()
    return boto3.client(
        "sesv2",
        region_name=settings.AWS_REGION,
        endpoint_url=settings.AWS_ENDPOINT_URL or None,
        config=Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=20),
    )


def _error(operation: str, error: Exception) -> SesIdentityError:
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = " ".join(str(details.get("Message") or "").split())[:200]
        if status == 404 and str(details.get("Code")) in {"404", "NotFound"}:
            message = f"the endpoint ({settings.AWS_ENDPOINT_URL or 'AWS'}) does not implement {operation}"
        return SesIdentityError(operation, str(details.get("Code") or status), message)
    return SesIdentityError(operation, type(error).__name__, str(error))


def _not_implemented(error: ClientError) -> bool:
    """The emulator answers an operation it lacks with a bare HTTP 404."""
    return (
        error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404
        and str(error.response.get("Error", {}).get("Code")) in {"404", "NotFound"}
    )


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code"))


def identity_create(*, name: str, mail_from_domain: str) -> None:
    """Create the SES identity of `name` with Easy DKIM (or adopt the one SES already
    has) and set its custom MAIL FROM domain. A MAIL FROM failure removes an identity
    this call created, so a failed create leaves nothing behind.

    Raises SesIdentityError, or DomainsNeedSes with a provider other than SES.
    """
    client = _client()
    created = False
    try:
        client.create_email_identity(EmailIdentity=name)
        created = True
    except ClientError as error:
        if _code(error) != "AlreadyExistsException":
            raise _error("CreateEmailIdentity", error) from None
    except BotoCoreError as error:
        raise _error("CreateEmailIdentity", error) from None
    try:
        client.put_email_identity_mail_from_attributes(
            EmailIdentity=name, MailFromDomain=mail_from_domain, BehaviorOnMxFailure="USE_DEFAULT_VALUE"
        )
    except (ClientError, BotoCoreError) as error:
        if settings.EMAIL_PROVIDER == "sandbox" and isinstance(error, ClientError) and _not_implemented(error):
            return  # simulated: see identity_facts
        if created:
            try:
                client.delete_email_identity(EmailIdentity=name)
            except (ClientError, BotoCoreError):
                pass  # the MAIL FROM error below is the one to report
        raise _error("PutEmailIdentityMailFromAttributes", error) from None


def identity_facts(*, name: str, added_at: datetime) -> IdentityFacts:
    """SES's view of the identity `name` (`added_at`: when it was added here, which
    the sandbox's simulated verification counts from). Raises SesIdentityError."""
    client = _client()
    try:
        answer = client.get_email_identity(EmailIdentity=name)
    except ClientError as error:
        if _code(error) == "NotFoundException":
            return IdentityFacts(False, "NOT_FOUND", "NOT_STARTED", [], "NOT_STARTED")
        raise _error("GetEmailIdentity", error) from None
    except BotoCoreError as error:
        raise _error("GetEmailIdentity", error) from None
    dkim = answer.get("DkimAttributes") or {}
    facts = IdentityFacts(
        verified_for_sending=bool(answer.get("VerifiedForSendingStatus")),
        verification_status=str(answer.get("VerificationStatus") or "PENDING"),
        dkim_status=str(dkim.get("Status") or "PENDING"),
        dkim_tokens=list(dkim.get("Tokens") or []),
        mail_from_status=str((answer.get("MailFromAttributes") or {}).get("MailFromDomainStatus") or "PENDING"),
    )
    if settings.EMAIL_PROVIDER == "sandbox":
        facts = _sandbox_facts(name, facts, added_at)
    return facts


def identity_delete(*, name: str) -> None:
    """Delete the SES identity of `name`; one SES no longer has is fine. Raises SesIdentityError."""
    try:
        _client().delete_email_identity(EmailIdentity=name)
    except ClientError as error:
        if _code(error) != "NotFoundException":
            raise _error("DeleteEmailIdentity", error) from None
    except BotoCoreError as error:
        raise _error("DeleteEmailIdentity", error) from None


def _sandbox_facts(name: str, emulated: IdentityFacts, added_at: datetime) -> IdentityFacts:
    """What SES would report where the emulator reports nothing or verifies at once."""
    if emulated.verification_status == "NOT_FOUND":
        return emulated
    verified = timezone.now() >= added_at + timedelta(seconds=settings.SANDBOX_DOMAIN_VERIFY_SECONDS)
    tokens = emulated.dkim_tokens or [
        hashlib.sha256(f"{name}/{index}".encode()).hexdigest()[:32] for index in range(1, 4)
    ]
    status = "SUCCESS" if verified else "PENDING"
    return IdentityFacts(
        verified_for_sending=verified,
        verification_status=status,
        dkim_status=status,
        dkim_tokens=tokens,
        mail_from_status=status,
    )
