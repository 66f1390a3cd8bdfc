"""Figure 0: grow the bench database to production-like tables before the
delivery figures run (SPEC §9: "on tables of ≥ 100,000 used rows").

A fresh database holds only what a figure just put there, and a query plan
that is fast on an empty table can be slow on a used one. So before anything
is measured, the run stores `count` past emails (messages, one recipient each,
the StatusChange rows of their transitions) the way months of use leave them:
inserted `queued` (inside the engine's partial claim index), claimed
(`sending`), sent (`done`), then moved on by provider events (delivered,
opened, bounced, complained) — each step its own set-based UPDATE, so every
message row has three dead versions and every recipient row two, in the heap
and in the indexes. PostgreSQL here runs with autovacuum off (see
shared/STACK.md) and nothing here runs VACUUM or ANALYZE: the tables keep
their dead tuples and have no statistics, as on a server whose autovacuum has
not caught up. The figure's row shows the live and dead tuples per table.

SQL only (a few statements, no Python loop): ~100k emails take tens of seconds.
"""

from __future__ import annotations

import re
import time

from benchmarks.context import Bench
from benchmarks.payload import _HTML, _TEXT
from benchmarks.report import Row

GROUPS = 100  # every 10th past email belongs to one of these groups
TABLES = ("emailsvc_message", "emailsvc_recipient", "emailsvc_statuschange")

