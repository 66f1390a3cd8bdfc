"""HTTP load generator for the API, run as its own process so that its CPU use
is not hidden inside the bench's (it still shares the machine's cores).

    python -m benchmarks.loadgen --url http://127.0.0.1:8000 --key KEY \
        --concurrency 4 --duration 10 [--warmup 1] [--batch 100] [--rate 7 --group g]

Closed loop (default): `concurrency` threads, each sending its next request as
soon as the previous one was answered, over one http.client connection that it
re-opens whenever the server closes it (gunicorn's sync workers close after every
response). Only requests that *start* after the warm-up count.
Open loop (--rate): request k is sent at start + k/rate whatever happened
to the earlier ones, for warm-up + duration seconds (for latency at a set
load); the warm-up requests carry no --group and are not counted.

Prints one JSON object: requests, ok, emails, errors by status, elapsed window,
and latency percentiles in milliseconds.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import sys
import threading
import time
from urllib.parse import urlsplit

from benchmarks.payload import email_payload
from benchmarks.stats import percentile


class Load:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        parts = urlsplit(args.url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.path = "/api/v1/emails/batch" if args.batch else "/api/v1/emails"
        self.headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"}
        self.numbers = itertools.count(args.first)  # a new recipient for every email
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.ok = self.emails = self.requests = 0
        self.sent_total = 0  # emails in every request, warm-up included (what the server's CPU was spent on)
        self.errors: dict[str, int] = {}

    def body(self, counted: bool) -> tuple[bytes, int]:
        with self.lock:
            if self.args.batch:
                numbers = [next(self.numbers) for _ in range(self.args.batch)]
            else:
                numbers = [next(self.numbers)]
        group = self.args.group if counted else None
        emails = [email_payload(n, group_id=group) for n in numbers]
        document = {"emails": emails} if self.args.batch else emails[0]
        return json.dumps(document).encode(), len(emails)

    def send(self, connection: http.client.HTTPConnection, counted: bool) -> http.client.HTTPConnection:
        body, emails = self.body(counted)
        started = time.perf_counter()
        try:
            connection.request("POST", self.path, body=body, headers=self.headers)
            response = connection.getresponse()
            payload = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            status, payload = type(error).__name__, b""
            connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
        elapsed = time.perf_counter() - started
        with self.lock:
            self.sent_total += emails
        if not counted:
            return connection
        accepted = 0
        if status in (200, 202):
            accepted = emails
            if self.args.batch:  # a batch answers 200 even when some items failed
                accepted = len(json.loads(payload).get("data", []))
        with self.lock:
            self.requests += 1
            self.latencies.append(elapsed)
            if accepted == emails:
                self.ok += 1
            else:
                key = str(status) if accepted == 0 else "partial"
                self.errors[key] = self.errors.get(key, 0) + 1
            self.emails += accepted
        return connection

    def closed_loop(self) -> dict:
        start = time.monotonic()
        measure_from = start + self.args.warmup
        stop_at = measure_from + self.args.duration

        def run() -> None:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
            while (now := time.monotonic()) < stop_at:
                connection = self.send(connection, counted=now >= measure_from)
            connection.close()

        self._threads(run)
        # Requests that started in the window and finished a little after it
        # count; the window ends when the last of them finished.
        return self.report(time.monotonic() - measure_from)

    def open_loop(self) -> dict:
        warmup = int(self.args.rate * self.args.warmup)
        total = warmup + int(self.args.rate * self.args.duration)
        start = time.monotonic() + 0.2
        slots = iter(range(total))

        def run() -> None:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
            while True:
                with self.lock:
                    k = next(slots, None)
                if k is None:
                    break
                delay = start + k / self.args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                connection = self.send(connection, counted=k >= warmup)
            connection.close()

        self._threads(run)
        return self.report(time.monotonic() - start - self.args.warmup)

    def _threads(self, target) -> None:
        threads = [threading.Thread(target=target, daemon=True) for _ in range(self.args.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def report(self, elapsed: float) -> dict:
        latencies = sorted(self.latencies)
        ms = lambda value: None if value is None else round(value * 1000, 2)  # noqa: E731
        return {
            "requests": self.requests,
            "ok": self.ok,
            "emails": self.emails,
            "emails_total": self.sent_total,
            "errors": self.errors,
            "elapsed": round(elapsed, 3),
            "requests_per_second": round(self.ok / elapsed, 1) if elapsed > 0 else None,
            "emails_per_second": round(self.emails / elapsed, 1) if elapsed > 0 else None,
            "p50_ms": ms(percentile(latencies, 0.50)),
            "p90_ms": ms(percentile(latencies, 0.90)),
            "p99_ms": ms(percentile(latencies, 0.99)),
            "max_ms": ms(latencies[-1] if latencies else None),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="base URL of the web process")
    parser.add_argument("--key", required=True, help="API key with the sending permission")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1, help="seconds sent but not counted")
    parser.add_argument("--batch", type=int, default=0, help="emails per POST /emails/batch (0: POST /emails)")
    parser.add_argument("--rate", type=float, default=0, help="open loop: requests per second")
    parser.add_argument("--group", default=None, help="group_id of every email")
    parser.add_argument("--first", type=int, default=0, help="number of the first email (unique recipients)")
    args = parser.parse_args(argv)
    load = Load(args)
    result = load.open_loop() if args.rate else load.closed_loop()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
