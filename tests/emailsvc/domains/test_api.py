"""Sending domains through the API: add → records → verified → sending allowed,
permissions, bad input, delete (docs/domains.md)."""

import pytest
from django.utils import timezone

from emailsvc.domains.models import Domain
from emailsvc.domains.services import domains_refresh_due
from tests.conftest import poll
from tests.emailsvc.domains.conftest import publish_all, unique_domain

pytestmark = pytest.mark.django_db


def _send(api, from_email: str):
    return api.post(
        "/api/v1/emails",
        {"from": from_email, "to": "success@simulator.amazonses.com", "subject": "Hi", "text": "Hello."},
        format="json",
    )


def _verified(full_api, name: str) -> dict:
    """POST …/verify until the sandbox's SES reports the domain verified."""
    return poll(
        lambda: full_api.post(f"/api/v1/domains/{name}/verify").json(),
        until=lambda answer: answer["status"] == "verified",
        timeout=10,
        interval=0.1,
    )


def test_adding_a_domain_answers_the_records_to_publish(domains, full_api, moto_server):
    name = unique_domain()
    response = full_api.post("/api/v1/domains", {"name": name.upper()}, format="json")

    assert response.status_code == 201, response.json()
    domain = response.json()
    assert domain["name"] == name and domain["status"] == "pending"
    assert domain["mail_from_domain"] == f"mail.{name}"
    by_purpose = {}
    for record in domain["records"]:
        assert set(record) >= {"type", "name", "value", "purpose", "status"}
        assert record["status"] == "unchecked"
        by_purpose.setdefault(record["purpose"], []).append(record)
    dkim = by_purpose["dkim"]
    assert len(dkim) == 3 and {record["type"] for record in dkim} == {"CNAME"}
    for record in dkim:
        token = record["name"].split(".")[0]
        assert record["name"] == f"{token}._domainkey.{name}"
        assert record["value"] == f"{token}.dkim.amazonses.com"
    [mx] = by_purpose["mail_from"]
    assert (mx["type"], mx["name"], mx["value"]) == ("MX", f"mail.{name}", "10 feedback-smtp.us-east-1.amazonses.com")
    [spf] = by_purpose["spf"]
    assert (spf["type"], spf["name"], spf["value"]) == ("TXT", f"mail.{name}", "v=spf1 include:amazonses.com ~all")
    [dmarc] = by_purpose["dmarc"]
    assert (dmarc["type"], dmarc["name"]) == ("TXT", f"_dmarc.{name}") and dmarc["value"].startswith("v=DMARC1;")
    assert domain["ses"]["verified_for_sending"] is False and domain["ses"]["dkim_status"] == "PENDING"
    assert domain["missing"] and "SES has not verified" in domain["missing"][0]
    # The identity exists in the emulated SES.
    assert moto_server.client("sesv2").get_email_identity(EmailIdentity=name)["IdentityType"] == "DOMAIN"
    # Listed and readable with a read-only key too.
    assert full_api.get(f"/api/v1/domains/{name}").json()["records"] == domain["records"]
    assert name in [row["name"] for row in full_api.get("/api/v1/domains").json()["data"]]


def test_a_domain_verifies_then_its_addresses_may_send(domains, full_api, api, dns_server):
    name = unique_domain()
    domains.SANDBOX_DOMAIN_VERIFY_SECONDS = 0.5
    domain = full_api.post("/api/v1/domains", {"name": name}, format="json").json()

    refused = _send(api, f"billing@{name}")
    assert refused.status_code == 400
    assert refused.json()["error"] == "domain_not_verified"
    assert name in refused.json()["detail"] and "SES has not verified" in refused.json()["detail"]
    assert refused.json()["fields"]["from"]

    publish_all(dns_server, domain)
    verified = _verified(full_api, name)
    assert verified["ses"] == {**verified["ses"], "verification_status": "SUCCESS", "dkim_status": "SUCCESS",
                               "mail_from_status": "SUCCESS", "verified_for_sending": True}
    assert {record["status"] for record in verified["records"]} == {"present"}
    assert verified["missing"] == [] and verified["verified_at"]

    accepted = _send(api, f"billing@{name}")
    assert accepted.status_code == 202, accepted.json()
    # A verified domain covers its sub-domains, as an SES domain identity does.
    assert _send(api, f"news@eu.{name}").status_code == 202
    # A domain nobody added is still refused as before, naming the allowed ones.
    other = _send(api, f"x@{unique_domain('other')}")
    assert other.status_code == 400 and other.json()["error"] == "from_domain_not_allowed"
    # ALLOWED_FROM_DOMAINS keeps allowing what it lists, domains or not.
    assert _send(api, "noreply@example.com").status_code == 202


