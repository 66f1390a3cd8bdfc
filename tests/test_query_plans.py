"""The hot paths' queries stay index-based on tables that look used: ≥ 100,000 rows
that went through updates, and no fresh ANALYZE (this machine's PostgreSQL runs
with autovacuum off, so statistics are as stale as they get).

Each statement the delivery engine, the event apply and the API's lookups run is
captured while they really run, then EXPLAINed: no sequential scan of a big table.
"""

import json
import re

import pytest
from django.db import connection, models
from django.test.utils import CaptureQueriesContext

from emailsvc.models import Message, Recipient, StatusChange
from tests.conftest import deliver_now
from tests.tracking.sesevents import ses_event, sns_envelope
from tracking.apply import events_apply
from tracking.models import EngagementEvent
from tracking.normalize import ses_body_parse

pytestmark = pytest.mark.django_db

ROWS = 100_000
BIG_TABLES = [Message._meta.db_table, Recipient._meta.db_table, StatusChange._meta.db_table, EngagementEvent._meta.db_table]


def _fill(model: type[models.Model], count: int, values: dict[str, str]) -> None:
    """INSERT `count` rows in one statement; `values` are SQL expressions of `g`
    (1..count) by field name, the rest get a type's neutral value."""
    columns, expressions = [], []
    for field in model._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(field.column)
        if field.name in values:
            expressions.append(values[field.name])
        elif field.null:
            expressions.append("NULL")
        elif isinstance(field, models.JSONField):
            expressions.append("'[]'::jsonb" if field.default is list else "'{}'::jsonb")
        elif isinstance(field, models.DateTimeField):
            expressions.append("now() - interval '30 days'")
        elif isinstance(field, models.IntegerField | models.PositiveIntegerField | models.PositiveSmallIntegerField):
            expressions.append("0")
        else:
            expressions.append("''")
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) "
            f"SELECT {', '.join(expressions)} FROM generate_series(1, %s) AS g",
            [count],
        )


@pytest.fixture
def used_tables():
    if connection.vendor != "postgresql":
        pytest.skip("query plans are PostgreSQL's")
    _fill(Message, ROWS, {
        "email_id": "'old-' || g", "from_email": "'noreply@example.com'", "subject": "'Old news'",
        "text": "'Hello'", "priority": "'normal'", "provider": "'ses'",
        "status": "'queued'", "state": "'queued'", "next_attempt_at": "now() - interval '30 days'",
    })
    _fill(Recipient, ROWS, {
        "message": f"(SELECT min(id) FROM {Message._meta.db_table}) + g - 1",
        "email": "'reader' || g || '@example.org'", "role": "'to'", "status": "'queued'",
    })
    with connection.cursor() as cursor:
        # Statistics taken while every message was still queued (no provider id
        # yet), never refreshed; then every row goes through delivery and events,
        # as in production: dead tuples, and statistics that lie.
        cursor.execute(f"ANALYZE {Message._meta.db_table}, {Recipient._meta.db_table}")
        cursor.execute(f"UPDATE {Message._meta.db_table} SET state = 'sending', status = 'sending'")
        cursor.execute(
            f"UPDATE {Message._meta.db_table} SET state = 'done', status = 'delivered', sent_at = now(), "
            "provider_message_id = 'pm-' || substr(email_id, 5)"
        )
        cursor.execute(f"UPDATE {Recipient._meta.db_table} SET status = 'delivered', delivered_at = now()")
    _fill(StatusChange, ROWS, {
        "message": f"(SELECT min(id) FROM {Message._meta.db_table}) + g - 1",
        "recipient": f"(SELECT min(id) FROM {Recipient._meta.db_table}) + g - 1",
        "email": "'reader' || g || '@example.org'", "from_status": "'sent'", "to_status": "'delivered'",
        "at": "now()", "cause": "'event'",
    })
    _fill(EngagementEvent, ROWS, {
        "event_id": "'ev-' || g", "recipient_email": "'reader' || g || '@example.org'", "event_type": "'delivery'",
        "provider_message_id": "'pm-' || g", "message": f"(SELECT min(id) FROM {Message._meta.db_table}) + g - 1",
        "occurred_at": "now()", "received_at": "now()", "source": "'sqs'", "raw": "'{}'::jsonb",
    })


def _seq_scans(sql: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    found = []

    def walk(node):
        relation = node.get("Relation Name")
        if relation in BIG_TABLES:
            if node.get("Node Type") == "Seq Scan":
                found.append(f"Seq Scan on {relation}")
            # The `ORDER BY id LIMIT 1` trap: walking the primary key, filtering every row.
            elif node.get("Index Name", "").endswith("_pkey") and "Filter" in node and "Index Cond" not in node:
                found.append(f"primary key walk on {relation}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


def _check(captured: CaptureQueriesContext) -> list[str]:
    statements = [q["sql"] for q in captured.captured_queries if re.match(r"\s*(SELECT|UPDATE|WITH|DELETE)", q["sql"])]
    assert statements
    return [f"{tables}: {sql[:160]}" for sql in statements if (tables := _seq_scans(sql))]


def test_delivery_claims_loads_and_records_through_indexes(api, used_tables, settings):
    settings.SEND_RATE_PER_SECOND = 0
    for index in range(3):
        response = api.post(
            "/api/v1/emails", json.dumps({"to": f"new{index}@example.org", "subject": "x", "text": "y"}),
            content_type="application/json",
        )
        assert response.status_code == 202
    with CaptureQueriesContext(connection) as captured:
        assert deliver_now() == 3
    assert _check(captured) == []


def test_event_apply_and_lookups_go_through_indexes(api, used_tables):
    envelopes = [
        sns_envelope(ses_event("Open", message_id=f"pm-{n}", recipients=[f"reader{n}@example.org"])) for n in (7, 70_000)
    ]
    envelopes.append(sns_envelope(ses_event("Delivery", message_id="unknown-id", recipients=["x@example.org"])))
    events = [e for envelope in envelopes for e in ses_body_parse(envelope)]
    with CaptureQueriesContext(connection) as captured:
        outcomes = [a.outcome for a in events_apply(events=events, source="sqs")]
        detail = api.get("/api/v1/emails/old-70000")
    assert outcomes == ["applied", "applied", "unmatched"]
    assert detail.status_code == 200 and detail.json()["status"] == "opened"
    assert _check(captured) == []
