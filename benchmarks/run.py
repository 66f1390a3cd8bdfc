"""`make bench`: measure emailsvc on this machine and write benchmarks/results/latest.{md,json}.

    python -m benchmarks.run [--quick] [--only NAME ...] [--used N] [--keep] [--profile [TARGET]]
    python -m benchmarks.run --fresh-clone

Starts what it needs (database, Redis, gunicorn, celery workers, an SMTP sink,
moto), grows the database to production-like tables (figure 0), runs each
figure, stops everything (also on Ctrl-C) and prints the table. Figures:
accept (1, 2), delivery (3), ses (3, through an SES endpoint answering in
30 ms), ratelimit (4), drain (5), tracking (9: the open pixel beside /healthz, buffered hits
applied), latency (6), reads (8: the list, stats and
group APIs on a million more emails); memory (7) is read from the processes
the other figures ran.
Speed is reported, never asserted: the exit code is 0 unless a figure failed to run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import accept, delivery, drain, latency, ratelimit, reads, ses, smtp, tables, tracking
from benchmarks.context import Bench, Params
from benchmarks.report import Row, write
from benchmarks.stack import BASE_DIR, Stack

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Logs, the SQLite file and sink arrival files of the current run; removed at
# the end unless --keep (the *.tmp name is git-ignored).
WORK_DIR = RESULTS_DIR / "run.tmp"

FIGURES = {
    "accept": accept.run,
    "smtp": smtp.run,  # beside accept's single rows
    "delivery": delivery.run,  # before ratelimit: it sizes the rate-limit backlogs
    "ses": ses.run,
    "ratelimit": ratelimit.run,
    "drain": drain.run,
    "tracking": tracking.run,  # after drain: its hits are compared with the drain's events
    "latency": latency.run,
    "reads": reads.run,  # last: it adds a million emails to the tables
}


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BASE_DIR, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=BASE_DIR,
                               capture_output=True, text=True).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    memory = ""
    try:
        with open("/proc/meminfo") as handle:
            kib = int(handle.readline().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def memory_rows(bench: Bench) -> None:
    memory = bench.stack.memory
    if not memory:
        return

    def show(role: str) -> str:
        kib, where = memory.get(role, (0, ""))
        return f"{kib / 1024:.0f} MiB ({where})" if kib else "–"

    setup = "peak RSS (VmHWM from /proc) of every process of that kind the run started, read just before it was stopped"
    if "web worker" in memory or "web master (gunicorn arbiter)" in memory:
        bench.rows.append(Row(
            figure="7 memory, web",
            setup=setup,
            result=f"gunicorn worker {show('web worker')}; arbiter {show('web master (gunicorn arbiter)')}",
            values={role: kib for role, (kib, _) in memory.items() if role.startswith("web")},
            notes="KiB in latest.json",
        ))
    if any(role.startswith("celery") for role in memory):
        bench.rows.append(Row(
            figure="7 memory, worker",
            setup=setup,
            result=(f"celery pool process {show('celery pool process')}; "
                    f"main process {show('celery worker (main process)')}"),
            values={role: kib for role, (kib, _) in memory.items() if role.startswith("celery")},
            notes="KiB in latest.json",
        ))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a ~4-minute smoke run with smaller loads")
    parser.add_argument("--only", nargs="+", choices=list(FIGURES), metavar="NAME",
                        help=f"run only these figures: {', '.join(FIGURES)}")
    parser.add_argument("--keep", action="store_true", help=f"keep logs and the database in {WORK_DIR}")
    parser.add_argument("--used", type=int, metavar="N",
                        help="past emails stored before the figures run (figure 0; default 100,000, quick 20,000; "
                             "0 skips it)")
    parser.add_argument("--profile", nargs="?", const="default", metavar="TARGET",
                        help="profile a path instead of measuring: deliver, deliver-ses, accept or drain "
                             "(default: the slowest, see benchmarks/README.md)")
    parser.add_argument("--fresh-clone", action="store_true",
                        help="only figure 9: make run in a fresh clone with cold caches until the first email is "
                             "delivered (benchmarks/freshclone.py); its row replaces the earlier one in latest.*")
    args = parser.parse_args(argv)
    if args.fresh_clone:
        from benchmarks import freshclone

        row = freshclone.run(RESULTS_DIR)
        print(f"{row.figure}: {row.result}")
        print(f"written: {RESULTS_DIR / 'latest.md'} and latest.json (the other rows unchanged)")
        return 0
    params = Params.for_mode(args.quick)
    if args.used is not None:
        from dataclasses import replace

        params = replace(params, used_messages=args.used)
    names = args.only or list(FIGURES)

    # Ctrl-C, `kill` and a closed terminal all stop the processes. SIGINT is set
    # explicitly: a shell starts background jobs with it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    stack = Stack(work_dir=WORK_DIR, keep_database=args.keep)
    started, clock = datetime.now(timezone.utc), time.monotonic()
    load_before = os.getloadavg()[0]
    failures: dict[str, str] = {}
    phase_seconds: dict[str, float] = {}
    phase_load: dict[str, float] = {}  # 1-min load average when each figure ended
    bench = None
    try:
        stack.start()
        # This script's own Django (data preparation, the drain, reading
        # results) uses the same database and Redis as the processes it starts.
        os.environ.update(stack.env())
        print(f"database {stack.database_label}; Redis {stack.redis_label}; work dir {WORK_DIR}", flush=True)
        stack.manage("migrate", "--noinput", "-v", "0")
        import logging

        import django

        django.setup()
        # The in-process drain logs a line per run; the table is what matters here.
        logging.getLogger().setLevel(logging.WARNING)
        bench = Bench(params=params, stack=stack)
        bench.api_key = stack.manage("create_api_key", "--name", "bench", "--permission", "sending")
        if params.used_messages:
            print("== tables", flush=True)
            phase_clock = time.monotonic()
            try:
                tables.grow(bench)
            except Exception as error:
                failures["tables"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                traceback.print_exc()
            phase_seconds["tables"] = round(time.monotonic() - phase_clock, 1)
        if args.profile:
            from benchmarks import profile

            profile.run(bench, args.profile, RESULTS_DIR)
            return 0
        for name in names:
            print(f"== {name}", flush=True)
            phase_clock = time.monotonic()
            try:
                # What an earlier figure queued and did not deliver must not be
                # this figure's work: the engine's tasks claim any due email.
                bench.retire_due()
                FIGURES[name](bench)
            except Exception as error:  # one figure that cannot run must not lose the others
                failures[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                traceback.print_exc()
            phase_seconds[name] = round(time.monotonic() - phase_clock, 1)
            phase_load[name] = round(os.getloadavg()[0], 2)
            print(f"   ({phase_seconds[name]:.0f} s)", flush=True)
        memory_rows(bench)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process the bench started", file=sys.stderr, flush=True)
        return 130
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        stack.close()
        if not args.keep:
            shutil.rmtree(WORK_DIR, ignore_errors=True)

    from benchmarks import previous

    header = {
        "mode": ("quick" if args.quick else "full") + (f" (only {', '.join(names)})" if args.only else ""),
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": time.monotonic() - clock,
        "machine": _machine(),
        "database": stack.database_label,
        "redis": stack.redis_label,
        "commit": _commit(),
        "load_before": f"{load_before:.2f}",
        "load_after": f"{os.getloadavg()[0]:.2f}",
        "failures": failures,
        "phase_seconds": phase_seconds,
        "phase_load": phase_load,
        "params": {k: v for k, v in vars(params).items()},
        "before_after": previous.compare(previous.load(), bench.rows if bench else []),
    }
    print()
    print(write(RESULTS_DIR, header, bench.rows if bench else []))
    print(f"written: {RESULTS_DIR / 'latest.md'} and latest.json")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