def test_allowed_from_domains_overrides_an_unverified_domain(domains, full_api, api):
    name = unique_domain()
    full_api.post("/api/v1/domains", {"name": name}, format="json")
    assert _send(api, f"a@{name}").json()["error"] == "domain_not_verified"

    domains.ALLOWED_FROM_DOMAINS = ["example.com", name]
    assert _send(api, f"a@{name}").status_code == 202


def test_beat_runs_the_domain_check_task():
    """Beat publishes the check every DOMAIN_CHECK_INTERVAL_SECONDS; the task calls domains_refresh_due."""
    from django.conf import settings

    from config.celery import app
    from emailsvc.tasks import domains_refresh_task

    app.loader.import_default_modules()
    entry = settings.CELERY_BEAT_SCHEDULE["check-sending-domains"]
    assert app.tasks[entry["task"]].run == domains_refresh_task.run
    assert entry["schedule"] == settings.DOMAIN_CHECK_INTERVAL_SECONDS


def test_the_periodic_check_verifies_and_then_backs_off(domains, full_api):
    name = unique_domain()
    domains.SANDBOX_DOMAIN_VERIFY_SECONDS = 0.3
    domains.DOMAIN_CHECK_INTERVAL_SECONDS = 0.1
    full_api.post("/api/v1/domains", {"name": name}, format="json")

    row = poll(
        lambda: (domains_refresh_due(), Domain.objects.get(name=name))[1],
        until=lambda row: row.status == Domain.Status.VERIFIED,
        timeout=10,
        interval=0.1,
    )
    assert row.status == Domain.Status.VERIFIED and row.dns_checked_at is not None
    seconds_to_next = (row.next_check_at - timezone.now()).total_seconds()
    assert seconds_to_next > domains.DOMAIN_VERIFIED_CHECK_SECONDS - 60
    assert domains_refresh_due() == 0  # not due again until then


def test_delete_is_refused_while_emails_from_the_domain_are_queued(domains, full_api, api, moto_server):
    name = unique_domain()
    domains.SANDBOX_DOMAIN_VERIFY_SECONDS = 0.2
    full_api.post("/api/v1/domains", {"name": name}, format="json")
    _verified(full_api, name)
    email_id = _send(api, f"billing@{name}").json()["email_id"]

    refused = full_api.delete(f"/api/v1/domains/{name}")
    assert refused.status_code == 409
    assert refused.json()["error"] == "domain_in_use" and "1 email" in refused.json()["detail"]
    assert full_api.get(f"/api/v1/domains/{name}").status_code == 200

    assert api.post(f"/api/v1/emails/{email_id}/cancel").status_code == 200
    assert full_api.delete(f"/api/v1/domains/{name}").status_code == 204
    assert full_api.get(f"/api/v1/domains/{name}").json()["error"] == "domain_not_found"
    ses = moto_server.client("sesv2")
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.get_email_identity(EmailIdentity=name)
    # Gone from the policy too: its addresses are refused again.
    assert _send(api, f"billing@{name}").json()["error"] == "from_domain_not_allowed"


