"""Figures 1 and 2: how fast the API accepts emails (POST /emails and /emails/batch).

gunicorn runs as in the Procfile, with EMAIL_PROVIDER=console and no worker:
accepting never talks to the provider, and the delivery tasks just pile up in
Redis (deleted after each row so the broker starts every row empty).
"""

from __future__ import annotations

from benchmarks.context import Bench
from benchmarks.report import Row, fmt


def _setup(bench: Bench, clients: int) -> str:
    return (
        f"gunicorn --workers {bench.params.web_workers} (sync); {clients} client thread(s) in a separate process; "
        "console provider, no worker, limiter off"
    )


def _errors(result: dict) -> str:
    return "" if not result["errors"] else "errors: " + ", ".join(f"{k}×{v}" for k, v in result["errors"].items())


def run(bench: Bench) -> None:
    params, stack = bench.params, bench.stack
    web = stack.start_web(workers=params.web_workers, EMAIL_PROVIDER="console", SEND_RATE_PER_SECOND="0")
    try:
        for clients in params.accept_concurrencies:
            stack.flush_tasks()
            result = bench.loadgen(
                web.url, concurrency=clients, duration=params.accept_seconds, warmup=params.accept_warmup,
                first=bench.numbers(1_000_000),
            )
            bench.rows.append(Row(
                figure="1 accept, single",
                setup=f"POST /api/v1/emails; {_setup(bench, clients)}",
                result=(f"{fmt(result['requests_per_second'])} emails/s; p50 {fmt(result['p50_ms'])} ms, "
                        f"p99 {fmt(result['p99_ms'])} ms"),
                values={"clients": clients, **result},
                notes=_errors(result),
            ))
            print(f"  accept single, {clients} clients: {bench.rows[-1].result}", flush=True)
        for size in params.batch_sizes:
            stack.flush_tasks()
            result = bench.loadgen(
                web.url, concurrency=params.batch_concurrency, duration=params.batch_seconds,
                warmup=params.accept_warmup, batch=size, first=bench.numbers(10_000_000),
            )
            bench.rows.append(Row(
                figure="2 accept, batch",
                setup=f"POST /api/v1/emails/batch, {size} emails each; {_setup(bench, params.batch_concurrency)}",
                result=(f"{fmt(result['emails_per_second'])} emails/s ({fmt(result['requests_per_second'], 2)} req/s); "
                        f"p50 {fmt(result['p50_ms'])} ms, p99 {fmt(result['p99_ms'])} ms per request"),
                values={"clients": params.batch_concurrency, "batch_size": size, **result},
                notes=_errors(result),
            ))
            print(f"  accept batch of {size}: {bench.rows[-1].result}", flush=True)
        stack.record_memory(web, role="web master (gunicorn arbiter)", child_role="web worker", where="accept")
    finally:
        stack.stop(web)
        stack.flush_tasks()
