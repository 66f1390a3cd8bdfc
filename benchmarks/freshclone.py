"""Figure 9: `make run` → first `delivered`, as a new user meets it.

    python -m benchmarks.run --fresh-clone

A `git clone` of this repository at HEAD into a temporary directory; `make run`
there with empty uv and pip caches (UV_CACHE_DIR, PIP_CACHE_DIR: every package
is downloaded), nothing configured (SQLite, embedded Redis, the moto sandbox);
one email to success@simulator.amazonses.com POSTed with the printed demo key as
soon as the API takes it, and GET polled until it is `delivered`. Then Ctrl-C,
and `make run` once more in the same clone (installed already: the warm figure).
The row replaces any earlier figure-9 row in results/latest.{md,json}; the
other rows stay as their run left them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.report import Row, write
from config.devservices import BASE_DIR, free_port

FIGURE = "9 make run → first delivered"
UNSET = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "AWS_ENDPOINT_URL", "DJANGO_SETTINGS_MODULE",
         "EMAIL_PROVIDER", "SANDBOX_DIR", "PROMETHEUS_MULTIPROC_DIR", "CELERY_BEAT_SCHEDULE_FILE", "VIRTUAL_ENV",
         "MAKE_STARTED_AT", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")


def _make_run(clone: Path, env: dict[str, str]) -> dict[str, float]:
    """One `make run` in `clone` until the first email is delivered; seconds from
    the start to each milestone."""
    web_port = free_port()
    env = {**env, "WEB_PORT": str(web_port), "FLOWER_PORT": str(free_port())}
    lines: list[tuple[float, str]] = []
    began = time.monotonic()
    process = subprocess.Popen(["make", "run"], cwd=clone, env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)

    def read() -> None:
        for line in process.stdout:
            lines.append((time.monotonic() - began, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def first(pattern: str) -> tuple[float, re.Match] | None:
        for at, line in list(lines):
            if found := re.search(pattern, line):
                return at, found
        return None

    def call(path: str, key: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{web_port}{path}", data=json.dumps(body).encode() if body else None,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    milestones: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 600
        while (banner := first(r"Demo API key (\S+)")) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("make run printed no demo key:\n" + "\n".join(line for _, line in lines))
            time.sleep(0.05)
        key = banner[1].group(1)
        email_id = None
        while email_id is None and time.monotonic() < deadline:
            try:
                email_id = call("/api/v1/emails", key, {"to": "success@simulator.amazonses.com",
                                                        "subject": "Hello", "text": "Hi!"})["email_id"]
            except OSError:
                time.sleep(0.1)
        milestones["accepted"] = time.monotonic() - began
        while call(f"/api/v1/emails/{email_id}", key)["status"] != "delivered":
            if time.monotonic() > deadline:
                raise RuntimeError("the email was not delivered within 10 minutes")
            time.sleep(0.1)
        milestones["delivered"] = time.monotonic() - began
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        reader.join(timeout=5)
    for name, pattern in (("installed", r"Installed \d+ packages"), ("banner", r"Demo API key"),
                          ("ready", r"emailsvc: ready [\d.]+ s")):
        if found := first(pattern):
            milestones[name] = found[0]
    if found := first(r"Installed (\d+) packages in"):
        milestones["packages"] = int(found[1].group(1))
    return milestones


def run(results_dir: Path) -> Row:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BASE_DIR, capture_output=True, text=True,
                            check=True).stdout.strip()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="emailsvc-fresh-clone-") as directory:
        clone = Path(directory) / "emailsvc"
        subprocess.run(["git", "clone", "--quiet", str(BASE_DIR), str(clone)], check=True)
        env = {name: value for name, value in os.environ.items() if name not in UNSET}
        env.update(UV_CACHE_DIR=str(Path(directory) / "uv-cache"), PIP_CACHE_DIR=str(Path(directory) / "pip-cache"))
        print("== fresh clone, cold caches", flush=True)
        cold = _make_run(clone, env)
        print(f"   {cold}", flush=True)
        print("== make run again in the same clone", flush=True)
        warm = _make_run(clone, env)
        print(f"   {warm}", flush=True)

    def seconds(figures: dict, name: str) -> str:
        return f"{figures[name]:.1f} s" if name in figures else "–"

    row = Row(
        figure=FIGURE,
        setup=("`git clone` of the repository at HEAD, `make run` in it with nothing configured (SQLite, embedded "
               "Redis, moto sandbox) and empty uv and pip caches (UV_CACHE_DIR, PIP_CACHE_DIR): a new virtualenv, uv "
               "put into it by pip, requirements.lock installed by uv; one email to success@simulator.amazonses.com "
               "POSTed with the printed demo key as soon as the API takes it, GET polled until `delivered`; then the "
               "same `make run` again in that clone (installed already)"),
        result=(f"cold: {seconds(cold, 'delivered')} to delivered (installed {seconds(cold, 'installed')}, banner "
                f"{seconds(cold, 'banner')}, ready {seconds(cold, 'ready')}); again in the same clone: "
                f"{seconds(warm, 'delivered')} (ready {seconds(warm, 'ready')})"),
        values={"cold": cold, "warm": warm, "commit": commit, "when": when, "load_before": round(load, 2)},
        notes=(f"measured {when} at {commit} by `python -m benchmarks.run --fresh-clone`, apart from the other rows "
               f"(load average before: {load:.2f}; other work on the 2 cores stretches every figure); seconds from the start of `make` ({cold.get('packages', '?')} "
               "packages); `delivered` waits for the drain, which beat starts every 10 s "
               "(SES_EVENTS_DRAIN_INTERVAL_SECONDS), so up to 10 s of each figure is that wait"),
    )
    latest = results_dir / "latest.json"
    recorded = json.loads(latest.read_text()) if latest.exists() else {"header": {}, "rows": []}
    rows = [Row(**kept) for kept in recorded["rows"] if kept["figure"] != FIGURE] + [row]
    header = recorded["header"] or {"mode": "fresh clone only", "started": when, "seconds": 0, "machine": "",
                                    "database": "–", "redis": "–", "commit": commit, "load_before": "",
                                    "load_after": ""}
    print(write(results_dir, header, rows).splitlines()[-1] if rows else "", file=sys.stderr)
    return row