def test_only_full_keys_manage_domains(domains, full_api, read_api, api):
    name = unique_domain()
    assert read_api.post("/api/v1/domains", {"name": name}, format="json").status_code == 403
    assert api.post("/api/v1/domains", {"name": name}, format="json").json()["error"] == "forbidden"
    assert full_api.post("/api/v1/domains", {"name": name}, format="json").status_code == 201
    assert read_api.get(f"/api/v1/domains/{name}").status_code == 200
    assert read_api.get("/api/v1/domains").status_code == 200
    assert read_api.post(f"/api/v1/domains/{name}/verify").status_code == 403
    assert api.delete(f"/api/v1/domains/{name}").status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "localhost"}, "name"),
        ({"name": "192.168.0.1"}, "name"),
        ({"name": "bad_label.example"}, "name"),
        ({"name": "printer.local"}, "name"),
        ({"name": "acme.example", "mail_from_subdomain": "a.b"}, "mail_from_subdomain"),
    ],
)
def test_a_bad_domain_is_refused_with_a_stable_code(domains, full_api, body, field):
    response = full_api.post("/api/v1/domains", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_domain" and field in response.json()["fields"]


def test_bad_bodies_and_duplicates(domains, full_api):
    assert full_api.post("/api/v1/domains", {}, format="json").json()["error"] == "missing_fields"
    unknown = full_api.post("/api/v1/domains", {"name": "a.example", "dkim": True}, format="json")
    assert unknown.status_code == 400 and "dkim" in unknown.json()["fields"]
    name = unique_domain()
    assert full_api.post("/api/v1/domains", {"name": name}, format="json").status_code == 201
    again = full_api.post("/api/v1/domains", {"name": name + "."}, format="json")
    assert again.status_code == 409 and again.json()["error"] == "domain_exists"
    assert full_api.post(f"/api/v1/domains/nope-{name}/verify").json()["error"] == "domain_not_found"


def test_an_internationalised_domain_is_stored_and_found_in_its_ascii_form(domains, full_api, moto_server):
    name = unique_domain("bücher")
    ascii_name = name.encode("idna").decode()
    created = full_api.post("/api/v1/domains", {"name": name}, format="json").json()
    assert created["name"] == ascii_name and ascii_name.startswith("xn--")
    assert full_api.get(f"/api/v1/domains/{name}").json()["name"] == ascii_name
    assert full_api.get(f"/api/v1/domains/{ascii_name.upper()}").json()["name"] == ascii_name
    assert moto_server.client("sesv2").get_email_identity(EmailIdentity=ascii_name)["IdentityType"] == "DOMAIN"


def test_a_custom_mail_from_subdomain(domains, full_api):
    name = unique_domain()
    domain = full_api.post("/api/v1/domains", {"name": name, "mail_from_subdomain": "Bounce"}, format="json").json()
    assert domain["mail_from_domain"] == f"bounce.{name}"
    assert {r["name"] for r in domain["records"] if r["purpose"] in ("mail_from", "spf")} == {f"bounce.{name}"}


def test_with_ses_an_ses_refusal_is_reported_and_leaves_nothing_behind(domains, full_api, moto_server):
    """Against moto as EMAIL_PROVIDER=ses: moto has no PutEmailIdentityMailFromAttributes,
    so the create fails there, names the operation, and removes the identity it made."""
    domains.EMAIL_PROVIDER = "ses"
    name = unique_domain()
    response = full_api.post("/api/v1/domains", {"name": name}, format="json")

    assert response.status_code == 502
    assert response.json()["error"] == "ses_identity_failed"
    assert "PutEmailIdentityMailFromAttributes" in response.json()["detail"]
    assert not Domain.objects.filter(name=name).exists()
    ses = moto_server.client("sesv2")
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.get_email_identity(EmailIdentity=name)


def test_without_ses_domains_are_refused_and_the_allowlist_decides(domains, full_api, api):
    domains.EMAIL_PROVIDER = "smtp"
    response = full_api.post("/api/v1/domains", {"name": unique_domain()}, format="json")
    assert response.status_code == 409 and response.json()["error"] == "domains_need_ses"
