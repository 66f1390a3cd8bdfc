"""Listing emails and counting them (SPEC §4 `GET /emails`, `GET /stats`).

Pages are newest first by id, one index range deep however far a cursor goes,
and stay on an index whether the planner's statistics are fresh, stale or
missing:

* filters an index hands over in id order — one status, `group_id`,
  `template`, `to` (the recipients' `(email, message_id)` index) — need nothing
  more than `index_lookups()`;
* `created_after` / `created_before` become id bounds too (`created_id_bounds`);
* filters no index orders by id — `tag` and `metadata[...]` (GIN indexes on
  PostgreSQL) and several statuses — depend on how dense the matches are, which
  stale statistics get wrong by orders of magnitude (a full walk of the primary
  key for a tag that matches nothing). A page of them is first looked for
  among the PROBE_ROWS rows next to the cursor (`page_window`), and gathered
  through the filters' indexes only when those hold less than a page.

Counts per status (`stats=true`) are exact up to STATS_EXACT_LIMIT matching
emails; past that, on PostgreSQL, they are estimated from a sample of the ids
the filter can reach, and said to be so. `/stats` counts StatusChange rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from django.db import OperationalError, connection, transaction
from django.db.models import BooleanField, Case, Count, Exists, OuterRef, Q, QuerySet, Value, When
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone
from redis import RedisError

from core.addresses import address_key
from core.redisclient import redis_client
from core.sql import is_postgresql, json_key_is, json_list_has, pk_among, planner_settings, planner_settings_set
from emailsvc.models import Message, Recipient, Status, StatusChange

logger = logging.getLogger(__name__)

STATUSES: tuple[str, ...] = tuple(Status.values)
_STATUS_SET = frozenset(STATUSES)

# created_at comes from the clock of the process that stores a message, and
# its id from the database sequence a moment later in the same INSERT: in id
# order, created_at never goes back by more than the clocks of two web
# processes differ. Ten minutes covers any clock NTP keeps.
CREATED_ORDER_SLACK = timedelta(minutes=10)
# Rows next to the cursor among which a page of an unordered filter is looked
# for first, and the newest rows whose matches say whether counts per status
# are worth counting exactly (a few milliseconds to read).
PROBE_ROWS = 2_000
# Counts per status are exact up to this many matching emails...
STATS_EXACT_LIMIT = 10_000
# ...and past it estimated from a sample of this many runs of consecutive ids
# (10,000 ids: a figure resting on n sampled emails is good to about ±1/√n).
STATS_SAMPLE_RUNS = 200
STATS_SAMPLE_RUN = 50
# The matches are counted exactly when the sample estimates at most this many
# (the sample errs; past this, more than STATS_EXACT_LIMIT is certain enough).
STATS_EXACT_TRY = 3 * STATS_EXACT_LIMIT
# An exact count that takes longer than this (its matches scattered over a big
# table) is stopped by PostgreSQL and estimated instead: a page with its stats
# stays fast whatever the filter.
STATS_EXACT_MILLISECONDS = 150


@dataclass(frozen=True)
class EmailFilters:
    """What GET /emails may filter on; every one given must hold."""

    statuses: tuple[str, ...] = ()
    group_id: str | None = None
    to: str | None = None
    tag: str | None = None
    template: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def unordered(self) -> bool:
        """Whether a filter is given that no index hands over in id order."""
        return bool(self.tag or self.metadata or len(self.statuses) > 1)


@dataclass(frozen=True)
class IdBounds:
    """Exclusive id bounds a filter implies (None: unbounded on that side)."""

    above: int | None = None
    below: int | None = None


def created_id_bounds(*, created_after: datetime | None, created_before: datetime | None) -> IdBounds:
    """The ids that can hold the messages created in [created_after, created_before).

    Ids follow acceptance (CREATED_ORDER_SLACK): every message created before
    `created_before` has a smaller id than the first one created
    CREATED_ORDER_SLACK after it, and likewise on the other side. Bounding the
    id as well lets a page start at the window instead of walking the primary
    key through every newer email; the created_at conditions stay, so the
    answer is the same. One lookup on the created_at index per bound.
    """
    above = below = None
    if created_before is not None:
        later = _moment_plus(created_before, CREATED_ORDER_SLACK)
        if later is not None:
            below = _first_id(Message.objects.filter(created_at__gte=later).order_by("created_at"))
    if created_after is not None:
        earlier = _moment_plus(created_after, -CREATED_ORDER_SLACK)
        if earlier is not None:
            above = _first_id(Message.objects.filter(created_at__lt=earlier).order_by("-created_at"))
    return IdBounds(above=above, below=below)


def _moment_plus(moment: datetime, delta: timedelta) -> datetime | None:
    try:
        return moment + delta
    except OverflowError:
        return None


def _first_id(queryset: QuerySet[Message]) -> int | None:
    return next(iter(queryset.values_list("id", flat=True)[:1]), None)


def messages_filtered(*, filters: EmailFilters, bounds: IdBounds = IdBounds()) -> QuerySet[Message]:
    """The messages matching `filters` (unordered; pages order them by id)."""
    rows = Message.objects.filter(_row_conditions(filters))
    if filters.to is not None:
        # A join, not a semi-join: (message, email) is unique, so no message
        # comes twice, and the recipients' (email, message_id) index hands the
        # messages over newest first.
        rows = rows.filter(recipients__email=address_key(filters.to))
    if bounds.above is not None:
        rows = rows.filter(id__gt=bounds.above)
    if bounds.below is not None:
        rows = rows.filter(id__lt=bounds.below)
    return rows


def _row_conditions(filters: EmailFilters) -> Q:
    """The filters that test the message row itself: all but `to`."""
    condition = Q()
    if len(filters.statuses) == 1:
        condition &= Q(status=filters.statuses[0])
    elif filters.statuses:
        condition &= Q(status__in=filters.statuses)
    if filters.group_id is not None:
        condition &= Q(group_id=filters.group_id)
    if filters.template is not None:
        condition &= Q(template_name=filters.template)
    if filters.tag is not None:
        condition &= _has_tag(filters.tag)
    for key, value in filters.metadata:
        condition &= json_key_is("metadata", key, value)
    if filters.created_after is not None:
        condition &= Q(created_at__gte=filters.created_after)
    if filters.created_before is not None:
        condition &= Q(created_at__lt=filters.created_before)
    return condition


def _has_tag(tag: str) -> Q:
    """`tag` is one of the message's tags (a GIN containment on PostgreSQL)."""
    return json_list_has("tags", tag, model=Message)


