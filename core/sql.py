"""Every raw statement of the project, and its only database-vendor branches
(with core.sql_engine, which holds the delivery engine's).

Set-based SQL the ORM does not offer: many rows updated, each with its own
values, in one statement; bounded key lookups that stay on their index; the
planner guidance of the list reads; plain statements on paths that run for
every request. Each PostgreSQL statement here earns its speed and has a test
holding it to the ORM's answer (tests/core/test_sql.py); elsewhere the ORM.
"""

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

import orjson
from django.db import connection, connections, models, transaction
from django.db.models import BooleanField, Q
from django.db.models.expressions import RawSQL
from django.db.models.fields.json import KeyTransform
from django.db.models.lookups import Exact


def is_postgresql() -> bool:
    """Whether the database is PostgreSQL: what planner guidance, statistics and
    array parameters need (the list reads choose their way by it)."""
    return connection.vendor == "postgresql"


def database_ping() -> None:
    """One round trip to the database; raises what the driver raises when it does not answer."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


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


# --- Plain statements on paths that run for every request -------------------------------


def row_by_unique(model: type[models.Model], field_name: str, value) -> models.Model | None:
    """The row of `model` whose unique `field_name` is `value`, or None.

    On PostgreSQL one plain statement read into the model (no queryset built
    and compiled: this runs for every API request); elsewhere the ORM."""
    if not is_postgresql():
        # Not `.first()`: its ORDER BY id may walk the primary key instead of the unique index.
        return next(iter(model._default_manager.filter(**{field_name: value})[:1]), None)
    fields = model._meta.concrete_fields
    column = model._meta.get_field(field_name).column
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(field.column for field in fields)} FROM {model._meta.db_table} WHERE {column} = %s",
            [value],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    # What the ORM's converters do (a JSON column arrives as text): only fields that have one.
    values = [
        field.from_db_value(value, None, connection) if hasattr(field, "from_db_value") else value
        for field, value in zip(fields, row, strict=True)
    ]
    return model.from_db(connection.alias, [field.attname for field in fields], values)


def values_unexpired(
    model: type[models.Model], fields: Sequence[str], *, key: str, among: Sequence, now: datetime,
    expires: str = "expires_at",
) -> list[tuple]:
    """`fields` of the rows of `model` whose `key` is one of `among` and whose
    `expires` is empty or after `now`. On PostgreSQL a plain statement with one
    array parameter (this runs for every accept and every chunk); elsewhere the ORM."""
    if not is_postgresql():
        rows = model._default_manager.filter(**{f"{key}__in": among})
        rows = rows.filter(Q(**{f"{expires}__isnull": True}) | Q(**{f"{expires}__gt": now}))
        return list(rows.values_list(*fields))
    meta = model._meta
    columns = ", ".join(meta.get_field(name).column for name in fields)
    expiry = meta.get_field(expires).column
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {columns} FROM {meta.db_table} "
            f"WHERE {meta.get_field(key).column} = ANY(%s) AND ({expiry} IS NULL OR {expiry} > %s)",
            [sorted(among), now],
        )
        return cursor.fetchall()


def table_row_estimate(model: type[models.Model]) -> int | None:
    """Rows in the model's table as PostgreSQL's statistics estimate them
    (`reltuples`, without counting); None when the table was never analysed,
    or on another database."""
    database = connections["default"]
    if database.vendor != "postgresql":
        return None
    with database.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [model._meta.db_table])
        row = cursor.fetchone()
    if row and row[0] is not None and row[0] > 0:
        return int(row[0])
    return None


# --- The list reads ---------------------------------------------------------------------------


def json_list_has(field_name: str, value: str, *, model: type[models.Model]) -> Q:
    """The JSON list in `field_name` holds the string `value` (a GIN containment
    on PostgreSQL; on SQLite a walk of the list with json_each)."""
    if is_postgresql():
        return Q(**{f"{field_name}__contains": [value]})
    table, column = model._meta.db_table, model._meta.get_field(field_name).column
    return Q(
        RawSQL(
            f'EXISTS (SELECT 1 FROM json_each("{table}"."{column}") WHERE json_each.type = \'text\' AND json_each.value = %s)',
            [value],
            output_field=BooleanField(),
        )
    )


def json_key_is(field_name: str, key: str, value: str) -> Q:
    """The JSON object in `field_name` maps `key` to the string `value`: a
    containment on PostgreSQL, which the GIN index answers (exact: {"k": "v"}
    is contained neither in {"k": ["v"]} nor in {"k": 7}); elsewhere the key's
    value compared (the key taken as it is: one holding "__" is one key)."""
    if is_postgresql():
        return Q(**{f"{field_name}__contains": {key: value}})
    return Q(Exact(KeyTransform(key, field_name), value))


def pk_among(model: type[models.Model], ids: list[int]) -> Q:
    """The row's primary key is one of `ids`: on PostgreSQL one array
    parameter, which the planner does not estimate id by id; elsewhere IN."""
    if not is_postgresql():
        return Q(pk__in=ids)
    meta = model._meta
    return Q(RawSQL(f'"{meta.db_table}"."{meta.pk.column}" = ANY(%s)', [ids], output_field=BooleanField()))


def planner_settings_set(values: dict[str, str], *, read: bool = True) -> dict[str, str]:
    """Set these planner settings until the transaction ends (set_config(…, true),
    PostgreSQL only) and return what they were (with `read`; else {}: putting
    settings back needs no read). Around a statement that may fail, put them
    back by hand rather than with `planner_settings`: an aborted transaction
    takes no statement, and its savepoint puts them back anyway."""
    before: dict[str, str] = {}
    with connection.cursor() as cursor:
        if read:
            names = list(values)
            cursor.execute("SELECT " + ", ".join(["current_setting(%s)"] * len(names)), names)
            before = dict(zip(names, cursor.fetchone(), strict=True))
        cursor.execute(
            "SELECT " + ", ".join(["set_config(%s, %s, true)"] * len(values)),
            [item for pair in values.items() for item in pair],
        )
    return before


@contextmanager
def planner_settings(**values: str) -> Iterator[None]:
    """Planner settings for the statements inside, back as they were after.

    PostgreSQL only, inside a transaction (SET LOCAL); elsewhere nothing.
    """
    if not is_postgresql() or not connection.in_atomic_block or not values:
        yield
        return
    before = planner_settings_set(values)
    try:
        yield
    finally:
        planner_settings_set(before, read=False)


@contextmanager
def read_snapshot() -> Iterator[None]:
    """The statements inside read one moment of the database: a record read in
    several statements (an email, its recipients, its events) never shows a
    commit that landed between two of them.

    A transaction of Django's own (nesting, errors and the end of a request
    handled as for any other): on PostgreSQL READ ONLY, REPEATABLE READ; on
    SQLite begun DEFERRED (in WAL mode a reader's snapshot, taken at its first
    read, blocks no writer; the project's IMMEDIATE transactions would). Inside
    a transaction already open, that transaction's own view is kept.
    """
    if connection.in_atomic_block:
        yield
        return
    # Opened (and health-checked) before the transaction: its first statement must be the SET.
    with connection.cursor():
        pass
    if is_postgresql():
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield
        return
    mode = connection.transaction_mode
    connection.transaction_mode = "DEFERRED"  # read once, as atomic() begins the transaction
    try:
        with transaction.atomic():
            connection.transaction_mode = mode
            yield
    finally:
        connection.transaction_mode = mode
