"""Figure 6: end-to-end latency, accepted → handed to the provider, at half the
configured send rate: the delay a caller sees in normal operation (the queue
is short, the limiter rarely makes anyone wait)."""

from __future__ import annotations

import time

from benchmarks.context import Bench
from benchmarks.report import Row, fmt
from benchmarks.stats import percentile


def run(bench: Bench) -> None:
    params, stack = bench.params, bench.stack
    limit = params.e2e_limit
    rate = limit / 2
    group = f"bench-e2e-{int(time.time())}"
    env = {"EMAIL_PROVIDER": "smtp", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(bench.start_sink()),
           "SEND_RATE_PER_SECOND": str(limit)}
    stack.flush_tasks()
    web = stack.start_web(workers=params.web_workers, **env)
    services = []
    try:
        services = stack.start_workers(1, concurrency=params.worker_concurrency, **env)
        # The first second's emails (warm-up: lazy imports, first connections
        # of each process) are sent but not in the group, so not counted.
        http = bench.loadgen(web.url, concurrency=2, rate=rate, duration=params.e2e_seconds, warmup=1,
                             group=group, first=bench.numbers(100_000))
        sent = bench.wait_group_sent(group, http["emails"], timeout=60)
        stack.record_memory(web, role="web master (gunicorn arbiter)", child_role="web worker", where="latency")
        stack.record_workers_memory(services, where="latency")
    finally:
        stack.stop(*services, web)
        stack.flush_tasks()
    rows = bench.group_times(group)
    latencies = sorted((r["sent_at"] - r["created_at"]).total_seconds() * 1000 for r in rows if r["sent_at"])
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    # Where the time goes: accepted → claimed by a worker (the task's trip through
    # Redis and Celery, the claim) and claimed → the provider's answer (load,
    # limiter, build, send).
    to_claim = sorted((r["sending_started_at"] - r["created_at"]).total_seconds() * 1000
                      for r in rows if r["sent_at"] and r["sending_started_at"])
    to_send = sorted((r["sent_at"] - r["sending_started_at"]).total_seconds() * 1000
                     for r in rows if r["sent_at"] and r["sending_started_at"])
    bench.rows.append(Row(
        figure="6 end-to-end latency",
        setup=(f"{rate:g} emails/s (open loop, POST /api/v1/emails) for {params.e2e_seconds:.0f} s; "
               f"gunicorn --workers {params.web_workers}; 1 × `celery worker --concurrency "
               f"{params.worker_concurrency}`; {bench.sink_label}; SEND_RATE_PER_SECOND={limit}"),
        result=f"accept → handed to provider: p50 {fmt(p50)} ms, p99 {fmt(p99)} ms",
        values={"rate": rate, "limit": limit, "emails": len(rows), "sent": sent, "p50_ms": p50, "p99_ms": p99,
                "accept_to_claim_p50_ms": percentile(to_claim, 0.5), "claim_to_sent_p50_ms": percentile(to_send, 0.5),
                "max_ms": latencies[-1] if latencies else None, "http": http},
        notes=(f"Message.sent_at − created_at over {len(latencies)} emails (max {fmt(latencies[-1] if latencies else None)} ms); "
               "issue 13's target: p50 ≤ 50 ms below the rate, as before or better; "
               f"where the time goes: accepted → claimed by a worker p50 {fmt(percentile(to_claim, 0.5))} ms "
               f"(p99 {fmt(percentile(to_claim, 0.99))}), claimed → provider's answer p50 "
               f"{fmt(percentile(to_send, 0.5))} ms (p99 {fmt(percentile(to_send, 0.99))}); "
               f"HTTP answer p50 {fmt(http['p50_ms'])} ms, p99 {fmt(http['p99_ms'])} ms"
               + ("" if sent == http["emails"] else f"; only {sent}/{http['emails']} sent")
               + f"; {bench.used_note()}"),
    ))
    print(f"  end-to-end: {bench.rows[-1].result}", flush=True)