# --- Planner guidance (core.sql.planner_settings) ------------------------------------------


# Read in the order of an index, stopping at the limit: neither a bitmap of a
# whole filter nor a sort of it.
ORDERED = {"enable_bitmapscan": "off", "enable_sort": "off"}
# Gather every match through the filters' indexes, then sort them.
GATHERED = {"enable_indexscan": "off", "enable_indexonlyscan": "off"}
# Look rows up by id only: no bitmap of a whole filter to intersect with a few ids.
BY_ID = {"enable_bitmapscan": "off"}
# Join by looking each row up: a recipient's emails through the recipients'
# index, then their messages by key (no hash of a walk of every message).
LOOKED_UP = {"enable_hashjoin": "off", "enable_mergejoin": "off"}


def ordered_part(filters: EmailFilters) -> EmailFilters:
    """The one filter of `filters` whose index hands messages over in id order,
    the narrowest kind first (a recipient, a group, a template, a status); no
    filter at all when there is none (the primary key orders everything)."""
    if filters.to is not None:
        return EmailFilters(to=filters.to)
    if filters.group_id is not None:
        return EmailFilters(group_id=filters.group_id)
    if filters.template is not None:
        return EmailFilters(template=filters.template)
    if len(filters.statuses) == 1:
        return EmailFilters(statuses=filters.statuses)
    return EmailFilters()


