"""The operator console driven in a real browser: headless Chromium (Debian's
`chromium` package) under Playwright for Python, against a live web server on
the test database. Screenshots go to tests/artifacts/screenshots/ (CI keeps them).

Chromium is never downloaded (`playwright install` is not used): Playwright is
pointed at /usr/bin/chromium. Where it is missing, the test installs it with
apt-get when it runs as root, and skips with the reason only when it cannot.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from django.utils import timezone

from emailsvc.keys import api_key_create
from emailsvc.models import Message, SendingPause, Status, Suppression, WorkState
from emailsvc.sending_control.breaker import sending_pause
from tests.conftest import BASE_DIR
from tests.console.conftest import ADDRESS
from tests.tracking.scenario import accepted_message

pytestmark = pytest.mark.django_db(transaction=True)

SCREENSHOTS = BASE_DIR / "tests" / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
# The operator's browser is in Paris: the pages must show times in its zone.
BROWSER_ZONE = "Europe/Paris"
WIDTH = 1280


def _chromium() -> str:
    """The path of Debian's Chromium; installed here with apt-get if missing and we are root."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        for command in (
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
            ["sh", "-c", "apt-get update && apt-get install -y --no-install-recommends chromium"],
        ):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            if subprocess.run(command, env=env, capture_output=True, timeout=900).returncode == 0:
                break
        found = shutil.which("chromium")
    if not found:
        pytest.skip(
            "Chromium is not installed and could not be installed here "
            "(run as root: apt-get install -y --no-install-recommends chromium)"
        )
    return found


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements-dev.txt: pip install it")
    executable = _chromium()
    # Playwright's sync API keeps an event loop in this thread while it runs;
    # the tests' own ORM calls between browser steps are synchronous and safe.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, live_server, admin_user, request):
    context = browser.new_context(viewport={"width": WIDTH, "height": 900}, timezone_id=BROWSER_ZONE, locale="en-US")
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.base_url = live_server.url
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", admin_user.username)
    page.fill("#id_password", "password")
    page.click("input[type=submit]")
    # The admin home tells the server the browser's zone and shows itself again in it.
    page.wait_for_function(f"document.querySelector('.console-zone')?.dataset.zone === '{BROWSER_ZONE}'")
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}-last.png"), full_page=True)
    context.close()


def shot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def no_sideways_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def card(page, message: Message):
    return page.locator(f".console-message[data-email-id='{message.email_id}']")


def test_support_looks_up_an_address_lifts_its_suppression_resends_and_cancels(page, support_case):
    # One search from the admin home, in whatever case the customer wrote it.
    page.fill("#console-q", "Jane.Doe@Example.COM")
    page.press("#console-q", "Enter")
    page.wait_for_selector("#address-messages")
    assert page.locator("h1").inner_text() == ADDRESS

    # Why: suppressed after a hard bounce of one email, linked to that event and email.
    suppression = page.locator("#suppression")
    assert "suppressed" in suppression.inner_text() and "Hard Bounce" in suppression.inner_text()
    assert suppression.get_by_role("link", name=support_case.hard_bounced.email_id).count() == 1
    assert "bounce event" in suppression.inner_text()
    assert page.locator("#soft-bounces .console-figure").inner_text() == "1"

    # Every email, the suppressed one too (it has no events), each with its timeline.
    for message in (support_case.delivered, support_case.soft_bounced, support_case.retry, support_case.hard_bounced,
                    support_case.suppressed):
        assert card(page, message).count() == 1, message.subject
    bounced = card(page, support_case.hard_bounced).inner_text()
    assert "550 5.1.1 user unknown" in bounced and "Permanent" in bounced and "sent → bounced" in bounced
    assert "queued → suppressed" in card(page, support_case.suppressed).inner_text()
    # Times to the second, in the browser's zone (Paris is UTC+1 in winter, UTC+2 in summer).
    sent_at = timezone.localtime(support_case.hard_bounced.sent_at, timezone=__import__("zoneinfo").ZoneInfo(BROWSER_ZONE))
    assert sent_at.strftime("%Y-%m-%d %H:%M:%S %Z") in bounced
    assert no_sideways_scroll(page)
    shot(page, "address-page")
    # The first screen, as docs/address-page.png shows it.
    page.screenshot(path=str(SCREENSHOTS / "address-page-first-screen.png"))

    # Lift the suppression (a POST through suppression_lift).
    page.click("#lift-suppression")
    page.wait_for_selector(".messagelist .success")
    assert "no longer suppressed" in page.locator(".messagelist").inner_text()
    assert "not suppressed" in page.locator("#suppression").inner_text()
    assert not Suppression.objects.filter(email=ADDRESS).exists()

    # Resend the email that was suppressed: a new email, linked, queued this time.
    card(page, support_case.suppressed).locator(".console-resend").click()
    page.wait_for_selector(".messagelist .success")
    resent = Message.objects.get(retry_of=support_case.suppressed)
    assert resent.status == Status.QUEUED and list(resent.recipients.values_list("email", flat=True)) == [ADDRESS]
    assert resent.email_id in page.locator(".messagelist").inner_text()
    assert card(page, resent).count() == 1
    assert "sends again" in card(page, resent).inner_text()

    # Cancel the re-send the soft bounce scheduled.
    card(page, support_case.retry).locator(".console-cancel").click()
    page.wait_for_selector(".messagelist .success")
    assert "cancelled" in page.locator(".messagelist").inner_text()
    support_case.retry.refresh_from_db()
    assert support_case.retry.status == Status.CANCELLED
    assert card(page, support_case.retry).locator(".console-cancel").count() == 0
    shot(page, "address-page-after-actions")


