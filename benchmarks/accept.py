"""Figures 1 and 2: how fast the API accepts emails (POST /emails and /emails/batch).

gunicorn runs as in the Procfile, with EMAIL_PROVIDER=console and no worker:
accepting never talks to the provider, and the delivery tasks just pile up in
Redis (deleted after each row so the broker starts every row empty).
"""

from __future__ import annotations

from benchmarks.context import Bench
from benchmarks.meter import Meter
from benchmarks.report import Row, fmt

# Where an accepted email's time goes, from `make bench-profile PROFILE=accept`
# (1,000 POST /api/v1/emails through Django's test client, pyinstrument; this
# machine, 2026-12): stated beside the measured CPU so the reader sees why the
# row is where it is.
PROFILE_NOTE = (
    "where the time goes (cProfile over POST /emails in one process, per request): storing ~35 % (the Message "
    "and Recipient inserts ~24 %, the suppression look-up and the paused-domain check ~10 %), commit and the one "
    "publish to the broker ~26 %, the API key look-up ~8 %, validation ~5 %, Django/DRF request and response "
    "handling the rest; five SQL statements and a commit per request, and a gevent gunicorn worker serves its "
    "requests one after another on one core, sharing the two with PostgreSQL and the load generator"
)

# The same for a batch of 500 (POST /api/v1/emails/batch through Django's test
# client under cProfile, this machine, 2026-12).
BATCH_PROFILE_NOTE = (
    "where the time goes (cProfile over POST /emails/batch of 500 in one process, ~0.33 ms of CPU per email on a "
    "quiet machine): DRF validation of each email ~39 %, building its rows (policy, template, model instances) "
    "~22 %, the one INSERT of messages and of recipients (the rows as one JSON document, plain values put in as "
    "they are) ~23 %, the response, commit and the one publish per chunk the rest; the JSON body is read by "
    "orjson; two gevent gunicorn workers on two cores shared with PostgreSQL and the load generator"
)


def _setup(bench: Bench, clients: int) -> str:
    return (
        f"gunicorn --workers {bench.params.web_workers} (gevent); {clients} client thread(s) in a separate process; "
        "console provider, no worker, limiter off"
    )


def _errors(result: dict) -> str:
    return "" if not result["errors"] else "errors: " + ", ".join(f"{k}×{v}" for k, v in result["errors"].items())


def _measured(bench: Bench, web, run) -> tuple[dict, dict]:
    """`run()`'s result, and the CPU the web workers and PostgreSQL spent on it."""
    meter = Meter(bench.stack).start(web.process.pid)
    result = run()
    meter.stop_sampling()
    return result, meter.result()


def _cpu_note(measured: dict, emails: int) -> tuple[str, dict]:
    if not emails:
        return "", {}
    web_ms = 1000 * measured["process_cpu_seconds"] / emails
    values = {"web_cpu_ms_per_email": round(web_ms, 3)}
    note = f"CPU per email {web_ms:.2f} ms in gunicorn"
    if measured.get("postgres_cpu_seconds") is not None:
        pg_ms = 1000 * measured["postgres_cpu_seconds"] / emails
        values["postgres_cpu_ms_per_email"] = round(pg_ms, 3)
        note += f" + {pg_ms:.2f} ms in PostgreSQL"
    if measured.get("machine_busy_cores") is not None:
        note += f"; machine busy {measured['machine_busy_cores']} of {bench_cores()} cores (the load generator included)"
    return note, values


def bench_cores() -> int:
    import os

    return os.cpu_count() or 1


def _notes(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def run(bench: Bench) -> None:
    params, stack = bench.params, bench.stack
    web = stack.start_web(workers=params.web_workers, EMAIL_PROVIDER="console", SEND_RATE_PER_SECOND="0")
    try:
        for clients in params.accept_concurrencies:
            stack.flush_tasks()
            result, measured = _measured(bench, web, lambda: bench.loadgen(
                web.url, concurrency=clients, duration=params.accept_seconds, warmup=params.accept_warmup,
                first=bench.numbers(1_000_000),
            ))
            cpu, cpu_values = _cpu_note(measured, result.get("emails_total") or 0)
            bench.rows.append(Row(
                figure="1 accept, single",
                setup=f"POST /api/v1/emails; {_setup(bench, clients)}",
                result=(f"{fmt(result['requests_per_second'])} emails/s; p50 {fmt(result['p50_ms'])} ms, "
                        f"p99 {fmt(result['p99_ms'])} ms"),
                values={"clients": clients, **result, **cpu_values},
                notes=_notes(_errors(result), cpu, PROFILE_NOTE),
            ))
            print(f"  accept single, {clients} clients: {bench.rows[-1].result}", flush=True)
        for size in params.batch_sizes:
            stack.flush_tasks()
            result, measured = _measured(bench, web, lambda size=size: bench.loadgen(
                web.url, concurrency=params.batch_concurrency, duration=params.batch_seconds,
                warmup=params.accept_warmup, batch=size, first=bench.numbers(10_000_000),
            ))
            cpu, cpu_values = _cpu_note(measured, result.get("emails_total") or 0)
            bench.rows.append(Row(
                figure="2 accept, batch",
                setup=f"POST /api/v1/emails/batch, {size} emails each; {_setup(bench, params.batch_concurrency)}",
                result=(f"{fmt(result['emails_per_second'])} emails/s ({fmt(result['requests_per_second'], 2)} req/s); "
                        f"p50 {fmt(result['p50_ms'])} ms, p99 {fmt(result['p99_ms'])} ms per request"),
                values={"clients": params.batch_concurrency, "batch_size": size, **result, **cpu_values},
                notes=_notes(_errors(result), cpu, BATCH_PROFILE_NOTE),
            ))
            print(f"  accept batch of {size}: {bench.rows[-1].result}", flush=True)
        stack.record_memory(web, role="web master (gunicorn arbiter)", child_role="web worker", where="accept")
    finally:
        stack.stop(web)
        stack.flush_tasks()
