"""GET /api/v1/groups/{group_id}/emails and /analytics against hand-counted outcomes."""

import pytest

from emailsvc.models import ApiKey
from emailsvc.suppressions.services import suppression_add
from tests.tracking.scenario import accepted_message, drain, event, sent_message

pytestmark = pytest.mark.django_db


@pytest.fixture
def launch(api, events_queue):
    """Nine recipients of eight messages in group "launch", one of each outcome, and
    a message of another group whose events must not count."""
    suppression_add(email="f@example.com", reason="manual", source="test")
    m1 = sent_message(api, ["a@example.com", "b@example.com"], group_id="launch")
    m2 = sent_message(api, ["c@example.com"], group_id="launch")
    m3 = sent_message(api, ["d@example.com"], group_id="launch")
    m4 = sent_message(api, ["e@example.com"], group_id="launch")
    accepted_message(api, ["f@example.com"], group_id="launch")  # suppressed at submit
    m6 = sent_message(api, ["g@example.com"], group_id="launch")
    sent_message(api, ["h@example.com"], group_id="launch")  # sent, no events yet
    other = sent_message(api, ["z@example.com"], group_id="other")
    # Last: sent_message runs the delivery engine, which would take this one too.
    accepted_message(api, ["q@example.com"], group_id="launch")  # accepted, not yet delivered
    events_queue.put(
        event(m1, "Delivery", ["a@example.com"], seconds=1),
        event(m1, "Open", ["a@example.com"], seconds=2),
        event(m1, "Open", ["a@example.com"], seconds=3),
        event(m1, "Delivery", ["b@example.com"], seconds=1),
        event(m1, "Click", ["b@example.com"], seconds=4),
        event(m2, "Delivery", seconds=1),
        event(m2, "Complaint", seconds=5),
        event(m3, "Bounce", bounce_type="Permanent", bounce_subtype="General"),
        event(m4, "Bounce", bounce_type="Transient", bounce_subtype="MailboxFull"),
        event(m6, "Reject", reason="Bad content"),
        event(other, "Delivery"),
        event(other, "Open"),
    )
    assert drain()["applied"] == 12
    return "launch"


def test_group_analytics_equal_a_hand_count(make_client, launch):
    reader = make_client(ApiKey.Permission.READ_ONLY)

    response = reader.get(f"/api/v1/groups/{launch}/analytics")

    assert response.status_code == 200
    assert response.json() == {
        "group_id": "launch",
        "messages": 9,  # and the re-send e's soft bounce earned, scheduled in the same group
        "total": 10,
        "queued": 2,  # q, and e's re-send
        "sent": 7,  # a b c d e g h
        "delivered": 3,  # a b c
        "opened": 2,  # two open events of a
        "unique_opened": 1,
        "clicked": 1,
        "unique_clicked": 1,
        "bounced": 1,  # d
        "soft_bounced": 1,  # e
        "delayed": 0,
        "complained": 1,  # c
        "failed": 1,  # g (rejected by SES)
        "suppressed": 1,  # f
        "cancelled": 0,
        "delivery_rate": round(3 / 7, 4),
        "open_rate": round(1 / 3, 4),
        "click_rate": round(1 / 3, 4),
        "bounce_rate": round(1 / 7, 4),
        "complaint_rate": round(1 / 7, 4),
    }


def test_group_emails_are_paginated_newest_first(make_client, launch):
    reader = make_client(ApiKey.Permission.READ_ONLY)

    seen, url = [], f"/api/v1/groups/{launch}/emails?limit=3"
    while url:
        page = reader.get(url).json()
        assert len(page["results"]) <= 3
        seen.extend(page["results"])
        url = page["next"]

    assert len(seen) == 9  # the eight, and e's re-send
    assert len({record["email_id"] for record in seen}) == 9
    (resend,) = [record for record in seen if record["retry_of"]]
    assert resend["status"] == "scheduled" and [r["email"] for r in resend["recipients"]] == ["e@example.com"]
    created = [record["created_at"] for record in seen]
    assert created == sorted(created, reverse=True)
    first_sent = seen[-1]
    assert [r["email"] for r in first_sent["recipients"]] == ["a@example.com", "b@example.com"]
    assert {r["status"] for r in first_sent["recipients"]} == {"opened", "clicked"}
    assert "html" not in first_sent and "events" not in first_sent


def test_unknown_group_is_not_found(api):
    for path in ("emails", "analytics"):
        response = api.get(f"/api/v1/groups/no-such-group/{path}")
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


def test_group_endpoints_need_a_key(client):
    assert client.get("/api/v1/groups/launch/analytics").status_code == 401


def test_group_with_nothing_sent_has_null_rates(api):
    accepted_message(api, ["q@example.com"], group_id="fresh")

    analytics = api.get("/api/v1/groups/fresh/analytics").json()

    assert (analytics["total"], analytics["sent"], analytics["delivery_rate"], analytics["open_rate"]) == (1, 0, None, None)


def test_group_ids_with_slashes_are_reachable(api):
    accepted_message(api, ["q@example.com"], group_id="invites/2026/march")

    analytics = api.get("/api/v1/groups/invites/2026/march/analytics")
    emails = api.get("/api/v1/groups/invites/2026/march/emails")

    assert analytics.status_code == 200 and analytics.json()["group_id"] == "invites/2026/march"
    assert emails.status_code == 200 and len(emails.json()["results"]) == 1
