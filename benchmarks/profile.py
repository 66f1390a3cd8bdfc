"""`--profile`: run one path of the service under pyinstrument and write the
profile to benchmarks/results/profile-<target>.{html,txt}.

Targets (each a smaller load than the figure it explains):
- deliver: the default, the slowest path per email in our runs (figure 3: about
           20 ms of CPU per email, against ~7 ms to accept one): a real
           `celery -A config worker --pool solo` under pyinstrument, delivering
           a backlog to the SMTP sink; the solo pool runs tasks in the worker's
           main thread, so one profile holds Celery's own work and the task's;
- drain:   `events_drain` in this process over SNS-wrapped SES events on moto's
           SQS (figure 5);
- accept:  POST /api/v1/emails through Django's test client in this process
           (figure 1, without gunicorn's own small share).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from benchmarks.context import Bench
from benchmarks.payload import email_payload
from benchmarks.stack import ALL_QUEUES

DEFAULT_TARGET = "deliver"


def _profiler():
    try:
        from pyinstrument import Profiler
    except ImportError:
        raise SystemExit("pyinstrument is not installed: pip install -r benchmarks/requirements.txt "
                         "(`make bench-profile` does it)") from None
    return Profiler(interval=0.001)


def _write(session, results_dir: Path, target: str) -> None:
    """profile-<target>.html (interactive) and .txt: the call tree, then the
    functions with the most time of their own."""
    from pyinstrument.renderers import ConsoleRenderer, HTMLRenderer

    html, text = results_dir / f"profile-{target}.html", results_dir / f"profile-{target}.txt"
    html.write_text(HTMLRenderer().render(session))
    tree = ConsoleRenderer(unicode=True, color=False).render(session)
    flat = ConsoleRenderer(unicode=True, color=False, flat=True).render(session)
    top = [line for line in flat.splitlines() if line[:1].isdigit()][:40]  # no banner
    report = f"{tree}\nFunctions with the most time of their own (top 40):\n\n" + "\n".join(top) + "\n"
    text.write_text(report)
    print(report)
    print(f"written: {html} and {text}")


def profile_drain(bench: Bench, results_dir: Path) -> None:
    from benchmarks import drain

    profiler = _profiler()
    prepared = drain.prepare(bench, 300 if bench.params.quick else 1000)
    drain.drain_all(prepared, profiler=profiler)  # profiles the draining, not the putting
    _write(profiler.last_session, results_dir, "drain")


def profile_accept(bench: Bench, results_dir: Path) -> None:
    from django.test import Client

    count = 300 if bench.params.quick else 1000
    client = Client(HTTP_AUTHORIZATION=f"Bearer {bench.api_key}")
    first = bench.numbers(count)
    # Warm up (imports, first queries) outside the profile.
    client.post("/api/v1/emails", data=email_payload(first), content_type="application/json")
    profiler = _profiler()
    profiler.start()
    for n in range(first + 1, first + count):
        response = client.post("/api/v1/emails", data=email_payload(n), content_type="application/json")
        if response.status_code != 202:
            raise RuntimeError(f"POST /api/v1/emails answered {response.status_code}: {response.content[:300]!r}")
    profiler.stop()
    bench.stack.flush_tasks()
    _write(profiler.last_session, results_dir, "accept")


def profile_deliver(bench: Bench, results_dir: Path) -> None:
    stack = bench.stack
    count = 300 if bench.params.quick else 1000
    group = f"bench-profile-{int(time.time())}"
    stack.flush_tasks()
    bench.submit(count, group=group, provider="smtp")
    session = results_dir / "run.tmp" / "deliver.pyisession"
    env = {"EMAIL_PROVIDER": "smtp", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(bench.start_sink()),
           "SEND_RATE_PER_SECOND": "0"}
    worker = stack.spawn(
        "profiled-worker",
        [sys.executable, "-m", "pyinstrument", "--interval", "0.001", "-r", "session", "-o", str(session),
         "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--queues", ALL_QUEUES, "--loglevel", "INFO",
         "--hostname", "bench-profile@%h"],
        stack.env(**env),
    )
    try:
        sent = bench.wait_group_sent(group, count, timeout=120 + count / 5)
        print(f"  {sent}/{count} delivered by the profiled worker", flush=True)
        # SIGINT: pyinstrument sees the program end and writes its session.
        worker.process.send_signal(signal.SIGINT)
        worker.process.wait(timeout=60)
    finally:
        stack.stop(worker)
        stack.flush_tasks()
    from pyinstrument.session import Session

    _write(Session.load(str(session)), results_dir, "deliver")


TARGETS = {"drain": profile_drain, "deliver": profile_deliver, "accept": profile_accept}


def run(bench: Bench, target: str, results_dir: Path) -> None:
    target = DEFAULT_TARGET if target == "default" else target
    if target not in TARGETS:
        raise SystemExit(f"--profile: choose one of {', '.join(TARGETS)}")
    print(f"== profile {target}", flush=True)
    TARGETS[target](bench, results_dir)

