"""Webhook targets: a broken IPv6 literal is a 400 naming the URL, and an IPv6
address that carries an IPv4 one (IPv4-mapped, IPv4-compatible, NAT64, 6to4,
Teredo) is judged by that IPv4 address — as a literal host or in a name's DNS
answers, when a caller subscribes, and again before every delivery, where the
host is resolved once more (a name that rebinds)."""

import socket

import pytest

from emailsvc.models import ApiKey
from tests.tracking.scenario import sent_message
from tracking.models import WebhookDelivery, WebhookEndpoint
from tracking.webhooks.outbox import webhooks_dispatch
from tracking.webhooks.sender import webhook_deliveries_send

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_api(make_client, settings):
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = False
    return make_client(ApiKey.Permission.FULL)


def _subscribe(admin_api, url: str):
    return admin_api.post("/api/v1/webhooks", {"url": url, "event_types": ["*"]}, format="json")


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/", "https://[::1/hooks", "http://[zz::1]/", "http://[::1]]:80/", "https://[::1]x/",
        "https://[[::1]]/", "https://]::1[/", "https://[v1.x]/", "https://[::1]:[80]/",
        "https://hooks.example[.com/", "https://[2001:db8::1]:8443]/",
    ],
)
def test_a_broken_ipv6_literal_is_400_invalid_webhook_url(admin_api, url):
    response = _subscribe(admin_api, url)

    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid_webhook_url" and "url" in response.json()["fields"]
    assert not WebhookEndpoint.objects.exists()


INTERNAL_BEHIND_IPV6 = [
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:a9fe:a9fe", "IPv4-mapped metadata service"),
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("::a00:1", "IPv4-compatible private"),
    ("::8.8.8.8", "IPv4-compatible (deprecated): refused outright"),
    ("64:ff9b::7f00:1", "NAT64 loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 metadata service"),
    ("64:ff9b::c0a8:1", "NAT64 private"),
    ("64:ff9b:1::808:808", "local-use NAT64: refused outright"),
    ("64:ff9b:1:7f00:1::", "local-use NAT64 loopback"),
    ("2002:7f00:1::", "6to4 loopback"),
    ("2002:a9fe:a9fe::1", "6to4 metadata service"),
    ("2002:a00:1::1", "6to4 private"),
    ("2002:c0a8:101::", "6to4 private"),
    ("2002:a9fe:1::", "6to4 link-local"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo: refused outright"),
    ("2001:0:7f00:1::", "Teredo with a loopback server"),
]
PUBLIC_BEHIND_IPV6 = ["::ffff:808:808", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize(("address", "form"), INTERNAL_BEHIND_IPV6)
def test_an_ipv6_target_carrying_an_internal_ipv4_is_refused(admin_api, address, form):
    response = _subscribe(admin_api, f"https://[{address}]/hooks")

    assert response.status_code == 400, (form, response.content)
    assert response.json()["error"] == "webhook_target_not_allowed", form
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize("address", PUBLIC_BEHIND_IPV6)
def test_an_ipv6_target_carrying_a_public_ipv4_is_accepted(admin_api, address):
    response = _subscribe(admin_api, f"https://[{address}]/hooks")

    assert response.status_code == 201, response.content


@pytest.mark.parametrize(("address", "form"), INTERNAL_BEHIND_IPV6[::2])
def test_the_embedded_ipv4_is_judged_again_before_every_delivery(api, admin_api, settings, address, form):
    """Subscribed while internal targets were allowed (as a name that resolved to
    a public address would be): at send time nothing is sent to it."""
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    assert _subscribe(admin_api, f"http://[{address}]:9/hooks").status_code == 201
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = False
    sent_message(api, ["jane@example.com"])

    for endpoint_pk in webhooks_dispatch().due_endpoints:
        webhook_deliveries_send(endpoint_pk=endpoint_pk)

    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and delivery.last_error.startswith("webhook_target_not_allowed"), form
    assert address in delivery.last_error or "resolves to" in delivery.last_error


# --- The same forms in DNS answers ------------------------------------------------------
# A name whose answers the test sets; every other name resolves as usual. (No
# resolver on this machine can be told what to answer, so the answers are set
# where the service asks for them, socket.getaddrinfo.)
REBINDING_HOST = "hooks.rebinding.example"


@pytest.fixture
def dns_answers(monkeypatch) -> list[str]:
    answers: list[str] = []
    resolve = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != REBINDING_HOST:
            return resolve(host, port, *args, **kwargs)
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port, 0, 0)) for address in answers]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@pytest.mark.parametrize(("address", "form"), INTERNAL_BEHIND_IPV6)
def test_a_name_answering_an_ipv6_address_carrying_an_internal_ipv4_is_refused(admin_api, dns_answers, address, form):
    dns_answers[:] = ["2606:2800:21f:cb07:6820:80da:af6b:8b2c", address]

    response = _subscribe(admin_api, f"https://{REBINDING_HOST}/hooks")

    assert response.status_code == 400, (form, response.content)
    assert response.json()["error"] == "webhook_target_not_allowed", form
    assert address in response.json()["detail"], form


@pytest.mark.parametrize(("address", "form"), INTERNAL_BEHIND_IPV6[1::2])
def test_a_name_that_rebinds_to_such_an_address_gets_nothing(api, admin_api, dns_answers, address, form):
    dns_answers[:] = ["2002:808:808::1"]  # 6to4 around a public address: allowed
    assert _subscribe(admin_api, f"http://{REBINDING_HOST}:9/hooks").status_code == 201
    dns_answers[:] = [address]
    sent_message(api, ["jane@example.com"])

    for endpoint_pk in webhooks_dispatch().due_endpoints:
        webhook_deliveries_send(endpoint_pk=endpoint_pk)

    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and delivery.last_error.startswith("webhook_target_not_allowed"), form
