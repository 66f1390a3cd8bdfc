"""What public DNS answers for each record a domain publishes (dnspython).

The resolver is the system's unless DOMAIN_DNS_NAMESERVERS names servers
(DOMAIN_DNS_PORT, DOMAIN_DNS_TIMEOUT_SECONDS). Each record gets a status:

    present      DNS answers the expected value
    missing      no such record (NXDOMAIN or no answer of that type)
    wrong_value  a record of that type exists with another value (`found` shows it)
    unknown      DNS did not answer (timeout, no server reachable)
"""

import dns.exception
import dns.resolver
from django.conf import settings

from emailsvc.domains.records import DnsRecord

PRESENT, MISSING, WRONG_VALUE, UNKNOWN = "present", "missing", "wrong_value", "unknown"
UNCHECKED = "unchecked"  # not looked up yet


def _resolver() -> dns.resolver.Resolver:
    nameservers = settings.DOMAIN_DNS_NAMESERVERS
    resolver = dns.resolver.Resolver(configure=not nameservers)
    if nameservers:
        resolver.nameservers = list(nameservers)
    resolver.port = settings.DOMAIN_DNS_PORT
    resolver.lifetime = resolver.timeout = settings.DOMAIN_DNS_TIMEOUT_SECONDS
    resolver.cache = None
    return resolver


def _host(text: str) -> str:
    return text.rstrip(".").lower()


def _answers(resolver: dns.resolver.Resolver, record: DnsRecord) -> list[str] | None:
    """The values DNS holds for the record's name and type ([] for none); None: no answer."""
    try:
        answer = resolver.resolve(record.name, record.type, raise_on_no_answer=False, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout):
        return None
    if answer.rrset is None:
        return []
    if record.type == "TXT":
        return [b"".join(rdata.strings).decode(errors="replace") for rdata in answer.rrset]
    if record.type == "MX":
        return [f"{rdata.preference} {_host(rdata.exchange.to_text())}" for rdata in answer.rrset]
    return [_host(rdata.to_text()) for rdata in answer.rrset]


def _matches(record: DnsRecord, found: str) -> bool:
    if record.purpose == "dmarc":
        return found.replace(" ", "").upper().startswith("V=DMARC1;") or found.strip().upper() == "V=DMARC1"
    if record.purpose == "spf":
        terms = found.lower().split()
        return bool(terms) and terms[0] == "v=spf1" and "include:amazonses.com" in terms
    if record.type == "MX":  # the exchange decides; any preference will do
        return found.partition(" ")[2] == record.value.partition(" ")[2]
    return _host(found) == _host(record.value)


def _relevant(record: DnsRecord, values: list[str]) -> list[str]:
    """Of a name's TXT records, those of this record's kind (an SPF record is one
    TXT among others)."""
    if record.purpose == "spf":
        return [value for value in values if value.lower().startswith("v=spf1")]
    return values


def dns_records_check(records: list[DnsRecord]) -> dict[str, dict]:
    """{record key: {"status": present|missing|wrong_value|unknown, "found": [values]}}."""
    try:
        resolver = _resolver()
    except dns.resolver.NoResolverConfiguration:  # no /etc/resolv.conf and no DOMAIN_DNS_NAMESERVERS
        resolver = None
    results = {}
    for record in records:
        values = _answers(resolver, record) if resolver is not None else None
        if values is None:
            results[record.key] = {"status": UNKNOWN, "found": []}
            continue
        values = _relevant(record, values)
        if any(_matches(record, value) for value in values):
            status = PRESENT
        else:
            status = WRONG_VALUE if values else MISSING
        results[record.key] = {"status": status, "found": values}
    return results
