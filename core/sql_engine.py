"""The hot paths' raw statements (see core.sql): the delivery engine's claim,
reading a claimed chunk and the delivery journal's writes; the status writer's
lock and change rows; storing a batch of provider events; the breaker's counts.
Each runs for every chunk, every event batch or every few emails sent; each has
a test holding it to the ORM (tests/core/test_sql.py).

The statements that write a status column are called by emailsvc.status only,
which holds the rules (tests/emailsvc/test_status.py checks both)."""

import json
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import NamedTuple

import orjson
from django.db import connection, models
from django.db.models import Count
from django.utils import timezone


def values_among(
    model: type[models.Model], fields: Sequence[str], *, among: dict[str, Sequence], order_by: str | None = None,
) -> list[tuple]:
    """`fields` of the rows of `model` whose every column named in `among` holds
    one of its values, ordered by `order_by` (a field name) if given — what
    `filter(<name>__in=…).values_list(*fields)` reads. JSON columns come
    decoded; binary ones as the driver gives them (bytes or a memoryview).

    On PostgreSQL one plain statement with an array parameter per condition,
    read straight into tuples (no model layer per row: a chunk's rows); elsewhere the ORM."""
    if connection.vendor != "postgresql":
        rows = model._default_manager.filter(**{f"{name}__in": values for name, values in among.items()})
        if order_by is not None:
            rows = rows.order_by(order_by)
        return list(rows.values_list(*fields))
    meta = model._meta
    columns = [meta.get_field(name) for name in fields]
    json_at = [index for index, field in enumerate(columns) if field.get_internal_type() == "JSONField"]
    where = " AND ".join(f"{meta.get_field(name).column} = ANY(%s)" for name in among)
    order = f" ORDER BY {meta.get_field(order_by).column}" if order_by is not None else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(field.column for field in columns)} FROM {meta.db_table} WHERE {where}{order}",
            [list(values) for values in among.values()],
        )
        rows = cursor.fetchall()
    if not json_at:
        return rows
    decoded = []
    for row in rows:
        row = list(row)
        for index in json_at:  # jsonb arrives as its text (Django's loader)
            if isinstance(row[index], str | bytes):
                row[index] = orjson.loads(row[index])
        decoded.append(tuple(row))
    return decoded


_JOURNAL_UPSERT = (
    "ON CONFLICT (message_id) DO UPDATE SET attempt = excluded.attempt, outcome = excluded.outcome, "
    "written_at = excluded.written_at"
)


def journal_upsert(model: type[models.Model], entries: Sequence[tuple[int, int, dict]]) -> None:
    """Upsert (message id, attempt, outcome) rows into the delivery journal
    `model` (columns message_id unique, attempt, outcome, written_at = now) in
    one statement: what `bulk_create(update_conflicts=True)` writes, without a
    model instance per row or a psycopg array per column, since this runs for
    every few emails sent.

    PostgreSQL reads them from one JSON document, through the connection's own
    driver cursor (Django's cursor wrapper costs as much as the statement here);
    elsewhere executemany rows."""
    table = model._meta.db_table
    if connection.vendor == "postgresql":
        document = orjson.dumps(
            [{"m": message_id, "a": attempt, "o": outcome} for message_id, attempt, outcome in entries],
            option=orjson.OPT_NON_STR_KEYS,
        )
        connection.ensure_connection()
        with connection.wrap_database_errors, connection.connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (message_id, attempt, outcome, written_at) "
                f"SELECT v.m, v.a, v.o, now() FROM json_to_recordset(%s::json) AS v(m bigint, a integer, o jsonb) "
                f"{_JOURNAL_UPSERT}",
                [document.decode()],
            )
        return
    written_at = model._meta.get_field("written_at").get_db_prep_save(timezone.now(), connection)
    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {table} (message_id, attempt, outcome, written_at) VALUES (%s, %s, %s, %s) {_JOURNAL_UPSERT}",
            [(message_id, attempt, orjson.dumps(outcome, option=orjson.OPT_NON_STR_KEYS).decode(), written_at)
             for message_id, attempt, outcome in entries],
        )


def commit_asynchronously() -> None:
    """This thread's PostgreSQL session commits without waiting for its WAL to
    reach the disk (synchronous_commit = off); elsewhere nothing. For the
    journal writer: see emailsvc.delivery.journal for why that is safe."""
    if connection.vendor != "postgresql":
        return
    connection.ensure_connection()
    with connection.wrap_database_errors, connection.connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")


