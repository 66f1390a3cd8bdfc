"""Figure 8: reads at scale — the list, stats and group APIs on a million emails.

The figure adds READS_MESSAGES emails (1,000,000; quick: 100,000) to the bench
database with one INSERT … SELECT over a series per table (tests/tables.py): each with one
recipient and two status changes, spread over the last 30 days, every one in
one group (so the group's analytics read a million recipients), ten tags, a
metadata key, a status mix like a real account's. Nothing is analysed
afterwards (autovacuum is off on this server): the planner sees the tables as
they are right after a big load, the harsh case.

Each request goes through Django's test client in this process (no gunicorn):
one warm-up, then the median of three. It runs last, so the other figures do
not run on the bigger tables.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta
from urllib.parse import urlencode

from benchmarks.context import Bench
from benchmarks.report import Row, fmt

GROUP = "bench-reads-million"
HEAVY = "heavy@example.com"  # one address in every 200 emails


def fill(count: int) -> float:
    """Add `count` emails (with recipients and status changes); seconds taken."""
    from django.db import connection

    from emailsvc.models import Group, Message, Recipient
    from tests.tables import moment_now, moment_plus, rows_fill_first_id, status_changes_fill

    started = time.monotonic()
    Group.objects.get_or_create(id=GROUP)
    created = moment_plus(moment_now(), f"-({count} - g) * 2.592")  # 30 days
    postgresql = connection.vendor == "postgresql"
    tags = "jsonb_build_array('t' || (g % 10))" if postgresql else "json_array('t' || (g % 10))"
    metadata = "jsonb_build_object('tier', (g % 5)::text)" if postgresql else "json_object('tier', CAST(g % 5 AS TEXT))"
    status = (
        "CASE WHEN g % 1000 = 0 THEN 'complained' WHEN g % 50 = 0 THEN 'bounced' WHEN g % 97 = 0 THEN 'failed' "
        "WHEN g % 7 = 0 THEN 'opened' ELSE 'delivered' END"
    )
    address = f"CASE WHEN g % 200 = 0 THEN '{HEAVY}' ELSE 'reader' || (g % 333333) || '@example.org' END"
    first_message = rows_fill_first_id(Message, count, {
        "email_id": f"'reads-' || g || '-{int(started)}'", "group": f"'{GROUP}'",
        "from_email": "'noreply@example.com'", "sending_domain": "'example.com'", "subject": "'Subject ' || (g % 1000)",
        "html": "'<p>Hello</p>'", "text": "'Hello'", "tags": tags,
        "metadata": metadata, "priority": "'normal'", "provider": "'ses'",
        "provider_message_id": f"'reads-pm-' || g || '-{int(started)}'", "status": status, "state": "'done'",
        "attempts": "1", "created_at": created, "queued_at": created, "next_attempt_at": created,
        "sent_at": moment_plus(created, "1"), "updated_at": created,
    })
    first_recipient = rows_fill_first_id(Recipient, count, {
        "message": f"{first_message} + g - 1", "email": address, "role": "'to'", "status": status,
        "group": f"'{GROUP}'", "sent_at": moment_plus(created, "1"),
        "delivered_at": f"CASE WHEN ({status}) IN ('delivered', 'opened', 'complained') THEN {moment_plus(created, '2')} END",
        "updated_at": created,
    })
    status_changes_fill(
        count, first_message=first_message, first_recipient=first_recipient, address=address, status=status,
        at=created,
    )
    return time.monotonic() - started


def _timed(client, url: str) -> tuple[float, dict]:
    """Median milliseconds of three requests after a warm-up, and the answer."""
    response = client.get(url)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url} answered {response.status_code}: {response.content[:300]!r}")
    times = []
    for _ in range(3):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), response.json()


def _deep_page(client, url: str, pages: int) -> str:
    """The URL of page `pages` + 1, following `next` (cursor pages)."""
    for _ in range(pages):
        url = client.get(url).json()["next"]
    return url


def run(bench: Bench) -> None:
    from django.test import Client
    from django.utils import timezone

    count = 100_000 if bench.params.quick else 1_000_000
    seconds = fill(count)
    print(f"  {count:,} emails added in {seconds:.0f} s", flush=True)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {bench.api_key}")
    now = timezone.now()
    day = lambda days: (now - timedelta(days=days)).isoformat()  # noqa: E731
    setup = (f"{count:,} emails added to the bench tables (one recipient and two status changes each, 30 days, "
             f"one group), no ANALYZE; Django's test client in this process, median of 3 after a warm-up")

    listing = [
        ("first page (50)", "/api/v1/emails"),
        ("first page + stats", "/api/v1/emails?stats=true"),
        ("status=bounced + stats", "/api/v1/emails?status=bounced&stats=true"),
        (f"to=<an address in 1 of 200> + stats", "/api/v1/emails?" + urlencode({"to": HEAVY, "stats": "true"})),
        ("tag + stats", "/api/v1/emails?tag=t3&stats=true"),
        ("metadata[tier] + stats", "/api/v1/emails?" + urlencode({"metadata[tier]": "3", "stats": "true"})),
        ("one day's window + stats", "/api/v1/emails?" + urlencode({"created_after": day(15), "created_before": day(14),
                                                                    "stats": "true"})),
        ("page 21 (cursor)", _deep_page(client, "/api/v1/emails", 20)),
    ]
    _row(bench, client, "8 reads: GET /api/v1/emails", setup, listing, target="< 200 ms a page with its stats (issue 17)")
    stats = [
        ("30 days by day", "/api/v1/stats?" + urlencode({"from": day(30), "interval": "day"})),
        ("24 h by hour", "/api/v1/stats?" + urlencode({"from": day(1), "interval": "hour"})),
    ]
    _row(bench, client, "8 reads: GET /api/v1/stats", setup, stats, target="fast on 1,000,000 emails (issue 17)")
    group = [
        (f"analytics of a {count:,}-recipient group", f"/api/v1/groups/{GROUP}/analytics"),
        ("group emails, first page", f"/api/v1/groups/{GROUP}/emails"),
        ("group emails, page 21", _deep_page(client, f"/api/v1/groups/{GROUP}/emails", 20)),
    ]
    _row(bench, client, "8 reads: groups", setup, group, target="analytics < 1 s at 1,000,000 recipients (issue 14)")


def _row(bench: Bench, client, figure: str, setup: str, requests: list[tuple[str, str]], *, target: str) -> None:
    timings = {}
    for label, url in requests:
        timings[label], _ = _timed(client, url)
    bench.rows.append(Row(
        figure=figure,
        setup=setup,
        result="; ".join(f"{label} {fmt(ms)} ms" for label, ms in timings.items()),
        values={"milliseconds": {label: round(ms, 1) for label, ms in timings.items()},
                "urls": {label: url for label, url in requests}},
        notes=f"target: {target}; {bench.used_note()}",
    ))
    print(f"  {figure}: {bench.rows[-1].result}", flush=True)
