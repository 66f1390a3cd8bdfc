"""Big tables for plan and timing tests: rows inserted by PostgreSQL itself (generate_series)."""

import re

from django.db import connection, models


def rows_fill(model: type[models.Model], count: int, values: dict[str, str], *, series: str = "g") -> None:
    """INSERT `count` rows in one statement (PostgreSQL); `values` are SQL expressions
    of `g` (1..count) by field name, the rest get a type's neutral value."""

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
            expressions.append("'[]'::jsonb" if field.default is list else "'{}'::jsonb")
        elif isinstance(field, models.DateTimeField):
            expressions.append("now()")
        elif isinstance(field, models.BooleanField):
            expressions.append("false")
        elif isinstance(field, models.IntegerField | models.PositiveIntegerField | models.PositiveSmallIntegerField):
            expressions.append("0")
        else:
            expressions.append("''")
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) "
            f"SELECT {', '.join(expressions)} FROM generate_series(1, {int(count)}) AS {series}"
        )  # no parameters: the expressions use % (modulo)


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
        "at": f"{of_message(at)} + ((c - 1) % 2) * interval '2 seconds'", "cause": "'event'",
    }, series="c")
