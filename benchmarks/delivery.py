"""Figure 3: delivery throughput with the rate limiter off — queued → handed to
the provider — for 1 and 2 worker processes, to the local SMTP sink and to the
console provider. Also the sink's own ceiling, so the reader can tell whether
the sink, not the service, was the limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from benchmarks.context import Bench
from benchmarks.report import Row, fmt
from benchmarks.stack import BASE_DIR


def sink_ceiling(bench: Bench) -> None:
    params = bench.params
    port = bench.start_sink()
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.smtpsink", "blast", "--port", str(port), "--clients",
         str(params.sink_clients), "--seconds", str(params.sink_seconds)],
        cwd=BASE_DIR, capture_output=True, text=True, timeout=120, check=True,
    )
    ceiling = json.loads(result.stdout)
    bench.sink_ceiling = ceiling["per_second"]
    bench.rows.append(Row(
        figure="3 SMTP sink ceiling",
        setup=(f"the bench's sink: {params.sink_processes} aiosmtpd processes sharing the port (SO_REUSEPORT); "
               f"{params.sink_clients} smtplib client processes, one session each, no service involved"),
        result=f"{fmt(ceiling['per_second'])} messages/s",
        values=ceiling,
        notes="delivery rows far below this were not held back by the sink",
    ))
    print(f"  SMTP sink ceiling: {bench.rows[-1].result}", flush=True)


def steady_rate(times: list[float]) -> float | None:
    """Emails/s between the 10th and the 90th percentile send: leaves out worker
    start-up (the second worker may be ready a moment after the first) and the tail."""
    times = sorted(times)
    if len(times) < 10:
        return None
    low, high = len(times) // 10, len(times) - 1 - len(times) // 10
    span = times[high] - times[low]
    return (high - low) / span if span > 0 else None


def throughput(bench: Bench, *, provider: str, workers: int) -> None:
    params, stack = bench.params, bench.stack
    count = params.delivery_messages
    group = f"bench-deliver-{provider}-{workers}w-{int(time.time())}"
    env = {"EMAIL_PROVIDER": provider, "SEND_RATE_PER_SECOND": "0"}
    if provider == "smtp":
        env.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(bench.start_sink()))
    stack.flush_tasks()
    # The backlog is queued first, so the workers never wait for work.
    bench.submit(count, group=group, provider=provider)
    started = time.time()
    services = stack.start_workers(workers, concurrency=params.worker_concurrency, **env)
    ready = time.time()
    try:
        sent = bench.wait_group_sent(group, count, timeout=60 + count / 5)
        stack.record_workers_memory(services, where=f"delivery {provider} {workers}w")
    finally:
        stack.stop(*services)
        stack.flush_tasks()
    rows = bench.group_times(group)
    times = [row["sent_at"].timestamp() for row in rows if row["sent_at"]]
    rate = steady_rate(times)
    wall = (max(times) - ready) if times else None
    bench.delivery_ceiling = max(bench.delivery_ceiling or 0, rate or 0)
    target = f"SMTP sink (127.0.0.1, {params.sink_processes} processes)" if provider == "smtp" else "console (sends nothing)"
    bench.rows.append(Row(
        figure="3 delivery throughput",
        setup=(f"{workers} × `celery worker --concurrency {params.worker_concurrency}` "
               f"({workers * params.worker_concurrency} pool processes); provider {target}; limiter off; "
               f"{count} emails queued before the workers start"),
        result=f"{fmt(rate)} emails/s",
        values={"provider": provider, "workers": workers, "concurrency": params.worker_concurrency,
                "emails": count, "sent": sent, "steady_per_second": rate,
                "seconds_ready_to_last": wall, "worker_start_seconds": round(ready - started, 2)},
        notes=("steady rate: sends between the 10th and 90th percentile sent_at"
               + ("" if sent == count else f"; only {sent}/{count} sent before the timeout")),
    ))
    print(f"  delivery {provider}, {workers} worker(s): {bench.rows[-1].result}", flush=True)


def run(bench: Bench) -> None:
    sink_ceiling(bench)
    for provider in ("smtp", "console"):
        for workers in bench.params.delivery_workers:
            throughput(bench, provider=provider, workers=workers)
