"""Reads of sending domains: one by name, the list, the row that decides a From
domain, and what is still missing before a domain is verified."""

from django.db.models import QuerySet

from core.addresses import InvalidAddress, domain_canonical
from core.errors import NotFound
from emailsvc.domains.dnscheck import MISSING, UNCHECKED, UNKNOWN, WRONG_VALUE
from emailsvc.domains.models import Domain
from emailsvc.domains.records import DnsRecord, domain_records


def domains_list() -> QuerySet[Domain]:
    return Domain.objects.order_by("name")


def domain_get(*, name: str) -> Domain:
    """The domain `name` (any case or IDNA form, trailing dot allowed); NotFound(domain_not_found)."""
    try:
        canonical = domain_canonical(name.strip().rstrip("."))
    except InvalidAddress:
        canonical = None
    domain = Domain.objects.filter(name=canonical).first() if canonical else None
    if domain is None:
        raise NotFound(f"There is no sending domain '{name}'.", code="domain_not_found")
    return domain


def domain_for_sender(*, domain: str) -> Domain | None:
    """The row that decides whether `domain` (canonical) may send: its own, else its
    closest parent's (an SES domain identity covers its sub-domains)."""
    labels = domain.split(".")
    candidates = [".".join(labels[index:]) for index in range(len(labels) - 1)]
    if not candidates:
        return None
    rows = {row.name: row for row in Domain.objects.filter(name__in=candidates)}
    return next((rows[name] for name in candidates if name in rows), None)


def domain_record_rows(domain: Domain) -> list[tuple[DnsRecord, dict]]:
    """Each record to publish with what DNS last answered for it ({"status", "found"})."""
    records = domain_records(name=domain.name, dkim_tokens=domain.dkim_tokens, mail_from_domain=domain.mail_from_domain)
    return [(record, domain.dns.get(record.key) or {"status": UNCHECKED, "found": []}) for record in records]


def domain_missing(domain: Domain) -> list[str]:
    """What stands between `domain` and sending, in words; [] once SES verified it."""
    if domain.status == Domain.Status.VERIFIED:
        return []
    if domain.ses_verification_status == "NOT_FOUND":
        return ["SES has no identity for this domain any more: delete the domain and add it again."]
    missing = [
        f"SES has not verified the domain yet (verification {domain.ses_verification_status}, "
        f"DKIM {domain.dkim_status}, MAIL FROM {domain.mail_from_status})."
    ]
    if domain.dns_checked_at is None:
        return missing + [f"DNS not checked yet: POST /api/v1/domains/{domain.name}/verify checks it."]
    for record, seen in domain_record_rows(domain):
        if seen["status"] == MISSING:
            missing.append(f"{record.type} {record.name} ({record.purpose}) is missing: publish {record.value!r}.")
        elif seen["status"] == WRONG_VALUE:
            missing.append(
                f"{record.type} {record.name} ({record.purpose}) answers {', '.join(seen['found'])!r}, "
                f"not {record.value!r}."
            )
        elif seen["status"] == UNKNOWN:
            missing.append(f"{record.type} {record.name} ({record.purpose}): DNS did not answer.")
    return missing
