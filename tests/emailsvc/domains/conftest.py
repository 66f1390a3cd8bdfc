"""Sending-domain tests: the sandbox's SES (moto over HTTP, plus the sandbox's
simulation where moto has no API) and a real DNS server on 127.0.0.1."""

import uuid

import pytest

from tests.dnsserver import DnsServer


@pytest.fixture(scope="module")
def dns_server():
    server = DnsServer().start()
    yield server
    server.stop()


@pytest.fixture
def domains(settings, moto_server, dns_server):
    """Settings for the domain tests: the sandbox provider against moto, the DNS check
    asking the local server, and a sandbox verification delay the test sets."""
    settings.EMAIL_PROVIDER = "sandbox"
    settings.AWS_ENDPOINT_URL = moto_server.url
    settings.DOMAIN_DNS_NAMESERVERS = [dns_server.host]
    settings.DOMAIN_DNS_PORT = dns_server.port
    settings.DOMAIN_DNS_TIMEOUT_SECONDS = 1
    settings.SANDBOX_DOMAIN_VERIFY_SECONDS = 3600  # pending unless the test shortens it
    dns_server.clear()
    yield settings
    dns_server.clear()


def unique_domain(prefix: str = "acme") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.example"


def publish_all(dns_server: DnsServer, domain: dict, *, skip: tuple[str, ...] = ()) -> None:
    """Publish a domain's records (as the API answered them) in the test DNS server."""
    for record in domain["records"]:
        if record["purpose"] in skip:
            continue
        value = record["value"] + "." if record["type"] == "CNAME" else record["value"]
        if record["type"] == "MX":
            value += "."
        if record["type"] == "TXT":
            value = f'"{value}"'
        key = (record["name"], record["type"])
        dns_server.publish(record["name"], record["type"], *dns_server.records.get(key, []), value)
