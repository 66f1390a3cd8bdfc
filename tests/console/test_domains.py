"""The console's sending-domains page: the records to publish with copy buttons,
their live DNS state beside SES's, add and check — through Django's test client
and in a real browser (Debian's Chromium under Playwright)."""

import pytest

from emailsvc.domains.models import Domain
from tests.conftest import poll
from tests.console.test_views_browser import browser, no_sideways_scroll, page, shot  # noqa: F401 (fixtures)
from tests.emailsvc.domains.conftest import dns_server, domains, publish_all, unique_domain  # noqa: F401 (fixtures)


@pytest.mark.django_db
def test_the_page_lists_each_domain_with_its_records_and_what_is_missing(domains, admin_client, full_api, dns_server):
    name = unique_domain()
    domain = full_api.post("/api/v1/domains", {"name": name}, format="json").json()
    publish_all(dns_server, domain, skip=("spf",))
    full_api.post(f"/api/v1/domains/{name}/verify")

    page_text = admin_client.get("/admin/operations/domains/").content.decode()

    assert f'id="domain-{name}"' in page_text
    for record in domain["records"]:
        assert f'data-copy="{record["value"]}"' in page_text and f'data-copy="{record["name"]}"' in page_text
    assert page_text.count('data-status="present"') == 5 and page_text.count('data-status="missing"') == 1
    assert f"TXT mail.{name} (spf) is missing" in page_text


@pytest.mark.django_db
def test_staff_without_the_domain_permission_is_refused(client, django_user_model):
    staff = django_user_model.objects.create_user("staff", password="password", is_staff=True)
    client.force_login(staff)
    assert client.get("/admin/operations/domains/").status_code == 403
    assert client.post("/admin/operations/domains/add/", {"name": "a.example"}).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_operator_adds_a_domain_copies_its_records_and_sees_it_verified(page, domains, dns_server):  # noqa: F811
    domains.SANDBOX_DOMAIN_VERIFY_SECONDS = 0.5
    name = unique_domain()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=page.base_url)

    page.click("text=Sending domains")
    page.fill("#domain-name", name)
    page.click("text=Add sending domain")
    page.wait_for_selector(".messagelist .success")
    section = page.locator(f".console-domain[data-domain='{name}']")
    assert section.locator(".console-domain-status").inner_text() == "pending"
    assert section.locator(".console-record").count() == 6

    # Copy a DKIM record's value, as an operator pastes it at the DNS provider.
    dkim = section.locator(".console-record[data-purpose='dkim']").first
    dkim.locator("td:nth-child(3) .console-copy").click()
    page.wait_for_selector("text=Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.endswith(".dkim.amazonses.com")
    assert copied == dkim.locator("td:nth-child(3) .console-record-value").inner_text()
    assert no_sideways_scroll(page)
    shot(page, "domains-pending")

    for token in Domain.objects.get(name=name).dkim_tokens:
        dns_server.publish(f"{token}._domainkey.{name}", "CNAME", f"{token}.dkim.amazonses.com.")

    def checked_now() -> str:
        page.locator(f".console-domain[data-domain='{name}'] input[value='Check now']").click()
        page.wait_for_selector(".messagelist .success")
        return page.locator(f".console-domain[data-domain='{name}'] .console-domain-status").inner_text()

    # The sandbox's SES verifies the domain half a second after it was added.
    assert poll(checked_now, until=lambda status: status == "verified", timeout=10, interval=0.2) == "verified"
    section = page.locator(f".console-domain[data-domain='{name}']")
    assert section.locator(".console-record[data-purpose='dkim'][data-status='present']").count() == 3
    assert section.locator(".console-record[data-purpose='spf'][data-status='missing']").count() == 1
    shot(page, "domains-verified")