def test_message_page_reads_at_1280px_and_resends(page, support_case):
    page.goto(f"{page.base_url}/admin/emailsvc/message/{support_case.hard_bounced.pk}/change/")
    recipients = page.locator("#recipients").inner_text()
    # Bounce facts as fields, not JSON.
    assert "Bounce type: Permanent" in recipients and "Diagnostic: smtp; 550 5.1.1 user unknown" in recipients
    assert "{" not in recipients
    timeline = page.locator("#timeline").inner_text()
    assert "queued → sent" in timeline and "sent → bounced" in timeline and "CET" in timeline or "CEST" in timeline
    assert no_sideways_scroll(page)
    shot(page, "message-page")

    page.click("#resend-message")
    page.wait_for_selector(".messagelist .success")
    resent = Message.objects.get(retry_of=support_case.hard_bounced)
    # Still suppressed: the new email says so rather than sending.
    assert resent.status == Status.SUPPRESSED
    assert page.url.endswith(f"/admin/emailsvc/message/{resent.pk}/change/")
    assert support_case.hard_bounced.email_id in page.locator("#resends").inner_text()
    shot(page, "message-page-resent")

    page.goto(f"{page.base_url}/admin/emailsvc/message/{support_case.retry.pk}/change/")
    page.click("#cancel-message")
    page.wait_for_selector(".messagelist .success")
    assert Message.objects.get(pk=support_case.retry.pk).status == Status.CANCELLED
    assert page.locator("#cancel-message").count() == 0


def test_operator_resumes_a_paused_domain_and_reads_the_queues(page, api, events_queue):
    sending_pause(
        domain="example.com", cause=SendingPause.Cause.BREAKER, reason="bounce rate 6.00% ≥ 4.00% over 24 h (60/1000)",
        figures={"sent": 1000, "bounced": 60, "complained": 0, "bounce_rate": 0.06, "complaint_rate": 0.0},
    )
    held = accepted_message(api, ["someone@example.com"])
    assert held.state == WorkState.HELD
    events_queue.put({"not": "an SES event"}, {"not": "one either"})

    page.click("text=Sending status")
    row = page.locator(".sending-row[data-domain='example.com']")
    assert "paused" in row.inner_text() and "bounce rate 6.00%" in row.inner_text()
    assert no_sideways_scroll(page)
    shot(page, "sending-status")
    row.locator(".console-resume").click()
    page.wait_for_selector(".messagelist .success")
    # No longer paused (a domain with no sends in 24 h and no pause leaves the table); the history says who resumed it.
    assert page.locator(".sending-row[data-domain='example.com'] .console-resume").count() == 0
    assert "admin:admin" in page.locator("#pause-history").inner_text()
    assert SendingPause.objects.get(domain="example.com").resumed_by == "admin:admin"
    held.refresh_from_db()
    assert held.state == WorkState.QUEUED

    page.click("text=Queues and drain")
    page.wait_for_selector("#backlog")
    assert page.locator("#events-queue .console-figure").inner_text() == "2"
    assert page.locator("#backlog tr[data-priority='normal']").count() == 1
    assert "recipients/s" in page.locator("#limiter").inner_text()
    assert no_sideways_scroll(page)
    shot(page, "queues")


LISTS = {
    # The columns a user needs on each list, by their header's class (Django's column-<field>).
    "/admin/emailsvc/message/": ["email_id", "to", "subject", "status_shown", "created_at", "sent_at", "group_id"],
    "/admin/emailsvc/suppression/": ["email", "reason", "source", "created_at", "expires_at"],
    "/admin/emailsvc/statuschange/": ["at", "address", "from_status", "to_status", "cause", "email"],
    "/admin/emailsvc/apikey/": ["name", "prefix", "permission", "scope", "test", "state", "last_used_at"],
}


def test_the_lists_fit_at_1280px_without_an_inner_scroll_and_view_site_leads_to_the_console(page, support_case, api):
    # Long values, as they come: a long group id, subject and address.
    accepted_message(
        api, ["a.rather.long.recipient.name@subdomain.customer-example.com"], group_id="spring-campaign-2026-eu-west",
        subject="Your monthly statement for November is ready to view in your account",
    )
    api_key_create(name="ci for the billing service", domains=["billing.customer-example.com", "mail.customer-example.com"], test=True)
    page.set_viewport_size({"width": WIDTH, "height": 800})
    for path, columns in LISTS.items():
        page.goto(f"{page.base_url}{path}")
        results = page.locator("#changelist .results")
        widths = results.evaluate("e => [e.scrollWidth, e.clientWidth]")
        assert widths[0] <= widths[1], f"{path}: the table is {widths[0]} px wide in {widths[1]} px"
        for column in columns:
            header = page.locator(f"#result_list th.column-{column}")
            assert header.is_visible(), f"{path}: {column}"
            box, container = header.bounding_box(), results.bounding_box()
            assert box["x"] + box["width"] <= container["x"] + container["width"] + 1, f"{path}: {column} hidden"
        # No cell's text runs under its neighbour; only long ids end in "…".
        overflowing = results.evaluate(
            """e => [...e.querySelectorAll('tbody td, tbody th')]
                .filter(c => !c.matches('.field-email_id, .field-group_id, .model-statuschange .field-email'))
                .filter(c => c.scrollWidth > c.clientWidth)
                .map(c => `${c.className} ${c.scrollWidth}>${c.clientWidth}`)"""
        )
        assert overflowing == [], path
        assert no_sideways_scroll(page)
        shot(page, "list-" + path.strip("/").replace("/", "-"))

    with page.expect_navigation() as navigation:
        page.click("#user-tools a:has-text('View site')")
    assert navigation.value.status == 200
    assert page.url == f"{page.base_url}/admin/" and page.locator("#console-q").count() == 1