@dataclass(frozen=True)
class PageWindow:
    matches: list[int]  # the ids in the window that every filter admits
    complete: bool  # the window holds every message the ordered filter admits past the cursor


def page_window(*, filters: EmailFilters, bounds: IdBounds, position: int | None, reverse: bool) -> PageWindow | None:
    """Where a page of unordered filters is looked for first (PostgreSQL; None otherwise).

    The window: the PROBE_ROWS messages next to where the page starts that
    `ordered_part(filters)` admits — one index range, however the statistics
    read — each tested against the other filters in the same pass. Every match
    of `filters` between the cursor and the window's far end is in it, so when
    it holds a page of matches and one more (or is all there is), the page is
    read from those ids (`among`); when it holds fewer, the matches are sparse
    and the page is gathered through the filters' indexes instead (GATHERED).
    """
    if not is_postgresql() or not filters.unordered:
        return None
    # Every filter but `to` tests the row itself (`to`, when given, is the ordered part).
    every = _row_conditions(replace(filters, to=None))
    rows = messages_filtered(filters=ordered_part(filters), bounds=bounds).annotate(
        hit=Case(When(every, then=Value(True)), default=Value(False), output_field=BooleanField())
    )
    if position is not None:
        rows = rows.filter(id__gt=position) if reverse else rows.filter(id__lt=position)
    with planner_settings(**ORDERED):
        window = list(rows.order_by("id" if reverse else "-id").values_list("id", "hit")[:PROBE_ROWS])
    return PageWindow(matches=[id_ for id_, hit in window if hit], complete=len(window) < PROBE_ROWS)


def among(rows: QuerySet[Message], ids: list[int]) -> QuerySet[Message]:
    """`rows` whose id is one of `ids` (one array parameter, which the planner does not estimate id by id)."""
    return rows.filter(pk_among(Message, ids))


def messages_among(ids: list[int]) -> QuerySet[Message]:
    """The messages whose id is one of `ids`, by key alone (no filter an index could answer)."""
    return among(Message.objects.all(), ids)


def sampled_matches(filters: EmailFilters, ids: list[int]) -> QuerySet[Message]:
    """The messages among `ids` that `filters` admit, found by primary key and
    then tested: the conditions sit in a CASE, which no index answers, so the
    planner cannot trade the key lookups for a walk of a filter's whole index
    (a status matching 2 % of a million emails is 20,000 scattered rows: seconds)."""
    conditions = _row_conditions(filters)
    if filters.to is not None:
        conditions &= Q(Exists(Recipient.objects.filter(message_id=OuterRef("pk"), email=address_key(filters.to))))
    if not conditions:
        return messages_among(ids)
    hit = Case(When(conditions, then=Value(True)), default=Value(False), output_field=BooleanField())
    return messages_among(ids).alias(hit=hit).filter(hit=True)


def _top(bounds: IdBounds) -> int:
    """An id above every message `bounds` admits."""
    if bounds.below is not None:
        return bounds.below
    return (_first_id(Message.objects.order_by("-id")) or 0) + 1


def _matches(rows: QuerySet[Message], window: Q) -> int:
    """How many of `rows` are in a window of ids, read through the primary key (bounded by the window)."""
    with planner_settings(**BY_ID):
        return rows.filter(window).count()


# --- Counts per status -----------------------------------------------------------------------


@dataclass(frozen=True)
class StatusCounts:
    counts: dict[str, int]
    exact: bool


