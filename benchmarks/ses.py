"""Figure 3, SES rows: delivery through an SES endpoint that answers in 30 ms.

Latency is real with SES (20-50 ms per SendEmail): a worker reaches hundreds
of emails/s only if its sends overlap. The endpoint is moto's SES v2 (the
bench's AWS emulator) behind benchmarks/sesproxy.py, which holds every answer
back by 30 ms; the workers' SES v2 client is pointed at the proxy with
AWS_ENDPOINT_URL_SESV2 (botocore's service-specific endpoint variable).

moto is a Python server that spends a few ms of CPU on every SendEmail: on two
cores it can be the ceiling of these rows, so the run first measures the
endpoint alone with the workers' concurrency (2 processes × 8 threads, each
with its own boto3 client, no service): moto directly, moto behind the proxy,
and the proxy answering SendEmail itself (the "stand-in": 30 ms, no moto).
Then the service delivers a backlog — limiter off through moto, limiter off
through the stand-in, and with SEND_RATE_PER_SECOND=500 — counting what
arrived at the endpoint (the proxy writes each SendEmail's arrival time).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from benchmarks.context import Bench
from benchmarks.delivery import _workers_text, cost_text, deliver_backlog, send_slots, steady_rate
from benchmarks.report import Row, fmt
from benchmarks.stack import BASE_DIR
from benchmarks.stats import most_in_window
from config.devservices import free_port


def _wait_port(port: int, service, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if service.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"SES proxy did not start:\n{service.tail()}") from None
            time.sleep(0.05)


class Endpoints:
    """moto, the +30 ms proxy in front of it, and the stand-in."""

    def __init__(self, bench: Bench):
        import boto3

        self.bench = bench
        stack = bench.stack
        self.moto = stack.start_moto()
        boto3.client("sesv2", endpoint_url=self.moto, region_name="us-east-1", aws_access_key_id="bench",
                     aws_secret_access_key="bench").create_email_identity(EmailIdentity="example.com")
        delay = bench.params.ses_latency_ms
        self.proxy_dir = stack.work_dir / "ses-moto"
        self.standin_dir = stack.work_dir / "ses-standin"
        self.proxy_port, self.standin_port = free_port(), free_port()
        self.proxy = stack.spawn("ses-proxy", [
            sys.executable, "-m", "benchmarks.sesproxy", "serve", "--port", str(self.proxy_port), "--upstream",
            self.moto, "--delay-ms", str(delay), "--arrivals", str(self.proxy_dir)], stack.env())
        self.standin = stack.spawn("ses-standin", [
            sys.executable, "-m", "benchmarks.sesproxy", "serve", "--port", str(self.standin_port), "--answer",
            "--upstream", self.moto, "--delay-ms", str(delay), "--arrivals", str(self.standin_dir)], stack.env())
        _wait_port(self.proxy_port, self.proxy)
        _wait_port(self.standin_port, self.standin)

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def standin_url(self) -> str:
        return f"http://127.0.0.1:{self.standin_port}"

    def close(self) -> None:
        self.bench.stack.stop(self.proxy, self.standin)

    def arrivals(self, directory, start: float, end: float) -> list[float]:
        time.sleep(max(0.0, end + 0.5 - time.time()))  # the proxy flushes every 0.2 s
        times: list[float] = []
        for path in directory.glob("ses-arrivals-*.txt"):
            times += [float(line) for line in path.read_text().split()]
        return sorted(at for at in times if start <= at < end)


def _blast(bench: Bench, endpoint: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.sesproxy", "blast", "--endpoint", endpoint, "--processes",
         str(bench.params.worker_concurrency), "--threads", str(send_slots('ses')),
         "--seconds", str(bench.params.ses_ceiling_seconds)],
        cwd=BASE_DIR, env=bench.stack.env(), capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"SES blast failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)


def ceilings(bench: Bench, endpoints: Endpoints) -> dict:
    params = bench.params
    found = {"moto": _blast(bench, endpoints.moto), "moto_30ms": _blast(bench, endpoints.proxy_url),
             "standin_30ms": _blast(bench, endpoints.standin_url)}
    bench.ses_ceilings = {name: value["per_second"] for name, value in found.items()}
    delay = params.ses_latency_ms
    bench.rows.append(Row(
        figure="3 SES endpoint ceiling",
        setup=(f"{params.worker_concurrency} client processes × {send_slots('ses')} threads "
               "(the workers' send slots), each thread its own boto3 `sesv2` client sending the bench's email "
               "(SendEmail, raw MIME) as fast as answers come; no service involved"),
        result=(f"moto alone {fmt(found['moto']['per_second'])}/s; moto + {delay:g} ms proxy "
                f"{fmt(found['moto_30ms']['per_second'])}/s; stand-in ({delay:g} ms, no moto) "
                f"{fmt(found['standin_30ms']['per_second'])}/s"),
        values=found,
        notes=(f"the most the rows below could reach with this concurrency on this machine; the stand-in's limit "
               f"is the clients' own CPU (boto3) and {send_slots('ses') * params.worker_concurrency}"
               f" requests in flight / {delay:g} ms = "
               f"{send_slots('ses') * params.worker_concurrency / delay * 1000:,.0f}/s"),
    ))
    print(f"  SES endpoint ceiling: {bench.rows[-1].result}", flush=True)
    return found


def delivery(bench: Bench, endpoints: Endpoints, *, standin: bool, rate_limit: int = 0) -> float | None:
    params = bench.params
    url, directory = ((endpoints.standin_url, endpoints.standin_dir) if standin
                      else (endpoints.proxy_url, endpoints.proxy_dir))
    env = {"EMAIL_PROVIDER": "ses", "SEND_RATE_PER_SECOND": str(rate_limit), "AWS_ENDPOINT_URL": endpoints.moto,
           "AWS_ENDPOINT_URL_SESV2": url}
    label = f"ses-{'standin' if standin else 'moto'}-{rate_limit or 'off'}"
    result = deliver_backlog(bench, provider="ses", count=params.ses_messages, env=env, label=label)
    times = result.pop("times")
    arrivals = endpoints.arrivals(directory, result["workers_started_at"], max(times) + 1 if times else time.time())
    rate = result["steady_per_second"]
    arrived_rate = steady_rate(arrivals)
    peak = most_in_window(arrivals, 1.0)
    costs, measured = result["per_email"], result["measured"]
    endpoint = (f"stand-in: the proxy answers SendEmail itself after {params.ses_latency_ms:g} ms (no moto)"
                if standin else f"moto SES v2 behind a proxy adding {params.ses_latency_ms:g} ms to every answer")
    limiter = f"SEND_RATE_PER_SECOND={rate_limit}, burst 1" if rate_limit else "limiter off"
    ceiling = bench.ses_ceilings.get("standin_30ms" if standin else "moto_30ms")
    notes = ["steady rate: sends between the 10th and 90th percentile Message.sent_at",
             "issue 13's target: ≥ 500 emails/s" + (", the limiter holding its rate" if rate_limit else ""),
             cost_text(costs, measured), f"machine busy {measured['machine_busy_cores']} of 2 cores"]
    if ceiling:
        notes.append(f"the endpoint's ceiling with this concurrency: {fmt(ceiling)}/s (row above)")
    notes.append(bench.used_note())
    if result["sent"] != result["emails"]:
        notes.append(f"only {result['sent']}/{result['emails']} sent before the timeout")
    if rate_limit:
        text = (f"{fmt(arrived_rate)}/s arrived = {(arrived_rate or 0) / rate_limit:.3f} × configured; "
                f"most in any 1 s: {peak} (limit {rate_limit + 1})")
        notes.insert(0, f"arrivals at the endpoint (the proxy's clock), 10th-90th percentile; sent_at rate {fmt(rate)}/s")
    else:
        text = f"{fmt(rate)} emails/s; {costs.get('cpu_ms', 0):.2f} ms CPU per email"
    bench.rows.append(Row(
        figure="3 delivery via SES" + (f" + limiter {rate_limit}/s" if rate_limit else ""),
        setup=f"{_workers_text(result, 'ses')}; {endpoint}; {limiter}; {result['emails']:,} emails queued first",
        result=text,
        values={"endpoint": "standin" if standin else "moto", "rate_limit": rate_limit, **result,
                "arrived": len(arrivals), "arrived_steady_per_second": arrived_rate, "max_in_any_1s": peak},
        notes="; ".join(notes),
    ))
    print(f"  {bench.rows[-1].figure} ({'stand-in' if standin else 'moto'}): {text}", flush=True)
    return rate if not rate_limit else arrived_rate


def run(bench: Bench) -> None:
    params = bench.params
    endpoints = Endpoints(bench)
    try:
        ceilings(bench, endpoints)
        through_moto = delivery(bench, endpoints, standin=False)
        moto_row = bench.rows[-1]
        through_standin = delivery(bench, endpoints, standin=True)
        standin_row = bench.rows[-1]
        limit = params.ses_rate_limit
        # The limiter row where the endpoint can take the rate: moto when it
        # went past the limit unlimited, else (also) the stand-in.
        delivery(bench, endpoints, standin=False, rate_limit=limit)
        if (through_moto or 0) < 1.05 * limit and (through_standin or 0) >= 1.05 * limit:
            delivery(bench, endpoints, standin=True, rate_limit=limit)
        from benchmarks.delivery import _profile, where_time_goes

        profile = _profile(bench, ses=True, endpoints=endpoints)
        where_time_goes(bench, standin_row, profile, what="the stand-in setup")
        where_time_goes(bench, moto_row, profile, what="the stand-in setup: the worker's side is the same")
    finally:
        endpoints.close()
