"""Before → after: this run's headline figures beside those of the previous
committed run (`benchmarks/results/latest.json` at git HEAD), for the report.

Only rows with the same meaning are compared (same figure, same provider);
setups may still differ between the two runs (the table's setup column and
the previous run's own latest.md say how).
"""

from __future__ import annotations

import json
import subprocess

from benchmarks.report import Row, fmt
from benchmarks.stack import BASE_DIR

PATH = "benchmarks/results/latest.json"


def load() -> dict | None:
    """The committed latest.json (None when there is none, or no git)."""
    try:
        text = subprocess.run(["git", "show", f"HEAD:{PATH}"], cwd=BASE_DIR, capture_output=True, text=True,
                              check=True, timeout=30).stdout
        return json.loads(text)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _rows(document: dict, figure: str) -> list[dict]:
    return [row for row in document.get("rows", []) if row.get("figure") == figure]


def _best(rows: list[dict], key: str, **match) -> float | None:
    values = [row["values"].get(key) for row in rows
              if all(row["values"].get(k) == v for k, v in match.items()) and row["values"].get(key) is not None]
    return max(values) if values else None


def _memory(rows: list[dict], role: str) -> float | None:
    for row in rows:
        if role in row.get("values", {}):
            return row["values"][role] / 1024
    return None


def compare(previous: dict | None, rows: list[Row]) -> list[str]:
    if not previous:
        return []
    now = {"rows": [{"figure": r.figure, "values": r.values} for r in rows]}
    lines = []

    def add(what: str, before: float | None, after: float | None, unit: str) -> None:
        if before is None or after is None:
            return
        change = f" ({after / before:.1f} ×)" if before else ""
        lines.append(f"- {what}: {fmt(before)} → {fmt(after)} {unit}{change}")

    for provider in ("smtp", "console"):
        add(f"delivery, limiter off, {provider} (best row)",
            _best(_rows(previous, "3 delivery throughput"), "steady_per_second", provider=provider),
            _best(_rows(now, "3 delivery throughput"), "steady_per_second", provider=provider), "emails/s")
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        add(f"latency accept → provider at 14/s, {label}", _best(_rows(previous, "6 end-to-end latency"), key),
            _best(_rows(now, "6 end-to-end latency"), key), "ms")
    for role in ("celery pool process", "celery worker (main process)"):
        add(f"worker RSS, {role}", _memory(_rows(previous, "7 memory, worker"), role),
            _memory(_rows(now, "7 memory, worker"), role), "MiB")
    add("web RSS, gunicorn worker", _memory(_rows(previous, "7 memory, web"), "web worker"),
        _memory(_rows(now, "7 memory, web"), "web worker"), "MiB")
    for rate in (14,):
        add(f"rate limit {rate}/s, achieved / configured",
            _best(_rows(previous, "4 rate-limit precision"), "ratio", rate=rate),
            _best(_rows(now, "4 rate-limit precision"), "ratio", rate=rate), "")
    header = previous.get("header", {})
    if lines:
        lines.insert(0, f"Previous committed run: {header.get('commit', '?')}, {header.get('started', '?')}, "
                        f"{header.get('mode', '?')} run, {header.get('database', '?')}.")
    return lines
