"""Figure 3: delivery throughput with the rate limiter off — queued → handed to
the provider — on the tables of figure 0.

Rows, all in one run and to one SMTP sink (postfix's smtp-sink when it can be
had, benchmarks/postfix.py):
- the sink's own ceiling (smtplib clients alone, no service);
- the service: a backlog queued first, then `celery worker --concurrency 2`
  (the Procfile's line: two pool processes deliver) sends it; with the CPU per
  email of the worker's processes and of the database's backends, and the
  database transactions per email;
- the SQL statements of one chunk, counted in this process;
- the console provider (builds every message, sends nothing);
- the reference: django-post-office's `send_queued_mail --processes 2`, the
  same number of the same emails, to the same sink.
The SES rows (an endpoint that answers in 30 ms) are in benchmarks/ses.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from benchmarks.context import Bench
from benchmarks.meter import Meter
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
        setup=(f"the bench's sink, {bench.sink_label}; {params.sink_clients} smtplib client processes, one session "
               "each, sending the bench's email as fast as it is taken; no service involved"),
        result=f"{fmt(ceiling['per_second'])} messages/s",
        values={**ceiling, "sink": bench.sink_label},
        notes=("delivery rows far below this were not held back by the sink (the Python clients are most of "
               "this cost)" + (f"; {bench.sink_fallback}" if bench.sink_fallback else "")),
    ))
    print(f"  SMTP sink ceiling: {bench.rows[-1].result}", flush=True)


def steady_rate(times: list[float]) -> float | None:
    """Emails/s between the 10th and the 90th percentile send: leaves out worker
    start-up and the tail."""
    times = sorted(times)
    if len(times) < 10:
        return None
    low, high = len(times) // 10, len(times) - 1 - len(times) // 10
    span = times[high] - times[low]
    return (high - low) / span if span > 0 else None


def per_email(measured: dict, count: int) -> dict:
    """CPU ms and transactions per email from a Meter result."""
    if not count:
        return {}
    out = {"worker_cpu_ms": round(1000 * measured["process_cpu_seconds"] / count, 3)}
    if measured.get("postgres_cpu_seconds") is not None:
        out["postgres_cpu_ms"] = round(1000 * measured["postgres_cpu_seconds"] / count, 3)
        out["cpu_ms"] = round(out["worker_cpu_ms"] + out["postgres_cpu_ms"], 3)
    if measured.get("postgres_backends_cpu_seconds") is not None:
        out["postgres_backends_cpu_ms"] = round(1000 * measured["postgres_backends_cpu_seconds"] / count, 3)
    else:
        out["cpu_ms"] = out["worker_cpu_ms"]
    if measured.get("transactions") is not None:
        out["transactions"] = round(measured["transactions"] / count, 3)
    return out


def cost_text(costs: dict, measured: dict) -> str:
    text = f"CPU per email {costs['cpu_ms']:.2f} ms (worker processes {costs['worker_cpu_ms']:.2f}"
    if "postgres_cpu_ms" in costs:
        text += f" + PostgreSQL server {costs['postgres_cpu_ms']:.2f}"
    text += ")"
    if costs.get("postgres_backends_cpu_ms") is not None:
        text += (f"; of it the bench database's client backends, sampled: {costs['postgres_backends_cpu_ms']:.2f} ms "
                 "(the rest: short-lived processes — parallel query workers, backends of a few ms — the WAL "
                 "writer, and anything else the server did)")
    if "transactions" in costs:
        text += f"; {costs['transactions']:.2f} DB transactions per email"
    return text


def deliver_backlog(bench: Bench, *, provider: str, count: int, env: dict[str, str], label: str,
                    workers: int | None = None, concurrency: int | None = None) -> dict:
    """Queue `count` emails, start the workers, wait until all were handed to the
    provider; the measurements (rate, CPU, transactions) as a dict."""
    params, stack = bench.params, bench.stack
    workers = workers or params.delivery_workers
    concurrency = concurrency or params.worker_concurrency
    group = f"bench-{label}-{int(time.time() * 1000)}"
    bench.retire_due()
    stack.flush_tasks()
    # The backlog is queued first (its delivery tasks published as POST /emails/batch
    # does), so the workers never wait for work.
    bench.submit(count, group=group, provider=provider)
    meter = Meter(stack).start()
    started = time.time()
    services = stack.start_workers(workers, concurrency=concurrency, **env)
    ready = time.time()
    for service in services:
        # From "ready" on: the worker's start-up (imports, forking the pool) is
        # not delivery work, and a deployment pays it once.
        meter.add(service.process.pid, existing=True)
    try:
        sent, polls = bench.wait_sent(group, count, timeout=90 + count / 20, meter=meter)
        meter.stop_sampling()
        stack.record_workers_memory(services, where=f"delivery {label}")
    finally:
        stack.stop(*services)
        stack.flush_tasks()
    measured = meter.result(own_transactions=polls)
    times = [row["sent_at"].timestamp() for row in bench.group_times(group) if row["sent_at"]]
    rate = steady_rate(times)
    return {"group": group, "emails": count, "sent": sent, "steady_per_second": rate, "times": times,
            "workers": workers, "concurrency": concurrency, "workers_started_at": started,
            "worker_start_seconds": round(ready - started, 2),
            "seconds_ready_to_last": round(max(times) - ready, 2) if times else None,
            "measured": measured, "per_email": per_email(measured, sent)}


def send_slots(provider: str) -> int:
    """DELIVERY_SEND_CONCURRENCY as the workers of `provider` get it."""
    from django.conf import settings

    explicit = os.environ.get("DELIVERY_SEND_CONCURRENCY")
    return int(explicit) if explicit else settings.SEND_CONCURRENCY_DEFAULTS[provider]


def _workers_text(result: dict, provider: str) -> str:
    workers, concurrency = result["workers"], result["concurrency"]
    return (f"{workers} × `celery worker --concurrency {concurrency}` ({workers * concurrency} pool processes, "
            f"DELIVERY_SEND_CONCURRENCY={send_slots(provider)} sends in flight each)")


def throughput(bench: Bench, *, provider: str) -> None:
    params = bench.params
    env = {"EMAIL_PROVIDER": provider, "SEND_RATE_PER_SECOND": "0"}
    if provider == "smtp":
        env.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(bench.start_sink()))
    result = deliver_backlog(bench, provider=provider, count=params.delivery_messages, env=env,
                             label=f"deliver-{provider}")
    result.pop("times")
    rate = result["steady_per_second"]
    bench.delivery_ceiling = max(bench.delivery_ceiling or 0, rate or 0)
    if provider == "smtp":
        bench.delivery_smtp_rate = rate
    target = bench.sink_label if provider == "smtp" else "console (builds each message, sends nothing)"
    costs, measured = result["per_email"], result["measured"]
    notes = [
        "steady rate: sends between the 10th and 90th percentile Message.sent_at",
        *(["issue 13's target for this row: ≥ 1,300 emails/s and ≥ 2 × django-post-office (row below)"]
          if provider == "smtp" else []),
        cost_text(costs, measured),
        f"machine busy {measured['machine_busy_cores']} of 2 cores during the run",
        bench.used_note(),
    ]
    if result["sent"] != result["emails"]:
        notes.append(f"only {result['sent']}/{result['emails']} sent before the timeout")
    bench.rows.append(Row(
        figure="3 delivery throughput",
        setup=(f"{_workers_text(result, provider)}; provider {target}; limiter off; "
               f"{result['emails']:,} emails queued before the workers start"),
        result=f"{fmt(rate)} emails/s; {costs.get('cpu_ms', 0):.2f} ms CPU per email",
        values={"provider": provider, **result},
        notes="; ".join(notes),
    ))
    print(f"  delivery {provider}: {bench.rows[-1].result} ({cost_text(costs, measured)})", flush=True)


def statements_per_chunk(bench: Bench) -> None:
    """One chunk (DELIVERY_CHUNK_SIZE emails) delivered in this process (the task's own code,
    `deliver_due_task.apply()`) to the sink, every SQL statement counted with
    Django's CaptureQueriesContext (BEGIN/COMMIT are not statements there)."""
    from django.conf import settings
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from emailsvc.tasks import deliver_due_task

    size = settings.DELIVERY_CHUNK_SIZE
    group = f"bench-sql-{int(time.time() * 1000)}"
    bench.retire_due()
    bench.submit(size, group=group, provider="smtp")
    bench.stack.flush_tasks()
    saved = {name: getattr(settings, name) for name in ("SEND_RATE_PER_SECOND", "EMAIL_HOST", "EMAIL_PORT")}
    settings.SEND_RATE_PER_SECOND, settings.EMAIL_HOST, settings.EMAIL_PORT = 0, "127.0.0.1", bench.start_sink()
    try:
        with CaptureQueriesContext(connection) as captured:
            outcome = deliver_due_task.apply(args=["normal"]).get()
    finally:
        for name, value in saved.items():
            setattr(settings, name, value)
        bench.stack.flush_tasks()  # the follow-up task the full chunk published
    captured_sql = [query["sql"] for query in captured.captured_queries]
    control = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
    statements = [sql for sql in captured_sql if sql.lstrip().split(None, 1)[0].upper() not in control]
    transactions = sum(1 for sql in captured_sql if sql.lstrip().upper().startswith("BEGIN"))
    kinds: dict[str, int] = {}
    for sql in statements:
        word = sql.lstrip().split(None, 1)[0].upper()
        kinds[word] = kinds.get(word, 0) + 1
    sent = outcome.get("sent", 0) or 1
    bench.statements_per_email = len(statements) / sent
    bench.rows.append(Row(
        figure="3 SQL statements per chunk",
        setup=(f"one `emailsvc.deliver` task (`deliver_due_task.apply()`) in the bench's process: a chunk of "
               f"{size} queued emails to the SMTP sink, limiter off"),
        result=(f"{len(statements)} SQL statements for {outcome.get('sent', 0)} emails = "
                f"{len(statements) / sent:.2f} per email; {transactions} explicit transactions"),
        values={"statements": len(statements), "transactions": transactions, "sent": outcome.get("sent", 0),
                "by_kind": kinds, "sql": [sql[:300] for sql in captured_sql]},
        notes=("counted with django.test.utils.CaptureQueriesContext on the task's thread "
               f"({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}; BEGIN/COMMIT not counted as "
               "statements; statements outside a transaction are one each); the worker runs of figure 3 give "
               f"the same from the server's side (DB transactions per email); {bench.used_note()}"),
    ))
    print(f"  SQL: {bench.rows[-1].result}", flush=True)


