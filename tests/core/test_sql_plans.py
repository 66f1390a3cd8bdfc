"""The hot paths stay on their indexes on tables that look used: ≥ 100,000 rows
that went through updates, with statistics that are stale (taken while every
message was still queued) or missing altogether (never analysed: this machine's
PostgreSQL runs with autovacuum off). The tests run the real code paths and
count the sequential scans PostgreSQL really did on the big tables
(pg_stat_xact_user_tables): there must be none.
"""

import json

import pytest
from django.db import connection

from emailsvc.models import Message, Recipient, StatusChange
from tests.conftest import deliver_now
from tests.tables import rows_fill
from tests.tracking.sesevents import ses_event, sns_envelope
from tracking.apply import events_apply, events_relink, events_stored
from tracking.models import EngagementEvent
from tracking.normalize import ses_body_parse

pytestmark = pytest.mark.django_db

ROWS = 100_000
BIG_TABLES = [Message._meta.db_table, Recipient._meta.db_table, StatusChange._meta.db_table, EngagementEvent._meta.db_table]


@pytest.fixture(params=["stale statistics", "no statistics"])
def used_tables(request):
    if connection.vendor != "postgresql":
        pytest.skip("query plans are PostgreSQL's")
    rows_fill(Message, ROWS, {
        "email_id": "'old-' || g", "from_email": "'noreply@example.com'", "subject": "'Old news'",
        "text": "'Hello'", "priority": "'normal'", "provider": "'ses'",
        "status": "'queued'", "state": "'queued'", "next_attempt_at": "now() - interval '30 days'",
    })
    rows_fill(Recipient, ROWS, {
        "message": f"(SELECT min(id) FROM {Message._meta.db_table}) + g - 1",
        "email": "'reader' || g || '@example.org'", "role": "'to'", "status": "'queued'",
    })
    with connection.cursor() as cursor:
        # Statistics taken while every message was still queued (no provider id
        # yet), never refreshed; then every row goes through delivery and events,
        # as in production: dead tuples, and statistics that lie.
        if request.param == "stale statistics":
            cursor.execute(f"ANALYZE {Message._meta.db_table}, {Recipient._meta.db_table}")
        cursor.execute(f"UPDATE {Message._meta.db_table} SET state = 'sending', status = 'sending'")
        cursor.execute(
            f"UPDATE {Message._meta.db_table} SET state = 'done', status = 'delivered', sent_at = now(), "
            "provider_message_id = 'pm-' || substr(email_id, 5)"
        )
        cursor.execute(f"UPDATE {Recipient._meta.db_table} SET status = 'delivered', delivered_at = now()")
    rows_fill(StatusChange, ROWS, {
        "message": f"(SELECT min(id) FROM {Message._meta.db_table}) + g - 1",
        "recipient": f"(SELECT min(id) FROM {Recipient._meta.db_table}) + g - 1",
        "email": "'reader' || g || '@example.org'", "from_status": "'sent'", "to_status": "'delivered'",
        "at": "now()", "cause": "'event'",
    })
    rows_fill(EngagementEvent, ROWS, {
        "event_id": "'ev-' || g", "recipient_email": "'reader' || g || '@example.org'", "event_type": "'delivery'",
        "provider_message_id": "'pm-' || g", "message": f"(SELECT min(id) FROM {Message._meta.db_table}) + g - 1",
        "occurred_at": "now()", "received_at": "now()", "source": "'sqs'", "raw": "'{}'::jsonb",
    })


def seq_scans() -> dict[str, int]:
    """Sequential scans of the big tables so far in this (the test's) transaction."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, seq_scan FROM pg_stat_xact_user_tables WHERE relname = ANY(%s)", [BIG_TABLES]
        )
        return dict(cursor.fetchall())


def new_seq_scans(before: dict[str, int]) -> dict[str, int]:
    after = seq_scans()
    return {table: count - before.get(table, 0) for table, count in after.items() if count > before.get(table, 0)}


def test_delivery_event_apply_and_api_pages_go_through_indexes(api, used_tables, settings):
    settings.SEND_RATE_PER_SECOND = 0
    # A full chunk, a full page and a batch of events: key lists long enough that
    # a planner guessing 0.5 % of the table per key would rather read it all.
    emails = [{"to": f"new{i}@example.org", "subject": "x", "text": "y", "group_id": "g"} for i in range(100)]
    response = api.post("/api/v1/emails/batch", json.dumps({"emails": emails}), content_type="application/json")
    assert response.status_code == 200 and len(response.json()["data"]) == 100
    envelopes = [
        sns_envelope(ses_event("Open", message_id=f"pm-{n}", recipients=[f"reader{n}@example.org"]))
        for n in range(1, 100_000, 2_000)
    ]
    envelopes.append(sns_envelope(ses_event("Delivery", message_id="unknown-id", recipients=["x@example.org"])))
    events = [e for envelope in envelopes for e in ses_body_parse(envelope)]

    before = seq_scans()
    assert deliver_now() == 100
    outcomes = [a.outcome for a in events_apply(events=events, source="sqs")]
    # The drain's replay check (one statement, no transaction) and its orphan look-up.
    stored = events_stored({event.event_id for event in events} | {f"never-{n}" for n in range(100)})
    relinked = events_relink()
    detail = api.get("/api/v1/emails/old-2001")
    page = api.get("/api/v1/groups/g/emails?limit=100")

    assert new_seq_scans(before) == {}
    assert outcomes == ["applied"] * 50 + ["unmatched"]
    assert stored == {event.event_id: 1 for event in events} and relinked == 0
    assert detail.status_code == 200 and detail.json()["status"] == "opened"
    assert page.status_code == 200 and len(page.json()["results"]) == 100