def message_status_counts(*, rows: QuerySet[Message], filters: EmailFilters, bounds: IdBounds) -> StatusCounts:
    """How many of `rows` are in each status (every status, 0 included).

    On SQLite, and on PostgreSQL whenever at most STATS_EXACT_LIMIT match:
    exact. Past that (PostgreSQL), an estimate: `exact` is False.

    Which one is tried first follows the matches among the newest PROBE_ROWS
    ids the filter admits: when they promise at most STATS_EXACT_TRY matches in
    all, the matches are read (at most STATS_EXACT_LIMIT plus one) and counted.
    Otherwise, or when there are more after all, the counts are estimated from
    a stratified sample of the ids the filter can reach — STATS_SAMPLE_RUNS runs
    of STATS_SAMPLE_RUN consecutive ids, one in each equal slice of the range
    (the same runs for the same range, so figures do not jitter between calls)
    — scaled to the range. A created_after / created_before window narrows the
    range, so a narrow window is sampled as closely as the whole table. A large
    set costs a sample, never a scan.
    """
    counts = dict.fromkeys(STATUSES, 0)
    if not is_postgresql():
        counts.update(Counter(rows.order_by().values_list("status", flat=True)))
        return StatusCounts(counts=counts, exact=True)
    high = _top(bounds)
    low = bounds.above + 1 if bounds.above is not None else _first_id(Message.objects.order_by("id"))
    if low is None or high <= low:
        return StatusCounts(counts=counts, exact=True)
    probed = min(PROBE_ROWS, high - low)
    promised = _matches(rows, Q(id__lt=high, id__gte=high - probed)) * (high - low) / probed
    if promised <= STATS_EXACT_TRY:
        statuses = statuses_read(rows, unordered=filters.unordered, by_status=bool(ordered_part(filters).statuses))
        if statuses is not None and len(statuses) <= STATS_EXACT_LIMIT:
            counts.update(Counter(statuses))
            return StatusCounts(counts=counts, exact=True)
    sample = _sample_ids(low, high)
    with planner_settings(**BY_ID):
        sampled = sampled_matches(filters, sample).order_by().values_list("status").annotate(number=Count("*"))
        scale = (high - low) / len(sample)
        for status, number in sampled:
            counts[status] = round(number * scale)
    return StatusCounts(counts=counts, exact=len(sample) == high - low)


def statuses_read(rows: QuerySet[Message], *, unordered: bool = False, by_status: bool = False) -> list[str] | None:
    """The statuses of up to STATS_EXACT_LIMIT + 1 of `rows` (PostgreSQL), or None
    when reading them takes longer than STATS_EXACT_MILLISECONDS: PostgreSQL
    stops the statement (statement_timeout) and the savepoint around it takes
    back the failed statement and the settings, so the caller's transaction
    goes on."""
    # How the rows are read (each a bounded number of them, whatever the statistics):
    # - a status filter newest first, through the index its pages use, (status,
    #   id) rather than (status, created_at): on a table full of dead row
    #   versions, the page reads have marked those in that index already, so they
    #   are skipped rather than fetched from the heap again;
    # - a recipient's emails looked up one by one from the recipients' index, not
    #   hashed against a walk of every message (LOOKED_UP).
    values = {
        "statement_timeout": f"{STATS_EXACT_MILLISECONDS}ms",
        **(GATHERED if unordered else ORDERED if by_status else LOOKED_UP),
    }
    order = ("-id",) if by_status and not unordered else ()
    try:
        with transaction.atomic():
            before = planner_settings_set(values)
            statuses = list(rows.order_by(*order).values_list("status", flat=True)[: STATS_EXACT_LIMIT + 1])
            planner_settings_set(before, read=False)
            return statuses
    except OperationalError as error:
        if type(error.__cause__).__name__ == "QueryCanceled":  # psycopg.errors.QueryCanceled: the time was up
            return None
        raise


def _sample_ids(low: int, high: int) -> list[int]:
    """Ids of a stratified sample of [low, high): one run of consecutive ids in each of
    STATS_SAMPLE_RUNS equal slices; all of them when the range is no larger."""
    if high - low <= STATS_SAMPLE_RUNS * STATS_SAMPLE_RUN:
        return list(range(low, high))
    chooser = random.Random(f"{low}:{high}")
    stride = (high - low) / STATS_SAMPLE_RUNS
    ids = []
    for index in range(STATS_SAMPLE_RUNS):
        first = low + int(index * stride)
        last = low + int((index + 1) * stride) - STATS_SAMPLE_RUN
        start = chooser.randint(first, max(first, last))
        ids.extend(range(start, start + STATS_SAMPLE_RUN))
    return ids


