"""The DNS check against a real DNS server: what public DNS answers for each
record, beside SES's status, and what is missing."""

import socket

import pytest

from emailsvc.domains.dnscheck import dns_records_check
from emailsvc.domains.records import DnsRecord
from tests.emailsvc.domains.conftest import publish_all, unique_domain

pytestmark = pytest.mark.django_db


def _by_purpose(domain: dict) -> dict[str, list[dict]]:
    found = {}
    for record in domain["records"]:
        found.setdefault(record["purpose"], []).append(record)
    return found


def test_verify_shows_which_records_dns_answers_and_what_is_missing(domains, full_api, dns_server):
    name = unique_domain()
    domain = full_api.post("/api/v1/domains", {"name": name}, format="json").json()
    dkim = _by_purpose(domain)["dkim"]
    # Published: two DKIM CNAMEs right, the third pointing elsewhere, the MX, an
    # unrelated TXT beside no SPF, and DMARC with a stricter policy than suggested.
    publish_all(dns_server, domain, skip=("spf", "dkim", "dmarc"))
    for record in dkim[:2]:
        dns_server.publish(record["name"], "CNAME", record["value"] + ".")
    dns_server.publish(dkim[2]["name"], "CNAME", "elsewhere.example.net.")
    dns_server.publish(f"mail.{name}", "TXT", '"google-site-verification=abc"')
    dns_server.publish(f"_dmarc.{name}", "TXT", '"v=DMARC1; p=reject; rua=mailto:d@' + name + '"')

    checked = full_api.post(f"/api/v1/domains/{name}/verify").json()

    statuses = {record["name"] + " " + record["type"]: record["status"] for record in checked["records"]}
    assert statuses == {
        f"{dkim[0]['name']} CNAME": "present",
        f"{dkim[1]['name']} CNAME": "present",
        f"{dkim[2]['name']} CNAME": "wrong_value",
        f"mail.{name} MX": "present",
        f"mail.{name} TXT": "missing",
        f"_dmarc.{name} TXT": "present",
    }
    third = next(record for record in checked["records"] if record["name"] == dkim[2]["name"])
    assert third["found"] == ["elsewhere.example.net"]
    assert checked["dns_checked_at"] and checked["status"] == "pending"
    missing = " ".join(checked["missing"])
    assert f"CNAME {dkim[2]['name']} (dkim) answers 'elsewhere.example.net'" in missing
    assert f"TXT mail.{name} (spf) is missing" in missing
    assert dkim[0]["name"] not in missing
    # Stored: a later GET shows the same without asking DNS again.
    queries = dns_server.queries
    assert full_api.get(f"/api/v1/domains/{name}").json()["records"] == checked["records"]
    assert dns_server.queries == queries


def test_a_domain_with_nothing_published_is_missing_every_record(domains, full_api):
    name = unique_domain()
    full_api.post("/api/v1/domains", {"name": name}, format="json")
    checked = full_api.post(f"/api/v1/domains/{name}/verify").json()
    assert {record["status"] for record in checked["records"]} == {"missing"}
    assert len(checked["missing"]) == 1 + 6  # SES's status, then each record


def test_a_dns_server_that_does_not_answer_is_reported_as_unknown(domains):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        domains.DOMAIN_DNS_PORT = silent.getsockname()[1]
        domains.DOMAIN_DNS_TIMEOUT_SECONDS = 0.3
        record = DnsRecord("dmarc", "TXT", "_dmarc.quiet.example", "v=DMARC1; p=none;", "dmarc")
        assert dns_records_check([record]) == {"dmarc": {"status": "unknown", "found": []}}
    finally:
        silent.close()


def test_spf_is_found_among_other_txt_records_and_mx_preference_is_free(domains, dns_server):
    name = unique_domain()
    dns_server.publish(f"mail.{name}", "TXT", '"other=1"', '"v=spf1 ip4:192.0.2.1 include:amazonses.com -all"')
    dns_server.publish(f"mail.{name}", "MX", "20 feedback-smtp.us-east-1.amazonses.com.")
    records = [
        DnsRecord("mail_from_spf", "TXT", f"mail.{name}", "v=spf1 include:amazonses.com ~all", "spf"),
        DnsRecord("mail_from_mx", "MX", f"mail.{name}", "10 feedback-smtp.us-east-1.amazonses.com", "mail_from"),
    ]
    checked = dns_records_check(records)
    assert checked["mail_from_spf"]["status"] == "present"
    assert checked["mail_from_spf"]["found"] == ["v=spf1 ip4:192.0.2.1 include:amazonses.com -all"]
    assert checked["mail_from_mx"] == {"status": "present", "found": ["20 feedback-smtp.us-east-1.amazonses.com"]}
