"""Sending policy: which from / reply-to / recipient domains are allowed (SPEC §5.1).

A From domain is allowed when ALLOWED_FROM_DOMAINS allows it (the zero-config and
override path, as before sending domains existed), else when it or a parent
domain is a verified sending domain; an unverified one is refused with
`domain_not_verified`, naming what is missing (docs/domains.md).

Domains are compared in their canonical form (core.addresses: lower case,
IDNA A-labels), so an allowlisted `bücher.example` and `xn--bcher-kva.example`
are the same domain, and so are their sub-domains, whichever form they come in.
"""

from functools import lru_cache

from django.conf import settings

from core.addresses import InvalidAddress, domain_canonical
from core.errors import PolicyViolation
from emailsvc.domains.selectors import domain_for_sender, domain_missing


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


@lru_cache(maxsize=1024)
def _canonical(domain: str) -> str:
    domain = domain.strip().rstrip(".").lstrip(".")
    if domain == "*":
        return domain
    try:
        return domain_canonical(domain)
    except InvalidAddress:
        return domain.lower()  # matches nothing a valid address has


def domain_allowed(domain: str, allowlist: list[str], *, empty_allows_all: bool) -> bool:
    """True when `domain` is an allowed domain or a sub-domain of one ("*" allows all)."""
    if not allowlist:
        return empty_allows_all
    domain = _canonical(domain)
    return any(
        allowed == "*" or domain == allowed or domain.endswith("." + allowed)
        for allowed in (_canonical(entry) for entry in allowlist)
    )


def _check_sending_domain(domain: str) -> None:
    """A From domain ALLOWED_FROM_DOMAINS does not allow may send once it (or a parent
    domain) is a verified sending domain (docs/domains.md)."""
    row = domain_for_sender(domain=domain)
    if row is None:
        raise PolicyViolation(
            f"Sending from the domain '{domain}' is not allowed.",
            fields={"from": [f"Allowed from domains: {', '.join(settings.ALLOWED_FROM_DOMAINS)}."]},
            code="from_domain_not_allowed",
        )
    if row.status != row.Status.VERIFIED:
        missing = domain_missing(row)
        raise PolicyViolation(
            f"The sending domain '{row.name}' is not verified ({row.status}): {' '.join(missing)}",
            fields={"from": missing},
            code="domain_not_verified",
        )


def check_sender_policy(*, from_email: str, reply_to: list[str], recipients: dict[str, list[str]]) -> None:
    """Raise PolicyViolation naming the field when an address's domain is not allowed.

    `recipients` maps a field name (to / cc / bcc) to its addresses.
    """
    if not domain_allowed(domain_of(from_email), settings.ALLOWED_FROM_DOMAINS, empty_allows_all=False):
        _check_sending_domain(_canonical(domain_of(from_email)))
    refused = [a for a in reply_to if not domain_allowed(domain_of(a), settings.ALLOWED_REPLY_TO_DOMAINS, empty_allows_all=True)]
    if refused:
        raise PolicyViolation(
            "A reply-to domain is not allowed.",
            fields={"reply_to": [f"Domain '{domain_of(a)}' is not allowed." for a in refused]},
            code="reply_to_domain_not_allowed",
        )
    fields = {}
    for field, addresses in recipients.items():
        refused = [
            a for a in addresses
            if not domain_allowed(domain_of(a), settings.ALLOWED_RECIPIENT_DOMAINS, empty_allows_all=True)
        ]
        if refused:
            fields[field] = [f"Domain '{domain_of(a)}' is not allowed." for a in refused]
    if fields:
        raise PolicyViolation(
            "A recipient domain is not allowed.", fields=fields, code="recipient_domain_not_allowed"
        )
