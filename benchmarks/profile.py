"""`--profile`: run one path of the service under a profiler and write the
profile to benchmarks/results/profile-<target>.*.

Targets (each a smaller load than the figure it explains):
- deliver:     the default: figure 3's setup (`celery worker --concurrency 2`,
               limiter off, a backlog, the SMTP sink) under py-spy, every
               process and thread (the send slots are threads);
- deliver-ses: the same through the SES stand-in (30 ms answers, no moto);
- drain:       `events_drain` in this process over SNS-wrapped SES events on
               moto's SQS (figure 5), under pyinstrument; then the same
               messages again (profile-drain-replay: nothing to apply);
- accept:      POST /api/v1/emails through Django's test client in this
               process (figure 1, without gunicorn's own small share), under
               pyinstrument.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from dataclasses import dataclass
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
    from django.db import connection

    from benchmarks import drain

    profiler = _profiler()
    prepared = drain.prepare(bench, 300 if bench.params.quick else 1000)
    statements = _StatementClock()
    with connection.execute_wrapper(statements):
        drain.drain_all(prepared, profiler=profiler)  # profiles the draining, not the putting
    _write(profiler.last_session, results_dir, "drain")
    _statements_write(statements, results_dir, "drain", len(prepared.bodies))
    # The same messages again: nothing to apply. cProfile, every function shown
    # (what a replay costs is spread thin over library calls pyinstrument folds away).
    replay = _CProfile()
    drain.drain_all(prepared, profiler=replay)
    replay.write(results_dir / "profile-drain-replay.txt", f"profile drain replay: {len(prepared.bodies)} events again")


class _CProfile:
    """cProfile with the start()/stop() of pyinstrument's profiler, summed over its runs."""

    def __init__(self):
        import cProfile

        self.profile = cProfile.Profile()

    def start(self):
        self.profile.enable()

    def stop(self):
        self.profile.disable()

    def write(self, path: Path, title: str) -> None:
        import io
        import pstats

        text = io.StringIO()
        stats = pstats.Stats(self.profile, stream=text)
        text.write(f"{title}\n\nBy time inside the function itself:\n")
        stats.sort_stats("tottime").print_stats(30)
        text.write("\nBy time including what it calls:\n")
        stats.sort_stats("cumulative").print_stats(40)
        text.write("\nThe service's own functions and its Redis, Celery and database clients, by time including what they call:\n")
        stats.sort_stats("cumulative").print_stats(r"(tracking|emailsvc|redis|kombu|celery|psycopg)/", 40)
        path.write_text(text.getvalue())
        print(text.getvalue())


