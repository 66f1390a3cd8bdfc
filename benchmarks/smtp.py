"""Figure 1, SMTP row: how fast the `smtp` process accepts emails — 4 SMTP
clients, one session each, 1,000 small emails each — beside the single-accept
API rows of the same run.

The `smtp` process runs as in the Procfile, with EMAIL_PROVIDER=console and no
worker, as the API rows do: accepting never talks to the provider.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time

from benchmarks.accept import _cpu_note
from benchmarks.context import Bench
from benchmarks.meter import Meter
from benchmarks.report import Row, fmt
from benchmarks.stack import BASE_DIR
from config.devservices import free_port, procfile_command


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        return sock.recv(4).startswith(b"220")
    return False


def run(bench: Bench) -> None:
    params, stack = bench.params, bench.stack
    port = free_port()
    service = stack.spawn(
        "smtp", ["/bin/sh", "-c", f"exec {procfile_command('smtp')}"],
        stack.env(SMTP_INGRESS_BIND="127.0.0.1", SMTP_INGRESS_PORT=str(port), EMAIL_PROVIDER="console",
                  SMTP_INGRESS_PROCESSES=str(params.web_workers)),
    )
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            if service.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the smtp process did not start:\n{service.tail()}")
            time.sleep(0.1)
        stack.flush_tasks()
        argv = [
            sys.executable, "-m", "benchmarks.smtpload", "--port", str(port), "--key", bench.api_key,
            "--clients", str(params.smtp_clients), "--messages", str(params.smtp_messages),
            "--first", str(bench.numbers(params.smtp_clients * params.smtp_messages) + 50_000_000),
        ]
        meter = Meter(stack).start(service.process.pid)
        done = subprocess.run(argv, cwd=BASE_DIR, capture_output=True, text=True, timeout=900)
        meter.stop_sampling()
        if done.returncode != 0:
            raise RuntimeError(f"smtpload failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout)
        cpu, cpu_values = _cpu_note(meter.result(), result["accepted"])
        cpu = cpu.replace("in gunicorn", "in the smtp process")
        single = [row for row in bench.rows if row.figure == "1 accept, single"]
        beside = ""
        if single:
            best = max(single, key=lambda row: row.values.get("requests_per_second") or 0)
            api_rate = best.values.get("requests_per_second") or 0
            if api_rate:
                beside = (f"{result['emails_per_second'] / api_rate:.2f}× the best single-accept API row of this run "
                          f"({fmt(api_rate)} emails/s, {best.values.get('clients')} clients)")
        errors = ", ".join(f"{k}×{v}" for k, v in result["errors"].items())
        bench.rows.append(Row(
            figure="1 accept, smtp",
            setup=(f"SMTP submission (the Procfile's smtp process, {params.web_workers} processes as the web's workers); "
                   f"{params.smtp_clients} smtplib "
                   f"clients, one session each, {params.smtp_messages} emails each (MAIL, RCPT, DATA; 250 after commit); "
                   "console provider, no worker"),
            result=(f"{fmt(result['emails_per_second'])} emails/s; p50 {fmt(result['p50_ms'])} ms, "
                    f"p99 {fmt(result['p99_ms'])} ms per DATA"),
            values={**result, **cpu_values},
            notes="; ".join(part for part in (beside, cpu, f"errors: {errors}" if errors else "") if part),
        ))
        print(f"  accept smtp, {params.smtp_clients} clients: {bench.rows[-1].result} {beside}", flush=True)
    finally:
        stack.stop(service)
        stack.flush_tasks()
