"""Adding, checking and removing sending domains (docs/domains.md).

Every SES and DNS call happens outside a transaction; the row is written after.
"""

import logging
import re
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from core.addresses import InvalidAddress, domain_canonical
from core.errors import Conflict, ValidationFailed
from emailsvc.domains.dnscheck import dns_records_check
from emailsvc.domains.identities import (
    IdentityFacts,
    SesIdentityError,
    identity_create,
    identity_delete,
    identity_facts,
)
from emailsvc.domains.models import Domain
from emailsvc.domains.records import domain_records
from emailsvc.domains.selectors import domain_get
from emailsvc.models import CLAIMABLE_STATES, Message, WorkState

logger = logging.getLogger(__name__)

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_SPECIAL_USE = ("local", "localhost", "invalid", "onion", "arpa", "internal")  # as for addresses, .test is accepted
# Emails from a domain in these states are still to be sent (or may be again).
_UNSENT_STATES = (*CLAIMABLE_STATES, WorkState.SENDING, WorkState.HELD)


def domain_name_canonical(name: str, *, field: str = "name") -> str:
    """`name` as a sending domain is stored: IDNA A-labels, lower case, no final dot.

    Raises ValidationFailed(invalid_domain) for anything SES could not verify:
    a single label, an IP address, a special-use name, a bad label."""
    try:
        canonical = domain_canonical(name.strip().rstrip("."))
    except InvalidAddress as error:
        raise ValidationFailed(str(error), fields={field: [str(error)]}, code="invalid_domain") from None
    labels = canonical.split(".")
    problem = None
    if len(labels) < 2 or len(canonical) > 253:
        problem = "A sending domain needs at least two labels and at most 253 characters, e.g. 'acme.example'."
    elif not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        problem = (
            "Each label holds letters, digits and inner hyphens only (1 to 63 characters); "
            "IP addresses are not domains."
        )
    elif labels[-1] in _SPECIAL_USE:
        problem = f"'.{labels[-1]}' is a special-use name: no public DNS can verify it."
    if problem:
        raise ValidationFailed(
            f"'{name}' is not a sending domain: {problem}", fields={field: [problem]}, code="invalid_domain"
        )
    return canonical


def _next_check(status: str, now: datetime) -> datetime:
    """Pending and failed domains are checked every DOMAIN_CHECK_INTERVAL_SECONDS;
    a verified one only every DOMAIN_VERIFIED_CHECK_SECONDS."""
    if status == Domain.Status.VERIFIED:
        seconds = settings.DOMAIN_VERIFIED_CHECK_SECONDS
    else:
        seconds = settings.DOMAIN_CHECK_INTERVAL_SECONDS
    return now + timedelta(seconds=seconds)


def _status_of(facts: IdentityFacts) -> str:
    if facts.verified_for_sending:
        return Domain.Status.VERIFIED
    if facts.verification_status in ("FAILED", "NOT_FOUND"):
        return Domain.Status.FAILED
    return Domain.Status.PENDING


def _facts_fields(facts: IdentityFacts, now: datetime, verified_at: datetime | None) -> dict:
    status = _status_of(facts)
    return {
        "status": status,
        "ses_verification_status": facts.verification_status,
        "ses_verified_for_sending": facts.verified_for_sending,
        "dkim_status": facts.dkim_status,
        "dkim_tokens": facts.dkim_tokens,
        "mail_from_status": facts.mail_from_status,
        "ses_checked_at": now,
        "verified_at": (verified_at or now) if status == Domain.Status.VERIFIED else None,
        "next_check_at": _next_check(status, now),
    }