def post_office_reference(bench: Bench) -> None:
    """django-post-office's `send_queued_mail --processes N`, the same emails, the same sink."""
    params, stack = bench.params, bench.stack
    count, processes = params.delivery_messages, params.post_office_processes
    port = bench.start_sink()
    env = stack.env(DJANGO_SETTINGS_MODULE="benchmarks.post_office_settings", SMTP_HOST="127.0.0.1",
                    SMTP_PORT=str(port))
    try:
        from importlib.metadata import version

        import post_office  # noqa: F401 - only to know it is installed

        package = f"django-post-office {version('django-post-office')}"
    except ImportError:
        bench.rows.append(Row(figure="3 delivery (reference: django-post-office)", setup="", result="not run",
                              notes="django-post-office is not installed: pip install -r benchmarks/requirements.txt"))
        return

    def manage(*args: str, timeout: float = 300) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stderr[-2000:]}")
        return done.stdout

    manage("migrate", "post_office", "--noinput", "-v", "0")
    queued = subprocess.run(
        [sys.executable, "-m", "benchmarks.reference_post_office", "queue", "--count", str(count),
         "--first", str(bench.numbers(count))],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=300,
    )
    if queued.returncode != 0:
        raise RuntimeError(f"post_office queue failed:\n{queued.stderr[-2000:]}")
    meter = Meter(stack).start()
    log_path = stack.work_dir / "post-office-send.log"
    started = time.time()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "send_queued_mail", "--processes", str(processes),
             "--lockfile", str(stack.work_dir / "post_office")],
            cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        meter.add(process.pid)
        try:
            # wait4: the command's own CPU and that of every pool process it forked and reaped.
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if process.returncode is None:
                process.kill()
                process.wait()
    ended = time.time()
    meter.stop_sampling()
    measured = meter.result()
    measured["process_cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 3)  # exact, children included
    measured["process_system_seconds"] = round(usage.ru_stime, 3)
    if process.returncode != 0:
        raise RuntimeError(f"send_queued_mail exited {process.returncode}:\n{log_path.read_text()[-2000:]}")
    arrivals = bench.arrivals(started, ended + 1)
    rate = steady_rate(arrivals)
    costs = per_email(measured, len(arrivals))
    ours = bench.delivery_smtp_rate
    ratio = f"; the service's row above is {ours / rate:.1f} × this" if ours and rate else ""
    bench.rows.append(Row(
        figure="3 delivery (reference: django-post-office)",
        setup=(f"{package}, its defaults (batches of 100, 5 threads per process, a Log row per email); "
               f"`manage.py send_queued_mail --processes {processes}` once, until the queue is empty; "
               f"{count:,} of the same emails queued with `mail.send_many(priority='medium')`; {bench.sink_label}"),
        result=f"{fmt(rate)} emails/s; {costs.get('cpu_ms', 0):.2f} ms CPU per email",
        values={"package": package, "emails": count, "arrived": len(arrivals), "sent": len(arrivals),
                "steady_per_second": rate,
                "command_seconds": round(ended - started, 2), "measured": measured, "per_email": costs},
        notes=(f"steady rate from the sink's arrival times (10th-90th percentile); the whole command took "
               f"{ended - started:.1f} s ({count / (ended - started):,.0f}/s with its start-up){ratio}; "
               f"{cost_text(costs, measured)}; its own tables are fresh (figure 0 grows the service's); "
               "by design it forks a new pool of processes for every batch of 100, each opening its own SMTP "
               "connections (5 threads), and writes a Log row per email"),
    ))
    print(f"  post-office reference: {bench.rows[-1].result}{ratio}", flush=True)


def where_time_goes(bench: Bench, row: Row, profile, *, what: str) -> None:
    """Add to a row's notes where its CPU went: the measured split (worker user
    / kernel, PostgreSQL) and the worker's Python time by library area and by
    service step, from a short py-spy run of the same setup."""
    measured = row.values.get("measured", {})
    sent = row.values.get("sent") or 1
    parts = []
    if measured:
        worker, system = measured["process_cpu_seconds"], measured.get("process_system_seconds") or 0
        postgres = measured.get("postgres_cpu_seconds")
        total = worker + (postgres or 0)
        if total:
            parts.append(f"CPU: worker Python/user {100 * (worker - system) / total:.0f} %, worker kernel "
                         f"(sockets, futexes) {100 * system / total:.0f} %"
                         + (f", PostgreSQL {100 * postgres / total:.0f} %" if postgres is not None else ""))
    if profile is not None and profile.samples:
        parts.append(f"worker Python time ({what}, py-spy, {profile.samples} samples): by library "
                     f"{profile.top('areas', 6)}; by service step {profile.top('steps', 5)}")
        row.values["profile"] = {"areas": profile.areas, "steps": profile.steps, "samples": profile.samples}
    if parts:
        row.notes += "; where the time goes — " + "; ".join(parts) + f" ({sent:,} emails)"


def _profile(bench: Bench, **options):
    """A short py-spy run of the delivery setup (None without py-spy)."""
    from benchmarks.profile import profile_deliver

    try:
        count = 1000 if bench.params.quick else (2000 if options.get("ses") else 4000)
        return profile_deliver(bench, bench.stack.work_dir.parent, quiet=True, count=count, **options)
    except Exception as error:  # the figure's rows stand without it
        print(f"  (profile not taken: {type(error).__name__}: {error})", flush=True)
        return None


def run(bench: Bench) -> None:
    sink_ceiling(bench)
    throughput(bench, provider="smtp")
    smtp_row = bench.rows[-1]
    statements_per_chunk(bench)
    throughput(bench, provider="console")
    console_row = bench.rows[-1]
    post_office_reference(bench)
    where_time_goes(bench, smtp_row, _profile(bench), what="the same setup")
    where_time_goes(bench, console_row, None, what="")
    if bench.rows[-1].figure.startswith("3 delivery (reference"):
        where_time_goes(bench, bench.rows[-1], None, what="")
