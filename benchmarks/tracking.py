"""Figure 9: emailsvc's own open and click tracking at volume.

- *pixel vs /healthz*: the same gunicorn server (the Procfile's `web`, no other
  load) answers GET /healthz, then GET /t/o/<token> (a valid open pixel of a
  tracked email), each for the same seconds from the same closed-loop client
  process (`python -m benchmarks.tracking`, keep-alive connections). The pixel
  checks the token's signature and appends the hit to the Redis stream; target:
  at least half the /healthz rate.
- *hits applied*: `hits_params` hits (opens and clicks of tracked emails marked
  sent) are put on the stream directly (setup), then `tracking.hits.hits_apply`
  runs in this process until the stream is empty (as the task runs it).
  Target: 10,000 hits in at most twice the time figure 5's drain takes for
  10,000 SES events, its own time without moto's (scaled from its row when
  figure 5 ran in the same run).
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit

from benchmarks.context import Bench
from benchmarks.report import Row, fmt
from benchmarks.stack import BASE_DIR
from benchmarks.stats import percentile


def _get_load(url: str, path: str, *, concurrency: int, duration: float, warmup: float) -> dict:
    """Closed loop: `concurrency` threads GET `path` over keep-alive connections."""
    parts = urlsplit(url)
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}
    lock = threading.Lock()
    start = time.monotonic()
    counted_from, end = start + warmup, start + warmup + duration

    def run() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        while (began := time.monotonic()) < end:
            try:
                connection.request("GET", path, headers={"User-Agent": "bench/1.0 (Macintosh)"})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            if began >= counted_from:
                with lock:
                    counts["ok" if ok else "errors"] += 1
                    latencies.append(time.monotonic() - began)
        connection.close()

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    return {
        **counts,
        "requests_per_second": round(counts["ok"] / duration, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2) if latencies else None,
    }


def _loadgen(url: str, path: str, *, concurrency: int, duration: float) -> dict:
    argv = [sys.executable, "-m", "benchmarks.tracking", "--url", url, "--path", path,
            "--concurrency", str(concurrency), "--duration", str(duration)]
    result = subprocess.run(argv, cwd=BASE_DIR, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"tracking loadgen failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


def _tracked_emails(bench: Bench, count: int, group: str) -> list[int]:
    """`count` emails accepted with opens and clicks tracked, marked sent (setup); their pks."""
    from benchmarks.drain import _mark_sent
    from emailsvc.models import Message

    bench.submit(count, group=group, provider="smtp")
    bench.stack.flush_tasks()
    _mark_sent(group)
    Message.objects.filter(group_id=group).update(tracking={"opens": True, "clicks": True, "links": ["https://a.example/"]})
    return list(Message.objects.filter(group_id=group).order_by("pk").values_list("pk", flat=True))


def _drain_seconds_per_event(bench: Bench) -> float | None:
    row = next((row for row in bench.rows if row.figure == "5 event drain"), None)
    if row is None or not row.values.get("applied"):
        return None
    return (row.values["seconds"] - row.values["sqs_seconds"]) / row.values["applied"]


def run(bench: Bench) -> None:
    from core.redisclient import redis_client
    from core.tracking_tokens import CLICK, OPEN, TrackingToken, token_sign
    from emailsvc.models import Recipient
    from tracking.hits import HITS_STREAM, hits_apply

    params, stack = bench.params, bench.stack
    hits = params.tracking_hits
    group = f"bench-tracking-{int(time.time())}"
    message_ids = _tracked_emails(bench, max(1, hits // 5), group)
    recipient_of = dict(Recipient.objects.filter(message_id__in=message_ids).values_list("message_id", "id"))
    redis = redis_client()

    web = stack.start_web(workers=params.web_workers, EMAIL_PROVIDER="console", SEND_RATE_PER_SECOND="0")
    try:
        token = token_sign(TrackingToken(OPEN, message_ids[0], recipient_of[message_ids[0]]))
        for clients in params.tracking_clients:
            rates = {}
            for name, path in (("healthz", "/healthz"), ("pixel", f"/t/o/{token}")):
                rates[name] = _loadgen(web.url, path, concurrency=clients, duration=params.tracking_seconds)
                redis.delete(HITS_STREAM)  # the pixel's hits are not the next part's
            ratio = rates["pixel"]["requests_per_second"] / rates["healthz"]["requests_per_second"]
            bench.rows.append(Row(
                figure="9 tracking, pixel",
                setup=(f"GET /t/o/<token> and GET /healthz on the same gunicorn ({params.web_workers} workers), "
                       f"{clients} keep-alive clients, {params.tracking_seconds:g} s each"),
                result=(f"{fmt(rates['pixel']['requests_per_second'])} pixels/s = {ratio:.2f}× /healthz "
                        f"({fmt(rates['healthz']['requests_per_second'])}/s); pixel p50 {fmt(rates['pixel']['p50_ms'])} ms, "
                        f"p99 {fmt(rates['pixel']['p99_ms'])} ms"),
                values={"clients": clients, "pixel": rates["pixel"], "healthz": rates["healthz"], "ratio": round(ratio, 3)},
                notes="target ≥ 0.5× /healthz; each pixel: signature check + one pipelined Redis round trip "
                      "(XADD, wake flag), no database",
            ))
            print(f"  pixel, {clients} clients: {bench.rows[-1].result}", flush=True)
    finally:
        stack.stop(web)
        stack.flush_tasks()

    redis.delete(HITS_STREAM)
    pipe = redis.pipeline(transaction=False)
    now = time.time()
    for index in range(hits):
        message_id = message_ids[index % len(message_ids)]
        kind = CLICK if index % 5 == 4 else OPEN
        pipe.xadd(HITS_STREAM, {
            "k": kind, "m": message_id, "r": recipient_of[message_id], "l": 0, "id": uuid.uuid4().hex,
            "at": f"{now:.3f}", "ua": "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15", "ip": "198.51.100.7",
            "u": "https://a.example/" if kind == CLICK else "",
        })
        if index % 1000 == 999:
            pipe.execute()
    pipe.execute()
    started = time.perf_counter()
    result = hits_apply(max_seconds=900)
    seconds = time.perf_counter() - started
    per_event = _drain_seconds_per_event(bench)
    drain_10k = per_event * 10_000 if per_event else None
    ours_10k = seconds / max(1, result.applied) * 10_000
    compared = (f"{ours_10k / drain_10k:.2f}× the drain's own time for 10,000 SES events ({drain_10k:.1f} s, figure 5)"
                if drain_10k else "figure 5 did not run: no drain time to compare with")
    bench.rows.append(Row(
        figure="9 tracking, hits applied",
        setup=(f"{hits} buffered hits (80 % opens, 20 % clicks) of {len(message_ids)} tracked emails, applied by "
               f"`hits_apply` in this process, {bench.params.tracking_batch_label()}"),
        result=f"{fmt(result.applied / seconds)} hits/s ({result.applied} in {seconds:.1f} s); {compared}",
        values={"hits": hits, "seconds": round(seconds, 3), "applied": result.applied, "duplicates": result.duplicates,
                "unmatched": result.unmatched, "batches": result.batches, "ten_thousand_seconds": round(ours_10k, 2),
                "drain_ten_thousand_seconds": round(drain_10k, 2) if drain_10k else None},
        notes="target ≤ 2× the drain's time for as many SES events",
    ))
    print(f"  hits: {bench.rows[-1].result}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="closed-loop GET load on one path")
    parser.add_argument("--url", required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=1)
    args = parser.parse_args(argv)
    json.dump(_get_load(args.url, args.path, concurrency=args.concurrency, duration=args.duration, warmup=args.warmup), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