# --- Status writes: called by emailsvc.status only (tests/emailsvc/test_status.py) -----------


def status_changes_insert(model: type[models.Model], changes: Sequence[models.Model]) -> None:
    """INSERT unsaved status-change rows of `model` (columns message_id,
    recipient_id, email, from_status, to_status, at, cause, detail, test): what
    `bulk_create` stores, without setting their primary keys.

    On PostgreSQL one INSERT … SELECT from one JSON document (no model instance
    per row on the way in, no array adapted element by element); elsewhere bulk_create."""
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(changes)
        return
    rows = [
        {"m": c.message_id, "r": c.recipient_id, "e": c.email, "f": c.from_status, "t": c.to_status,
         "a": c.at.isoformat(), "c": c.cause, "d": c.detail or {}, "k": bool(c.test)}
        for c in changes
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {model._meta.db_table} (message_id, recipient_id, email, from_status, to_status, at, cause, detail, test) "
            "SELECT m, r, e, f, t, a, c, d, k FROM json_to_recordset(%s::json) "
            "AS u(m bigint, r bigint, e text, f text, t text, a timestamptz, c text, d jsonb, k boolean)",
            [json.dumps(rows)],
        )


def rows_lock(model: type[models.Model], ids: Sequence[int], fields: Sequence[str]) -> list[tuple]:
    """Lock the rows of `model` whose id is one of `ids` and read (id, *fields)
    of each: on PostgreSQL `FOR UPDATE`, in id order (the order every writer
    takes); elsewhere a plain read (SQLite serialises writers anyway)."""
    meta = model._meta
    columns = ", ".join(["id", *(meta.get_field(name).column for name in fields)])
    if connection.vendor == "postgresql":
        sql = f"SELECT {columns} FROM {meta.db_table} WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
        params: list = [ids]
    else:
        sql = f"SELECT {columns} FROM {meta.db_table} WHERE id IN ({', '.join(['%s'] * len(ids))})"
        params = list(ids)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _literals(values: Sequence[str]) -> str:
    """Constant values as SQL literals, kept in the statement's text (the
    planner sees them as it would see them written out)."""
    texts = [str(value) for value in values]
    for text in texts:
        if not text.replace("_", "").isalnum():
            raise ValueError(f"not a plain constant: {text!r}")
    return ", ".join(f"'{text}'" for text in texts)


def rows_claim(
    model: type[models.Model], *, waiting: Sequence[str], claimed: str, shown: Sequence[str], showing: str,
    priorities: Sequence[str], limit: int, now: datetime, claimed_by: str, paused_domains: Sequence[str],
    paused_streams: Sequence[tuple[str, str]] = (),
) -> list[int]:
    """Claim up to `limit` due rows of `model` (a message table: columns state,
    status, priority, next_attempt_at, sending_domain, stream, attempts,
    sending_started_at, claimed_by, updated_at), of the first priority first,
    then the next (oldest due first within each); their ids, in no set order.

    Due: `state` one of `waiting`, `next_attempt_at` <= `now`, `sending_domain`
    not one of `paused_domains`, (`sending_domain`, `stream`) not one of
    `paused_streams`. A claimed row's state becomes `claimed`, its
    status `showing` if it was one of `shown`, its attempts one more, and it
    names `claimed_by`. The caller holds the status rules and commits.

    One guarded statement on PostgreSQL (`FOR UPDATE SKIP LOCKED`, so workers
    never wait for each other nor claim the same row); elsewhere one per
    priority (SQLite serialises its statements)."""
    table = model._meta.db_table
    now_value = model._meta.get_field("updated_at").get_db_prep_save(now, connection)
    set_clause = (
        f"state = {_literals([claimed])}, "
        f"status = CASE WHEN status IN ({_literals(shown)}) THEN {_literals([showing])} ELSE status END, "
        "attempts = attempts + 1, sending_started_at = %s, claimed_by = %s, updated_at = %s"
    )
    due = f"SELECT id FROM {table} WHERE state IN ({_literals(waiting)}) AND priority = %s AND next_attempt_at <= %s"
    paused = sorted(paused_domains)
    if paused:
        due += " AND sending_domain NOT IN (" + ", ".join(["%s"] * len(paused)) + ")"
    paused_pairs = sorted(paused_streams)
    for _pair in paused_pairs:
        due += " AND NOT (sending_domain = %s AND stream = %s)"
    paused += [value for pair in paused_pairs for value in pair]
    rows: list[int] = []
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One CTE per priority, each taking what the ones before left of the limit.
            ctes, params, taken = [], [], []
            for index, priority in enumerate(priorities):
                remaining = " - ".join(["%s", *[f"(SELECT count(*) FROM p{i})" for i in taken]])
                ctes.append(f"p{index} AS ({due} ORDER BY next_attempt_at LIMIT ({remaining}) FOR UPDATE SKIP LOCKED)")
                params += [priority, now_value, *paused, limit]
                taken.append(index)
            union = " UNION ALL ".join(f"SELECT id FROM p{i}" for i in taken)
            cursor.execute(
                f"WITH {', '.join(ctes)} UPDATE {table} SET {set_clause} WHERE id IN ({union}) RETURNING id",
                [*params, now_value, claimed_by, now_value],
            )
            return [row[0] for row in cursor.fetchall()]
        for priority in priorities:
            if len(rows) >= limit:
                break
            cursor.execute(
                f"UPDATE {table} SET {set_clause} WHERE id IN ({due} ORDER BY next_attempt_at LIMIT %s) RETURNING id",
                [now_value, claimed_by, now_value, priority, now_value, *paused, limit - len(rows)],
            )
            rows += [row[0] for row in cursor.fetchall()]
    return rows


