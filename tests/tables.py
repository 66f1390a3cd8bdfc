"""Big tables for plan and timing tests: rows inserted by the database itself
(PostgreSQL's generate_series; on SQLite a recursive series)."""

import re

from django.db import connection, models


def rows_fill(model: type[models.Model], count: int, values: dict[str, str], *, series: str = "g") -> None:
    """INSERT `count` rows in one statement; `values` are SQL expressions of
    `g` (1..count) by field name, the rest get a type's neutral value."""
    postgresql = connection.vendor == "postgresql"

    columns, expressions = [], []
    for field in model._meta.concrete_fields:
        if field.primary_key and field.name not in values:
            continue
        columns.append(field.column)
        if field.name in values:
            expressions.append(values[field.name])
        elif field.null:
            expressions.append("NULL")
        elif isinstance(field, models.JSONField):
            empty = "'[]'" if field.default is list else "'{}'"
            expressions.append(f"{empty}::jsonb" if postgresql else empty)
        elif isinstance(field, models.DateTimeField):
            expressions.append("now()" if postgresql else moment_now())
        elif isinstance(field, models.BooleanField):
            expressions.append("false")
        elif isinstance(field, models.IntegerField | models.PositiveIntegerField | models.PositiveSmallIntegerField):
            expressions.append("0")
        else:
            expressions.append("''")
    insert = f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) SELECT {', '.join(expressions)}"
    if postgresql:
        statement = f"{insert} FROM generate_series(1, {int(count)}) AS {series}"
    else:
        statement = (
            f"WITH RECURSIVE numbers({series}) AS (SELECT 1 UNION ALL SELECT {series} + 1 FROM numbers "
            f"WHERE {series} < {int(count)}) {insert} FROM numbers"
        )
    with connection.cursor() as cursor:
        cursor.execute(statement)  # no parameters: the expressions use % (modulo)


def moment_now() -> str:
    """SQL for the current time, as a timestamp column stores it."""
    if connection.vendor == "postgresql":
        return "now()"
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def moment_plus(moment: str, seconds: str) -> str:
    """SQL for the timestamp `moment` plus `seconds` (SQL expressions both), as a timestamp column stores it."""
    if connection.vendor == "postgresql":
        return f"(({moment}) + ({seconds}) * interval '1 second')"
    return f"strftime('%Y-%m-%d %H:%M:%f', {moment}, printf('%+.3f seconds', {seconds}))"


def rows_fill_first_id(model: type[models.Model], count: int, values: dict[str, str], *, series: str = "g") -> int:
    """`rows_fill`, then the id of the first row it inserted (one INSERT … SELECT
    on a database nobody else writes to takes consecutive ids)."""
    rows_fill(model, count, values, series=series)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT max({model._meta.pk.column}) FROM {model._meta.db_table}")
        return cursor.fetchone()[0] - int(count) + 1


def status_changes_fill(count: int, *, first_message: int, first_recipient: int, address: str, status: str, at: str) -> None:
    """Two StatusChange rows for each of `count` messages filled with one
    recipient each (ids from first_message / first_recipient): queued → sent,
    then sent → `status`. `address`, `status` and `at` are SQL expressions of
    `g`, the message's number (1..count), as given to rows_fill."""
    from emailsvc.models import StatusChange

    message = "((c - 1) / 2 + 1)"
    of_message = lambda expression: re.sub(r"\bg\b", message, expression)  # noqa: E731
    rows_fill(StatusChange, count * 2, {
        "message": f"{first_message} + {message} - 1", "recipient": f"{first_recipient} + {message} - 1",
        "email": of_message(address),
        "from_status": "CASE WHEN (c - 1) % 2 = 0 THEN 'queued' ELSE 'sent' END",
        "to_status": f"CASE WHEN (c - 1) % 2 = 0 THEN 'sent' ELSE ({of_message(status)}) END",
        "at": moment_plus(of_message(at), "((c - 1) % 2) * 2"), "cause": "'event'",
    }, series="c")