def domain_create(*, name: str, mail_from_subdomain: str = "") -> Domain:
    """Add the sending domain `name`: create its SES identity (Easy DKIM; one SES
    already has is adopted) with the custom MAIL FROM domain
    `<mail_from_subdomain or DOMAIN_MAIL_FROM_SUBDOMAIN>.<name>`, and store what SES
    reports. The records to publish follow from the row (selectors.domain_record_rows).

    Raises ValidationFailed(invalid_domain), Conflict(domain_exists),
    SesIdentityError (502) or DomainsNeedSes (409)."""
    name = domain_name_canonical(name)
    label = (mail_from_subdomain or settings.DOMAIN_MAIL_FROM_SUBDOMAIN).strip().lower()
    if not _LABEL.match(label):
        problem = "One DNS label: letters, digits and inner hyphens (1 to 63 characters)."
        raise ValidationFailed(problem, fields={"mail_from_subdomain": [problem]}, code="invalid_domain")
    exists = Conflict(f"The sending domain '{name}' exists already.", code="domain_exists")
    if Domain.objects.filter(name=name).exists():
        raise exists
    mail_from = f"{label}.{name}"
    identity_create(name=name, mail_from_domain=mail_from)
    now = timezone.now()
    facts = identity_facts(name=name, added_at=now)
    try:
        with transaction.atomic():
            domain = Domain.objects.create(
                name=name, mail_from_domain=mail_from, created_at=now, **_facts_fields(facts, now, None)
            )
    except IntegrityError:
        raise exists from None
    logger.info("sending domain added domain=%s status=%s", name, domain.status)
    return domain


def domain_refresh(*, domain_id: int) -> Domain:
    """Ask SES for the identity's status and public DNS for each record, and store
    both. An SES failure is stored in `check_error` (the last facts kept, the domain
    checked again at the next interval) rather than raised; a DNS server that does
    not answer shows as records of status `unknown`. Raises Domain.DoesNotExist."""
    domain = Domain.objects.get(pk=domain_id)
    now = timezone.now()
    try:
        fields = _facts_fields(identity_facts(name=domain.name, added_at=domain.created_at), now, domain.verified_at)
        check_error = ""
    except SesIdentityError as error:  # SES unreachable or refusing: keep the last facts, say why
        fields, check_error = {"next_check_at": _next_check(Domain.Status.PENDING, now)}, str(error)[:500]
    records = domain_records(
        name=domain.name,
        dkim_tokens=fields.get("dkim_tokens", domain.dkim_tokens),
        mail_from_domain=domain.mail_from_domain,
    )
    dns = dns_records_check(records)
    updated = Domain.objects.filter(pk=domain.pk).update(
        dns=dns, dns_checked_at=timezone.now(), check_error=check_error, **fields
    )
    if not updated:  # deleted meanwhile
        return domain
    was_verified = domain.status == Domain.Status.VERIFIED
    domain.refresh_from_db()
    if domain.status == Domain.Status.VERIFIED and not was_verified:
        logger.info("sending domain verified domain=%s", domain.name)
    elif check_error:
        logger.warning("sending domain not checked domain=%s error=%s", domain.name, check_error)
    return domain


def domain_verify(*, name: str) -> Domain:
    """Refresh the domain `name` now (POST …/verify). Raises NotFound(domain_not_found)."""
    return domain_refresh(domain_id=domain_get(name=name).pk)


def domains_refresh_due(*, limit: int = 100) -> int:
    """Refresh the domains whose next check is due (the periodic task); how many.
    None without SES (EMAIL_PROVIDER smtp or console): there is no identity to ask about."""
    if settings.EMAIL_PROVIDER not in ("ses", "sandbox"):
        return 0
    due = Domain.objects.filter(next_check_at__lte=timezone.now()).order_by("next_check_at")
    due = list(due.values_list("pk", flat=True)[:limit])
    for domain_id in due:
        try:
            domain_refresh(domain_id=domain_id)
        except Domain.DoesNotExist:  # deleted since the list was read
            pass
    return len(due)


def domain_unsent_count(*, name: str) -> int:
    """Emails from `name` or its sub-domains that are still to be sent."""
    return Message.objects.filter(
        Q(sending_domain=name) | Q(sending_domain__endswith="." + name), state__in=_UNSENT_STATES
    ).count()


def domain_delete(*, name: str) -> None:
    """Remove the domain `name` and its SES identity. Refused with
    Conflict(domain_in_use) while emails from it (or a sub-domain) are queued,
    scheduled, sending or held. Raises NotFound(domain_not_found), SesIdentityError."""
    domain = domain_get(name=name)
    unsent = domain_unsent_count(name=domain.name)
    if unsent:
        raise Conflict(
            f"{unsent} email(s) from '{domain.name}' are still to be sent (queued, scheduled, sending or held); "
            "cancel them or wait until they are sent.",
            code="domain_in_use",
        )
    identity_delete(name=domain.name)
    Domain.objects.filter(pk=domain.pk).delete()
    logger.info("sending domain removed domain=%s", domain.name)