# Each step: (what, PostgreSQL SQL, SQLite SQL or None when the same). Parameters:
# %(n)s the count, %(text)s / %(html)s the payload templates ('{n}' replaced per
# email), %(m)s / %(r)s the highest message / recipient id before this figure
# (every statement touches only the rows it added).
_STEPS = [
    ("groups",
     "INSERT INTO emailsvc_group (id, created_at) SELECT 'history-' || g, now() - interval '31 days' "
     "FROM generate_series(0, %(groups)s - 1) g ON CONFLICT DO NOTHING",
     "WITH RECURSIVE s(g) AS (SELECT 0 UNION ALL SELECT g + 1 FROM s WHERE g + 1 < %(groups)s) "
     "INSERT OR IGNORE INTO emailsvc_group (id, created_at) SELECT 'history-' || g, datetime('now', '-31 days') FROM s"),
    # Accepted over the last 30 days: queued, due (the engine's claim index holds them).
    ("insert messages",
     "INSERT INTO emailsvc_message (email_id, group_id, from_email, from_name, reply_to, subject, html, text, headers, "
     "tags, metadata, template_name, priority, provider, provider_message_id, status, state, attempts, last_error, "
     "created_at, queued_at, next_attempt_at, updated_at) "
     "SELECT gen_random_uuid()::text, CASE WHEN g %% 10 = 0 THEN 'history-' || (g / 10 %% %(groups)s) END, "
     "'bench@example.com', '', '[]', 'Your order ' || g || ' is confirmed', replace(%(html)s, '{n}', g::text), "
     "replace(%(text)s, '{n}', g::text), '{}', '[\"bench\"]', jsonb_build_object('order', g), '', "
     "CASE WHEN g %% 20 = 0 THEN 'high' WHEN g %% 20 = 1 THEN 'low' ELSE 'normal' END, 'smtp', '', 'queued', "
     "'queued', 0, '', t, t, t, t "
     "FROM (SELECT g, now() - interval '30 days' + g * (interval '30 days' / %(n)s) AS t "
     "FROM generate_series(1, %(n)s) g) s",
     "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < %(n)s) "
     "INSERT INTO emailsvc_message (email_id, group_id, from_email, from_name, reply_to, subject, html, text, headers, "
     "tags, metadata, template_name, priority, provider, provider_message_id, status, state, attempts, last_error, "
     "created_at, queued_at, next_attempt_at, updated_at) "
     "SELECT lower(hex(randomblob(16))), CASE WHEN g %% 10 = 0 THEN 'history-' || (g / 10 %% %(groups)s) END, "
     "'bench@example.com', '', '[]', 'Your order ' || g || ' is confirmed', replace(%(html)s, '{n}', g), "
     "replace(%(text)s, '{n}', g), '{}', '[\"bench\"]', json_object('order', g), '', "
     "CASE WHEN g %% 20 = 0 THEN 'high' WHEN g %% 20 = 1 THEN 'low' ELSE 'normal' END, 'smtp', '', 'queued', "
     "'queued', 0, '', t, t, t, t "
     "FROM (SELECT g, strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-30 days', "
     "(g * 2592000.0 / %(n)s) || ' seconds') AS t FROM s)"),
    ("insert recipients",
     "INSERT INTO emailsvc_recipient (message_id, email, name, role, status, delayed, opens, open_count, clicks, "
     "click_count, complaint_feedback_type, failed_reason, updated_at{group_column}) "
     "SELECT id, 'history' || id || '@example.com', '', 'to', 'queued', 0, '[]', 0, '[]', 0, '', '', created_at"
     "{group_value} FROM emailsvc_message WHERE id > %(m)s ORDER BY id",
     None),
    # Claimed by a worker.
    ("claim",
     "UPDATE emailsvc_message SET state = 'sending', status = 'sending', attempts = 1, "
     "sending_started_at = created_at + interval '50 milliseconds', updated_at = created_at + interval '50 milliseconds' "
     "WHERE id > %(m)s",
     "UPDATE emailsvc_message SET state = 'sending', status = 'sending', attempts = 1, "
     "sending_started_at = created_at, updated_at = created_at WHERE id > %(m)s"),
    # Handed to the provider: recipients, their StatusChange rows, the messages.
    ("sent: recipients",
     "UPDATE emailsvc_recipient r SET status = 'sent', sent_at = m.created_at + interval '80 milliseconds', "
     "updated_at = m.created_at + interval '80 milliseconds' FROM emailsvc_message m "
     "WHERE m.id = r.message_id AND r.id > %(r)s",
     "UPDATE emailsvc_recipient SET status = 'sent', sent_at = updated_at WHERE id > %(r)s"),
    ("sent: status changes",
     "INSERT INTO emailsvc_statuschange (message_id, recipient_id, email, from_status, to_status, at, cause, detail) "
     "SELECT message_id, id, email, 'queued', 'sent', sent_at, 'delivery', "
     "jsonb_build_object('provider_message_id', 'history-' || message_id) FROM emailsvc_recipient "
     "WHERE id > %(r)s ORDER BY id",
     "INSERT INTO emailsvc_statuschange (message_id, recipient_id, email, from_status, to_status, at, cause, detail) "
     "SELECT message_id, id, email, 'queued', 'sent', sent_at, 'delivery', "
     "json_object('provider_message_id', 'history-' || message_id) FROM emailsvc_recipient "
     "WHERE id > %(r)s ORDER BY id"),
    ("sent: messages",
     "UPDATE emailsvc_message SET state = 'done', status = 'sent', provider_message_id = 'history-' || id, "
     "sent_at = created_at + interval '80 milliseconds', updated_at = created_at + interval '80 milliseconds' "
     "WHERE id > %(m)s",
     "UPDATE emailsvc_message SET state = 'done', status = 'sent', provider_message_id = 'history-' || id, "
     "sent_at = created_at, updated_at = created_at WHERE id > %(m)s"),
    # Provider events: 60 % delivered, 30 % opened, 3 % bounced, 0.1 % complained, the rest stay sent.
    ("events: recipients",
     "UPDATE emailsvc_recipient SET status = CASE WHEN id %% 1000 = 7 THEN 'complained' WHEN id %% 100 < 3 "
     "THEN 'bounced' WHEN id %% 100 < 33 THEN 'opened' ELSE 'delivered' END, "
     "delivered_at = CASE WHEN id %% 100 >= 3 THEN sent_at + interval '3 seconds' END, "
     "open_count = CASE WHEN id %% 100 >= 3 AND id %% 100 < 33 THEN 1 ELSE 0 END, "
     "opens = CASE WHEN id %% 100 >= 3 AND id %% 100 < 33 THEN jsonb_build_array(jsonb_build_object("
     "'event_id', 'history-open-' || id, 'opened_at', sent_at + interval '1 hour')) ELSE '[]' END, "
     "last_opened_at = CASE WHEN id %% 100 >= 3 AND id %% 100 < 33 THEN sent_at + interval '1 hour' END, "
     "bounce = CASE WHEN id %% 100 < 3 THEN '{\"type\": \"Permanent\", \"subtype\": \"General\"}'::jsonb END, "
     "updated_at = sent_at + interval '1 hour' "
     "WHERE id > %(r)s AND id %% 100 < 93",
     "UPDATE emailsvc_recipient SET status = CASE WHEN id %% 1000 = 7 THEN 'complained' WHEN id %% 100 < 3 "
     "THEN 'bounced' WHEN id %% 100 < 33 THEN 'opened' ELSE 'delivered' END, "
     "delivered_at = CASE WHEN id %% 100 >= 3 THEN sent_at END, "
     "open_count = CASE WHEN id %% 100 >= 3 AND id %% 100 < 33 THEN 1 ELSE 0 END, updated_at = sent_at "
     "WHERE id > %(r)s AND id %% 100 < 93"),
    ("events: status changes",
     "INSERT INTO emailsvc_statuschange (message_id, recipient_id, email, from_status, to_status, at, cause, detail) "
     "SELECT message_id, id, email, 'sent', status, updated_at, 'event', jsonb_build_object('event', status) "
     "FROM emailsvc_recipient WHERE id > %(r)s AND id %% 100 < 93 ORDER BY id",
     "INSERT INTO emailsvc_statuschange (message_id, recipient_id, email, from_status, to_status, at, cause, detail) "
     "SELECT message_id, id, email, 'sent', status, updated_at, 'event', json_object('event', status) "
     "FROM emailsvc_recipient WHERE id > %(r)s AND id %% 100 < 93 ORDER BY id"),
    ("events: messages",
     "UPDATE emailsvc_message m SET status = r.status, updated_at = r.updated_at FROM emailsvc_recipient r "
     "WHERE r.message_id = m.id AND r.id > %(r)s AND r.id %% 100 < 93",
     "UPDATE emailsvc_message SET status = (SELECT r.status FROM emailsvc_recipient r WHERE r.message_id = "
     "emailsvc_message.id) WHERE id > %(m)s"),
]