# --- Transitions over time (GET /stats) ----------------------------------------------------

INTERVALS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
# A transition's `at` is taken as the transaction that records it starts, and
# the row appears when it commits, moments later: a bucket that ended this long
# ago gets no more rows.
STATS_SETTLE = timedelta(minutes=10)
STATS_CACHE_PREFIX = "emailsvc:stats:v2:"  # v2: a bucket's counts are kept per message stream
STATS_CACHE_SECONDS = 100 * 24 * 3600
# The streams every install has (emailsvc.streams): always in the per-stream split.
STATS_STREAMS = ("transactional", "broadcast")


def bucket_floor(moment: datetime, interval: str) -> datetime:
    """The start (UTC) of the `interval` bucket holding `moment`."""
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if interval == "day" else moment


def bucket_ceil(moment: datetime, interval: str) -> datetime:
    """The first bucket boundary (UTC) at or after `moment`."""
    floor = bucket_floor(moment, interval)
    return floor if floor == moment else floor + INTERVALS[interval]


@dataclass(frozen=True)
class TransitionCounts:
    start: datetime
    end: datetime
    interval: str
    buckets: list[tuple[datetime, dict[str, int]]]
    totals: dict[str, int]
    # {stream: counts} per bucket (in the order of `buckets`), and over the window.
    bucket_streams: list[dict[str, dict[str, int]]]
    streams: dict[str, dict[str, int]]


def transition_counts(
    *, start: datetime, end: datetime, interval: str, group_id: str | None = None, tag: str | None = None,
    include_test: bool = False, stream: str | None = None,
) -> TransitionCounts:
    """Recipient status transitions per `interval` bucket, by the status reached.

    Counts StatusChange rows whose `at` (when the service recorded the
    transition) is in [start, end), both widened to the interval's UTC
    boundaries; one row per recipient and transition, so a recipient that was
    sent, delivered and opened counts once in each of `sent`, `delivered` and
    `opened`, each in the bucket of its own moment. `group_id` and `tag` keep
    the transitions of the messages that have them, `stream` those of one
    message stream. Every bucket of the window
    is listed, every status in each (0 included). The transitions of test
    keys' emails are left out unless `include_test`.

    A bucket that ended more than STATS_SETTLE ago no longer changes: once
    counted, its counts are kept in Redis (STATS_CACHE_SECONDS) and not
    counted again, so a dashboard asking for the last week every minute counts
    the current hour, not the week. Without Redis everything is counted.
    """
    now = timezone.now()
    step = INTERVALS[interval]
    start, end = bucket_floor(start, interval), bucket_ceil(end, interval)
    starts = [start + step * index for index in range(int((end - start) / step))]
    settled = [moment for moment in starts if moment + step <= now - STATS_SETTLE]
    cache_key = _stats_cache_key(interval=interval, group_id=group_id, tag=tag, include_test=include_test, stream=stream)
    found = _stats_cache_get(cache_key, settled)
    missing = [moment for moment in starts if moment not in found]
    counted: dict[datetime, dict[str, dict[str, int]]] = {}
    for span_start, span_end in _spans(missing, step):
        counted.update(
            _transitions_counted(
                span_start, span_end, interval, group_id=group_id, tag=tag, include_test=include_test, stream=stream
            )
        )
    _stats_cache_set(cache_key, {moment: counted.get(moment, {}) for moment in settled if moment in missing})
    found.update(counted)
    # Every install's streams are always listed (at 0 when idle), any other one once it has a transition in the window.
    names = {stream} if stream is not None else set(STATS_STREAMS) | {name for by_stream in found.values() for name in by_stream}
    buckets, totals = [], dict.fromkeys(STATUSES, 0)
    bucket_streams, streams = [], {name: dict.fromkeys(STATUSES, 0) for name in sorted(names)}
    for moment in starts:
        counts = dict.fromkeys(STATUSES, 0)
        per_stream = {name: dict.fromkeys(STATUSES, 0) for name in sorted(names)}
        for name, stream_counts in found.get(moment, {}).items():
            for status, number in stream_counts.items():
                counts[status] += number
                totals[status] += number
                per_stream[name][status] = number
                streams[name][status] += number
        buckets.append((moment, counts))
        bucket_streams.append(per_stream)
    return TransitionCounts(
        start=start, end=end, interval=interval, buckets=buckets, totals=totals, bucket_streams=bucket_streams, streams=streams
    )