class _StatementClock:
    """Wall time per kind of SQL statement (its first words), for Django's execute_wrapper."""

    def __init__(self):
        self.kinds: dict[str, list[float]] = {}

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            kind = re.sub(r'"s\d+_x\d+"', '"…"', " ".join(sql.split()[:8])[:90])  # one line for every savepoint
            entry = self.kinds.setdefault(kind, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - started


def _statements_write(clock: _StatementClock, results_dir: Path, target: str, events: int) -> None:
    """profile-<target>-sql.txt: statements by total time (the profiler's own
    cost is not in these: they are the database's answer times)."""
    total = sum(seconds for _, seconds in clock.kinds.values())
    lines = [f"SQL statements while draining {events} events: {total * 1000:.0f} ms in all, "
             f"{total * 1000 / max(1, events):.3f} ms per event", "", "   ms  count  statement"]
    for kind, (count, seconds) in sorted(clock.kinds.items(), key=lambda item: -item[1][1]):
        lines.append(f"{seconds * 1000:6.0f} {count:6d}  {kind}")
    text = "\n".join(lines) + "\n"
    (results_dir / f"profile-{target}-sql.txt").write_text(text)
    print(text)


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


# What a stack's frames say about where a sample's time went, first match wins
# (checked from the innermost frame outwards).
_AREAS = [
    ("PostgreSQL client (psycopg)", ("psycopg/",)),
    ("Django ORM / SQL compiler", ("django/db/",)),
    ("Redis client (limiter, journal, broker)", ("redis/",)),
    ("SMTP session (smtplib, socket)", ("smtplib.py", "ssl.py", "socket.py")),
    ("boto3 / botocore / urllib3 (SES call)", ("botocore/", "boto3/", "urllib3/")),
    ("MIME build (email package, Django mail, anymail)", ("email/", "django/core/mail", "anymail/")),
    ("JSON", ("json/",)),
    ("Celery / kombu / billiard (task machinery)", ("celery/", "kombu/", "billiard/", "vine/", "amqp/")),
    ("thread pool hand-off", ("concurrent/futures", "threading.py", "queue.py")),
    ("logging", ("logging/",)),
    ("service code (emailsvc)", ("emailsvc/",)),
]


STARTUP = ("<frozen importlib", "django/__init__.py", "autodiscover", "process_initializer")
STARTUP_AREA = "start-up (imports, forking the pool)"


def _startup(stack: str) -> bool:
    # A pool process's every stack descends from the parent's
    # _create_worker_process (it forked there): only the parent's own part is start-up.
    return (any(marker in stack for marker in STARTUP)
            or ("_create_worker_process" in stack and "BaseProcess._bootstrap" not in stack))


def _area(stack: str) -> str:
    if _startup(stack):
        return STARTUP_AREA
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, needles in _AREAS:
            if any(needle in frame for needle in needles):
                return name
    return "other (interpreter)"


def _step(stack: str) -> str:
    """The innermost service frame of a stack (what the service was doing), or
    what ran outside the service's code."""
    if _startup(stack):
        return STARTUP_AREA
    for frame in reversed(stack.split(";")):
        if "emailsvc/" in frame or "tracking/" in frame:
            return frame
    if "celery/" in stack or "kombu/" in stack or "billiard/" in stack:
        return "Celery / kombu outside the task (consumer, events, acks)"
    return "other (interpreter, idle loops)"


@dataclass
class Profile:
    text: str
    samples: int  # after start-up
    areas: dict[str, float]  # share of the samples after start-up, by library area
    steps: dict[str, float]  # the same by innermost service frame

    def top(self, which: str = "areas", count: int = 6) -> str:
        shares = getattr(self, which)
        return ", ".join(f"{name.split(' (')[0] if which == 'areas' else name} {100 * share:.0f} %"
                         for name, share in sorted(shares.items(), key=lambda item: -item[1])[:count])


def summarize_collapsed(path: Path, title: str) -> Profile:
    """A report of py-spy's raw (collapsed) stacks: samples by library area, by
    service step, the service's frames inclusive, and the functions with the
    most samples of their own."""
    areas: dict[str, int] = {}
    steps: dict[str, int] = {}
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines() if path.exists() else []:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        areas[_area(stack)] = areas.get(_area(stack), 0) + samples
        steps[_step(stack)] = steps.get(_step(stack), 0) + samples
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + samples
        for frame in set(frames):
            if "emailsvc/" in frame or "celery/app/trace" in frame:
                inclusive[frame] = inclusive.get(frame, 0) + samples
    if not total:
        return Profile(text=f"{title}\n\nno samples\n", samples=0, areas={}, steps={})
    startup = areas.pop(STARTUP_AREA, 0)
    steps.pop(STARTUP_AREA, None)
    running = max(1, total - startup)

    def table(counts: dict[str, int], limit: int, base: int) -> list[str]:
        return [f"{100 * n / base:6.1f} %  {n:7d}  {name}"
                for name, n in sorted(counts.items(), key=lambda item: -item[1])[:limit]]

    lines = [title, "", f"{total} samples of the thread holding the GIL (py-spy --gil; every process); "
             f"{startup} in start-up (imports, forking the pool), left out below; shares of the other {running}", "",
             "By library area (innermost recognised frame):", *table(areas, 20, running), "",
             "By service step (innermost emailsvc frame):", *table(steps, 25, running), "",
             "Service and task frames, inclusive (time in them and everything they call; start-up included):",
             *table(inclusive, 30, total), "",
             "Functions with the most samples of their own (top 40; start-up included):", *table(own, 40, total), ""]
    return Profile(text="\n".join(lines), samples=running,
                   areas={k: v / running for k, v in areas.items()}, steps={k: v / running for k, v in steps.items()})


def profile_deliver(bench: Bench, results_dir: Path, *, ses: bool = False, count: int | None = None,
                    endpoints=None, quiet: bool = False) -> Profile | None:
    """The delivery figure's setup (`celery worker --concurrency 2`, limiter off,
    the SMTP sink — or with `ses`, the SES stand-in answering in 30 ms — a
    backlog queued first) under py-spy, which samples every process and thread
    (the send slots are threads: a profiler of the main thread alone would miss
    them). Writes profile-<target>.txt (summary) and
    profile-<target>.collapsed.txt (the stacks; speedscope.app opens them)."""
    import shutil

    stack = bench.stack
    target = "deliver-ses" if ses else "deliver"
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        if quiet:
            return None
        raise SystemExit("py-spy is not installed: pip install -r benchmarks/requirements.txt "
                         "(`make bench-profile` does it)")
    count = count or (2000 if bench.params.quick else 6000)
    group = f"bench-profile-{int(time.time())}"
    bench.retire_due()
    stack.flush_tasks()
    own_endpoints = ses and endpoints is None
    if ses:
        from benchmarks.ses import Endpoints

        endpoints = endpoints or Endpoints(bench)
        env = {"EMAIL_PROVIDER": "ses", "SEND_RATE_PER_SECOND": "0", "AWS_ENDPOINT_URL": endpoints.moto,
               "AWS_ENDPOINT_URL_SESV2": endpoints.standin_url}
    else:
        env = {"EMAIL_PROVIDER": "smtp", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(bench.start_sink()),
               "SEND_RATE_PER_SECOND": "0"}
    bench.submit(count, group=group, provider="ses" if ses else "smtp")
    raw = results_dir / f"profile-{target}.collapsed.txt"
    started = time.monotonic()
    worker = stack.spawn(
        "profiled-worker",
        [spy, "record", "--subprocesses", "--gil", "--rate", "250", "--format", "raw", "--nolineno",
         "--output", str(raw), "--", sys.executable, "-m", "celery", "-A", "config", "worker", "--queues", ALL_QUEUES,
         "--concurrency", str(bench.params.worker_concurrency), "--loglevel", "INFO",
         "--hostname", "bench-profile@%h"],
        stack.env(**env),
    )
    try:
        sent = bench.wait_group_sent(group, count, timeout=120 + count / 5)
        seconds = time.monotonic() - started
        if not quiet:
            print(f"  {sent}/{count} delivered by the profiled worker in {seconds:.1f} s (start-up included)",
                  flush=True)
        # SIGINT to py-spy: it stops the worker and writes what it sampled.
        worker.process.send_signal(signal.SIGINT)
        worker.process.wait(timeout=60)
    finally:
        stack.stop(worker)
        stack.flush_tasks()
        if own_endpoints:
            endpoints.close()
    provider = "the SES stand-in (30 ms, no moto)" if ses else bench.sink_label
    title = (f"profile {target}: {sent} emails, `celery worker --concurrency {bench.params.worker_concurrency}` "
             f"under py-spy (250 Hz, samples of the thread holding the GIL: Python CPU time), {provider}, "
             "limiter off; start-up included")
    profile = summarize_collapsed(raw, title)
    text = results_dir / f"profile-{target}.txt"
    text.write_text(profile.text)
    if not quiet:
        print(profile.text)
        print(f"written: {text} and {raw}")
    return profile


TARGETS = {"drain": profile_drain, "deliver": profile_deliver, "accept": profile_accept,
           "deliver-ses": lambda bench, results_dir: profile_deliver(bench, results_dir, ses=True)}


def run(bench: Bench, target: str, results_dir: Path) -> None:
    target = DEFAULT_TARGET if target == "default" else target
    if target not in TARGETS:
        raise SystemExit(f"--profile: choose one of {', '.join(TARGETS)}")
    print(f"== profile {target}", flush=True)
    TARGETS[target](bench, results_dir)