# --- Events and counts --------------------------------------------------------------------------


def counts_among(model: type[models.Model], field_name: str, values: Collection[str]) -> dict[str, int]:
    """How many rows of `model` hold each of `values` in the text column
    `field_name` (a value no row holds is left out): what a Count grouped by
    that field reads.

    On PostgreSQL one statement, no transaction: a count per value, each an
    equality probe of the column's index (no plan reads the whole table for
    one key, whatever the statistics say); elsewhere the ORM."""
    if not values:
        return {}
    if connection.vendor != "postgresql":
        return dict(
            model._default_manager.filter(**{f"{field_name}__in": values}).order_by().values_list(field_name).annotate(
                stored=Count("*")
            )
        )
    column = model._meta.get_field(field_name).column
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT u.e, (SELECT count(*) FROM {model._meta.db_table} t WHERE t.{column} = u.e) "
            "FROM unnest(%s::text[]) AS u(e)",
            [sorted(values)],
        )
        return {value: count for value, count in cursor.fetchall() if count}


class EventRow(NamedTuple):
    """One provider event as `events_insert` stores it. `raw` is the JSON
    text of the event as it came in (stored as it is: not written out again)."""

    event_id: str
    recipient_email: str
    event_type: str
    provider_message_id: str
    message_id: int | None
    recipient_id: int | None
    occurred_at: datetime
    detail: dict
    raw: str


def events_insert(model: type[models.Model], rows: Sequence[EventRow], *, received_at: datetime, source: str) -> set[tuple[str, str]]:
    """INSERT provider events into `model` (an event table unique on
    (event_id, recipient_email)), skipping any stored already — by another
    applier meanwhile — and return the (event id, recipient) keys inserted:
    what `bulk_create(ignore_conflicts=True)` stores.

    On PostgreSQL one short statement whatever the batch: the rows as one
    JSON document the database reads once into typed columns
    (json_to_recordset) — no statement of a thousand placeholders to parse on
    both sides, no array adapted element by element, no JSON written out
    again. Elsewhere one multi-row INSERT."""
    table = model._meta.db_table
    if connection.vendor != "postgresql":
        return _events_insert_rows(model, rows, received_at=received_at, source=source)
    document = [
        # Each event's detail and raw text go in as JSON already.
        f'{{"e":{json.dumps(row.event_id)},"r":{json.dumps(row.recipient_email)},"t":{json.dumps(row.event_type)},'
        f'"p":{json.dumps(row.provider_message_id)},"m":{json.dumps(row.message_id)},'
        f'"c":{json.dumps(row.recipient_id)},'
        f'"o":"{row.occurred_at.isoformat()}","d":{json.dumps(row.detail)},"w":{row.raw}}}'
        for row in rows
    ]
    sql = (
        f"INSERT INTO {table} (event_id, recipient_email, event_type, provider_message_id, message_id, recipient_id, "
        "occurred_at, received_at, source, detail, raw) "
        "SELECT j.e, j.r, j.t, j.p, j.m, j.c, j.o, %s, %s, j.d, j.w "
        "FROM json_to_recordset(%s::json) AS j(e text, r text, t text, p text, m bigint, c bigint, o timestamptz, d jsonb, w jsonb) "
        "ON CONFLICT (event_id, recipient_email) DO NOTHING RETURNING event_id, recipient_email"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [received_at, source, f"[{','.join(document)}]"])
        return {(event_id, recipient) for event_id, recipient in cursor.fetchall()}


