"""The DNS records a sending domain publishes, derived from the domain row.

Easy DKIM: three CNAMEs `<token>._domainkey.<domain>` → `<token>.dkim.amazonses.com`.
Custom MAIL FROM: the sub-domain's MX → SES's feedback endpoint of the region and its
SPF TXT. DMARC: a `p=none` TXT to start from (any DMARC record counts as present).
"""

from dataclasses import dataclass

from django.conf import settings

SPF_VALUE = "v=spf1 include:amazonses.com ~all"
DMARC_VALUE = "v=DMARC1; p=none;"


@dataclass(frozen=True)
class DnsRecord:
    key: str  # stable within a domain: dkim1..3, mail_from_mx, mail_from_spf, dmarc
    type: str
    name: str
    value: str
    purpose: str  # dkim, mail_from, spf, dmarc


def domain_records(*, name: str, dkim_tokens: list[str], mail_from_domain: str) -> list[DnsRecord]:
    records = [
        DnsRecord(f"dkim{index}", "CNAME", f"{token}._domainkey.{name}", f"{token}.dkim.amazonses.com", "dkim")
        for index, token in enumerate(dkim_tokens, start=1)
    ]
    records += [
        DnsRecord(
            "mail_from_mx", "MX", mail_from_domain, f"10 feedback-smtp.{settings.AWS_REGION}.amazonses.com", "mail_from"
        ),
        DnsRecord("mail_from_spf", "TXT", mail_from_domain, SPF_VALUE, "spf"),
        DnsRecord("dmarc", "TXT", f"_dmarc.{name}", DMARC_VALUE, "dmarc"),
    ]
    return records