_INSERT = re.compile(r"INSERT (?:OR IGNORE )?INTO (\w+) \(([^)]*)\)")


def _complete_insert(sql: str, params: dict) -> str:
    """Add to an INSERT of this module the columns it does not name that the
    table requires (NOT NULL, no database default): the schema grows while the
    statements above stay as they are. Each gets its model field's default —
    `sending_domain` the domain of the bench's sender — as a parameter."""
    from django.apps import apps
    from django.db import connection

    match = _INSERT.search(sql)
    if not match:
        return sql
    table, named = match.group(1), {c.strip() for c in match.group(2).split(",")}
    model = next((m for m in apps.get_models() if m._meta.db_table == table), None)
    if model is None:
        return sql
    columns, values = [], []
    for field in model._meta.concrete_fields:
        if field.primary_key or field.column in named or field.null or getattr(field, "db_default", None) not in (
                None, models_not_provided()):
            continue
        if field.column == "sending_domain":
            value = "example.com"
        elif field.has_default():
            value = field.get_default()
        elif field.get_internal_type() in ("CharField", "TextField", "EmailField", "SlugField"):
            value = ""
        else:
            continue  # nothing sensible to invent: the INSERT fails and says which column
        key = f"extra_{table}_{field.column}"
        params[key] = field.get_db_prep_save(value, connection)
        columns.append(field.column)
        values.append(f"%({key})s")
    if not columns:
        return sql
    # First in the column list and first in the SELECT list.
    sql = sql[:match.start(2)] + ", ".join(columns) + ", " + sql[match.start(2):]
    select = sql.index("SELECT ", match.end() + sum(len(c) + 2 for c in columns))
    return sql[:select + 7] + ", ".join(values) + ", " + sql[select + 7:]


def models_not_provided():
    from django.db.models.fields import NOT_PROVIDED

    return NOT_PROVIDED


def _stats(cursor, vendor: str) -> dict[str, dict[str, int]]:
    out = {}
    for table in TABLES:
        if vendor == "postgresql":
            cursor.execute("SELECT n_live_tup, n_dead_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables "
                           "WHERE relname = %s", [table])
            live, dead, size = cursor.fetchone() or (0, 0, 0)
            out[table] = {"live": live, "dead": dead, "bytes": size}
        else:
            cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - a constant
            out[table] = {"live": cursor.fetchone()[0], "dead": 0, "bytes": 0}
    return out


def grow(bench: Bench) -> None:
    from django.db import connection

    count = bench.params.used_messages
    vendor = connection.vendor
    timings = {}
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM emailsvc_message")
        highest_message = cursor.fetchone()[0]
        cursor.execute("SELECT coalesce(max(id), 0) FROM emailsvc_recipient")
        highest_recipient = cursor.fetchone()[0]
        params = {"n": count, "groups": GROUPS, "text": _TEXT, "html": _HTML, "m": highest_message,
                  "r": highest_recipient}
        # A recipient carries its message's group where the schema has that column.
        from emailsvc.models import Recipient

        has_group = any(field.name == "group" for field in Recipient._meta.get_fields())
        columns = {"group_column": ", group_id" if has_group else "", "group_value": ", group_id" if has_group else ""}
        for name, postgres_sql, sqlite_sql in _STEPS:
            sql = postgres_sql if vendor == "postgresql" else (sqlite_sql or postgres_sql)
            sql = sql.replace("{group_column}", columns["group_column"]).replace("{group_value}", columns["group_value"])
            sql = _complete_insert(sql, params)
            clock = time.monotonic()
            cursor.execute(sql, params)
            timings[name] = round(time.monotonic() - clock, 2)
        if vendor == "postgresql":
            time.sleep(0.6)  # the server publishes this backend's table counters within a second of idling
            cursor.execute("SELECT pg_stat_force_next_flush()")
        stats = _stats(cursor, vendor)
    seconds = time.monotonic() - started
    bench.used_rows = stats["emailsvc_message"]["live"]
    shown = "; ".join(
        f"{table.removeprefix('emailsvc_')} {values['live']:,} live / {values['dead']:,} dead"
        + (f" ({values['bytes'] / 2**20:,.0f} MiB)" if values["bytes"] else "")
        for table, values in stats.items()
    )
    bench.rows.append(Row(
        figure="0 tables",
        setup=(f"{count:,} past emails stored before any figure runs: inserted queued, claimed, sent, then moved on "
               "by provider events (set-based SQL, one UPDATE per step); no VACUUM, no ANALYZE (autovacuum is off "
               "on this server)"),
        result=shown,
        values={"emails": count, "tables": stats, "seconds": round(seconds, 1), "step_seconds": timings},
        notes=f"took {seconds:.0f} s; every later figure runs on these tables (plus what earlier figures added)",
    ))
    print(f"  {bench.rows[-1].result} ({seconds:.0f} s)", flush=True)
