"""Big tables for plan and timing tests: rows inserted by PostgreSQL itself (generate_series)."""

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
