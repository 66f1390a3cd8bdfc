"""Set-based SQL the ORM does not offer: many rows updated, each with its own
values, in one statement; bounded key lookups that stay on their index."""

import json
from datetime import datetime

import orjson
from django.db import connection, connections, models


def rows_update(model: type[models.Model], rows: dict[int, dict], *, at: datetime) -> None:
    """UPDATE many rows of `model`, each with its own values, in one statement.

    Rows may carry different columns: a column a row does not carry keeps its
    value. `updated_at` is set to `at` on every row. PostgreSQL: one UPDATE …
    FROM json_to_recordset(one JSON document); elsewhere: executemany.
    """
    columns = sorted({name for row in rows.values() for name in row})
    table = model._meta.db_table
    fields = {name: model._meta.get_field(name) for name in columns}
    ids = list(rows)

    db = connections[connection.alias]  # not the thread-local proxy on every value

    def value(field_obj: models.Field, row: dict, name: str):
        if name not in row:
            return None
        return field_obj.get_db_prep_save(row[name], db)

    if connection.vendor == "postgresql":
        # The rows travel as one JSON document that the server reads into
        # typed columns (json_to_recordset): one C-speed json.dumps here instead
        # of psycopg adapting every element of an array per column in Python
        # (timestamps especially).
        record, assigns = ["id bigint"], []
        presence = {}
        for index, name in enumerate(columns):
            field_obj = fields[name]
            db_type = _array_type(field_obj)
            if db_type == "jsonb":
                record.append(f"c{index} text")  # JSON travels as its text, cast back per row
                expression = f"v.c{index}::jsonb"
            else:
                record.append(f"c{index} {db_type}")
                expression = f"v.c{index}"
            if all(name in rows[i] for i in ids):
                assigns.append(f"{field_obj.column} = {expression}")
            else:
                # A row that does not carry the column keeps its value.
                presence[name] = f"p{index}"
                record.append(f"p{index} boolean")
                assigns.append(f"{field_obj.column} = CASE WHEN v.p{index} THEN {expression} ELSE t.{field_obj.column} END")
        plan = [(name, fields[name], f"c{index}", _array_type(fields[name]) == "jsonb", presence.get(name),
                 _direct_kind(fields[name]))
                for index, name in enumerate(columns)]
        document = []
        for row_id in ids:
            row = rows[row_id]
            item = {"id": row_id}
            for name, field_obj, key, is_json, present_key, direct in plan:
                if present_key:
                    item[present_key] = name in row
                if direct is not None and name in row:
                    adapted = _direct_value(direct, row[name])
                    if adapted is not _GENERIC:
                        item[key] = adapted
                        continue
                adapted = value(field_obj, row, name)
                if adapted is not None:
                    if is_json:
                        adapted = _json_text(adapted)
                    elif isinstance(adapted, datetime):
                        adapted = adapted.isoformat()
                item[key] = adapted
            document.append(item)
        assigns.append("updated_at = %s")
        sql = (
            f"UPDATE {table} AS t SET {', '.join(assigns)} "
            f"FROM json_to_recordset(%s::json) AS v({', '.join(record)}) WHERE t.id = v.id"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [at, orjson.dumps(document).decode()])
        return
    # SQLite (and any other backend): one prepared statement, many executions.
    groups: dict[tuple[str, ...], list[int]] = {}
    for row_id in ids:
        groups.setdefault(tuple(sorted(rows[row_id])), []).append(row_id)
    at_value = model._meta.get_field("updated_at").get_db_prep_save(at, connection)
    with connection.cursor() as cursor:
        for names, group_ids in groups.items():
            assigns = ", ".join(f"{fields[name].column} = %s" for name in names)
            cursor.executemany(
                f"UPDATE {table} SET {assigns}, updated_at = %s WHERE id = %s",
                [[*(value(fields[name], rows[i], name) for name in names), at_value, i] for i in group_ids],
            )