def _spans(moments: list[datetime], step: timedelta) -> list[tuple[datetime, datetime]]:
    """Consecutive bucket starts as [start, end) spans."""
    spans: list[tuple[datetime, datetime]] = []
    for moment in moments:
        if spans and spans[-1][1] == moment:
            spans[-1] = (spans[-1][0], moment + step)
        else:
            spans.append((moment, moment + step))
    return spans


def _transitions_counted(
    start: datetime, end: datetime, interval: str, *, group_id: str | None, tag: str | None, include_test: bool = False,
    stream: str | None = None,
) -> dict[datetime, dict[str, dict[str, int]]]:
    """{bucket start: {stream: {status: transitions}}} of [start, end), non-zero
    counts only: one grouped statement, whatever the number of streams."""
    rows = StatusChange.objects.filter(at__gte=start, at__lt=end)
    if not include_test:
        rows = rows.filter(test=False)
    if group_id is not None:
        rows = rows.filter(message__group_id=group_id)
    if tag is not None:
        rows = rows.filter(message__in=Message.objects.filter(_has_tag(tag)))
    if stream is not None:
        rows = rows.filter(message__stream=stream)
    trunc = TruncHour if interval == "hour" else TruncDay
    grouped = (
        rows.order_by()
        .annotate(bucket=trunc("at", tzinfo=UTC))
        .values_list("bucket", "message__stream", "to_status")
        .annotate(number=Count("id"))
    )
    found: dict[datetime, dict[str, dict[str, int]]] = {}
    for bucket, stream_name, to_status, number in grouped:
        if to_status in _STATUS_SET:  # not `unsubscribed`: an event, not a status (emailsvc.streams)
            found.setdefault(bucket.astimezone(UTC), {}).setdefault(stream_name, {})[to_status] = number
    return found


def _stats_cache_key(
    *, interval: str, group_id: str | None, tag: str | None, include_test: bool = False, stream: str | None = None
) -> str:
    # The database's name too: two databases may share one Redis.
    parts = [connection.settings_dict["NAME"], group_id, tag] + (["include_test"] if include_test else [])
    parts += [f"stream:{stream}"] if stream is not None else []
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
    return f"{STATS_CACHE_PREFIX}{interval}:{digest}:"


def _stats_cache_get(key: str, moments: list[datetime]) -> dict[datetime, dict[str, dict[str, int]]]:
    if not moments:
        return {}
    try:
        values = redis_client().mget([f"{key}{int(moment.timestamp())}" for moment in moments])
    except RedisError as error:
        logger.warning("stats cache unavailable, counting every bucket: %s", error)
        return {}
    return {moment: json.loads(value) for moment, value in zip(moments, values, strict=True) if value is not None}


def _stats_cache_set(key: str, counts: dict[datetime, dict[str, dict[str, int]]]) -> None:
    if not counts:
        return
    try:
        with redis_client().pipeline(transaction=False) as pipe:
            for moment, bucket_counts in counts.items():
                pipe.set(f"{key}{int(moment.timestamp())}", json.dumps(bucket_counts), ex=STATS_CACHE_SECONDS)
            pipe.execute()
    except RedisError as error:
        logger.warning("stats cache unavailable, counts not kept: %s", error)