def _events_insert_rows(model: type[models.Model], rows: Sequence[EventRow], *, received_at: datetime, source: str) -> set[tuple[str, str]]:
    """`events_insert` elsewhere (SQLite): one multi-row INSERT."""
    meta = model._meta
    names = [
        "event_id", "recipient_email", "event_type", "provider_message_id", "message", "recipient",
        "occurred_at", "received_at", "source", "detail",
    ]
    fields = [meta.get_field(name) for name in names]
    values = []
    for row in rows:
        given = [
            row.event_id, row.recipient_email, row.event_type, row.provider_message_id, row.message_id,
            row.recipient_id, row.occurred_at, received_at, source, row.detail,
        ]
        values.append([*(f.get_db_prep_save(v, connection) for f, v in zip(fields, given)), row.raw])
    columns = ", ".join([*(f.column for f in fields), meta.get_field("raw").column])
    placeholders = ", ".join(["(" + ", ".join(["%s"] * (len(fields) + 1)) + ")"] * len(values))
    sql = (
        f"INSERT INTO {meta.db_table} ({columns}) VALUES {placeholders} "
        "ON CONFLICT (event_id, recipient_email) DO NOTHING RETURNING event_id, recipient_email"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for row in values for value in row])
        return {(event_id, recipient) for event_id, recipient in cursor.fetchall()}


def events_unlinked(model: type[models.Model], *, since: datetime, limit: int) -> list[tuple[int, str]]:
    """(id, provider message id) of up to `limit` events of `model` received
    since `since` that carry a provider message id but no message. A plain
    statement (it runs after every drain run: no ORM compile for what is
    nearly always nothing)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, provider_message_id FROM {model._meta.db_table} "
            # `<>`: no index answers it, so it cannot lead the planner astray
            "WHERE message_id IS NULL AND received_at >= %s AND provider_message_id <> '' LIMIT %s",
            [model._meta.get_field("received_at").get_db_prep_value(since, connection), limit],
        )
        return cursor.fetchall()


def any_null(model: type[models.Model], field_name: str) -> bool:
    """Whether any row of `model` has no `field_name`: one plain statement, no
    query built (the usual answer, none, on a path that runs for every chunk)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {model._meta.db_table} WHERE {model._meta.get_field(field_name).column} IS NULL LIMIT 1"
        )
        return cursor.fetchone() is not None


def counts_add(
    model: type[models.Model], rows: Sequence[tuple], *, key: Sequence[str], counters: Sequence[str],
) -> None:
    """Add counts to rows of `model` in one upsert: each of `rows` holds the
    values of the `key` fields (unique together), then one number per
    `counters` field, added to the row with that key (created at those numbers
    when there is none). What `update_or_create` with F() additions writes, row
    by row. Rows are written in the order given (give every writer one order)."""
    if not rows:
        return
    meta = model._meta
    table = meta.db_table
    key_fields = [meta.get_field(name) for name in key]
    key_columns = [field.column for field in key_fields]
    counter_columns = [meta.get_field(name).column for name in counters]
    values = ", ".join(["(" + ", ".join(["%s"] * (len(key) + len(counters))) + ")"] * len(rows))
    params = []
    for row in rows:
        params += [field.get_db_prep_save(value, connection) for field, value in zip(key_fields, row)]
        params += row[len(key):]
    adds = ", ".join(f"{column} = {table}.{column} + excluded.{column}" for column in counter_columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({', '.join([*key_columns, *counter_columns])}) VALUES {values} "
            f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {adds}",
            params,
        )