def rows_insert(model: type[models.Model], objs: list[models.Model]) -> None:
    """INSERT new instances of `model` in one statement and set their primary
    keys, as `bulk_create` does (defaults, `auto_now`, the same database values).

    On PostgreSQL the rows travel as one JSON document read by
    json_to_recordset: Django's own bulk insert sends one array per column,
    which psycopg adapts element by element in Python — for a batch of 500
    emails, most of the time of the request. Elsewhere, or for one row,
    `bulk_create`. Not for binary columns.
    """
    if connection.vendor != "postgresql" or len(objs) <= 1:
        model.objects.bulk_create(objs)
        return
    db = connections[connection.alias]  # not the thread-local proxy on every value
    meta = model._meta
    fields = [f for f in meta.concrete_fields if not (f.primary_key and f.db_returning)]
    record, selects, plan = ["n integer"], [], []
    for index, field_obj in enumerate(fields):
        db_type = field_obj.db_type(db).split("(")[0]
        if db_type == "jsonb":
            record.append(f"c{index} text")  # JSON travels as its text, cast back per row
            selects.append(f"v.c{index}::jsonb")
        else:
            record.append(f"c{index} {db_type}")
            selects.append(f"v.c{index}")
        plan.append((field_obj, field_obj.attname, f"c{index}", db_type == "jsonb", _direct_kind(field_obj)))
    document = []
    for number, obj in enumerate(objs):
        obj._prepare_related_fields_for_save(operation_name="bulk_create")
        item = {"n": number}
        for field_obj, attname, key, is_json, direct in plan:
            if direct is not None:
                adapted = _direct_value(direct, getattr(obj, attname))
                if adapted is not _GENERIC:
                    item[key] = adapted
                    continue
            adapted = field_obj.get_db_prep_save(field_obj.pre_save(obj, True), db)
            if adapted is not None:
                if is_json:
                    adapted = _json_text(adapted)
                elif isinstance(adapted, datetime):
                    adapted = adapted.isoformat()
                elif not isinstance(adapted, (str, int, float)):
                    adapted = str(adapted)  # a UUID, a Decimal: their text is their SQL input
            item[key] = adapted
        document.append(item)
    pk = meta.pk
    sql = (
        f"INSERT INTO {meta.db_table} ({', '.join(connection.ops.quote_name(f.column) for f in fields)}) "
        f"SELECT {', '.join(selects)} FROM json_to_recordset(%s::json) AS v({', '.join(record)}) ORDER BY v.n "
        f"RETURNING {connection.ops.quote_name(pk.column)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [orjson.dumps(document).decode()])
        ids = [row[0] for row in cursor.fetchall()]
    for obj, pk_value in zip(objs, ids):
        setattr(obj, pk.attname, pk_value)
        obj._state.adding = False
        obj._state.db = connection.alias


# Columns whose value needs no preparation by its field when it has the plain
# Python type (what get_db_prep_save would return unchanged): their value is
# put in the JSON document as it is. Any other value goes the field's way.
_TEXT_FIELDS = frozenset({"CharField", "TextField", "EmailField", "SlugField"})
_INT_FIELDS = frozenset({"IntegerField", "PositiveIntegerField", "BigIntegerField", "PositiveBigIntegerField",
                         "SmallIntegerField", "PositiveSmallIntegerField", "ForeignKey"})
_GENERIC = object()


def _direct_kind(field_obj: models.Field) -> str | None:
    internal = field_obj.get_internal_type()
    if internal in _TEXT_FIELDS:
        return "text"
    if internal in _INT_FIELDS:
        return "int"
    if internal == "BooleanField":
        return "bool"
    if internal == "DateTimeField" and not (field_obj.auto_now or field_obj.auto_now_add):
        return "datetime"
    if internal == "JSONField" and field_obj.encoder is None:
        return "json"
    return None


def _direct_value(kind: str, value):
    """`value` as the JSON document carries it, or _GENERIC when its field must prepare it."""
    if value is None:
        return None
    kind_of = type(value)
    if kind == "text":
        return value if kind_of is str else _GENERIC
    if kind == "int":
        return value if kind_of is int else _GENERIC
    if kind == "bool":
        return value if kind_of is bool else _GENERIC
    if kind == "datetime":
        return value.isoformat() if kind_of is datetime and value.tzinfo is not None else _GENERIC
    try:  # json: what json.dumps writes, or the field's way for anything orjson would write differently
        return orjson.dumps(value, option=orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS).decode()
    except TypeError:
        return _GENERIC


def _json_text(adapted) -> str:
    """The JSON text of a value JSONField.get_db_prep_save adapted for psycopg."""
    inner = getattr(adapted, "obj", adapted)
    return inner if isinstance(inner, str) and not hasattr(adapted, "obj") else json.dumps(inner)


def _array_type(field_obj: models.Field) -> str:
    internal = field_obj.get_internal_type()
    if internal == "JSONField":
        return "jsonb"
    if internal in ("CharField", "TextField", "EmailField", "SlugField"):
        return "text"
    if internal == "DateTimeField":
        return "timestamptz"
    if internal in ("IntegerField", "PositiveIntegerField", "BigIntegerField", "PositiveBigIntegerField",
                    "SmallIntegerField", "PositiveSmallIntegerField", "BigAutoField", "AutoField", "ForeignKey"):
        return "bigint"
    if internal == "BooleanField":
        return "boolean"
    raise ValueError(f"no array type for {field_obj!r}")


def index_lookups() -> None:
    """In the current transaction: statements that fetch a bounded set of rows
    by key (a chunk's, a page's, a batch of events') take their index even when
    the table's statistics are stale or missing.

    Without statistics PostgreSQL expects every value of a non-unique column to
    match 0.5 % of the table; fifty values of `message_id` then look like a
    quarter of a million rows, and it reads the whole table instead of fifty
    index entries. Every statement of the transactions that call this is bounded
    by a chunk, a page or a batch, so a sequential scan is never the right plan
    for them. Holds until the transaction ends; outside one, or on another
    database, it does nothing.
    """
    if connection.vendor == "postgresql" and connection.in_atomic_block:
        with connection.cursor() as cursor:
            # The same wrong estimate also starts parallel workers (two extra
            # PostgreSQL processes and tens of milliseconds) for a hundred rows.
            cursor.execute("SET LOCAL enable_seqscan = off; SET LOCAL max_parallel_workers_per_gather = 0")
