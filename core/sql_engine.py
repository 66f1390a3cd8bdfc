"""The delivery engine's raw statements (see core.sql): reading a claimed
chunk, and the delivery journal's writes. Each runs for every chunk or every
few emails sent; each has a test holding it to the ORM (tests/core/test_sql.py)."""

from collections.abc import Sequence

import orjson
from django.db import connection, models
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
