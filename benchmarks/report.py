"""The result table: one row per figure and setup, as Markdown and JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Row:
    figure: str  # e.g. "1 accept, single"
    setup: str  # processes, concurrency, provider, limiter: what makes figures comparable
    result: str  # the human-readable figure
    values: dict = field(default_factory=dict)  # the same numbers, for machines
    notes: str = ""


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def markdown(header: dict, rows: list[Row]) -> str:
    lines = [
        f"# emailsvc bench — {header['mode']} run",
        "",
        f"- when: {header['started']} (took {header['seconds']:.0f} s)",
        f"- machine: {header['machine']}",
        f"- database: {header['database']}; Redis: {header['redis']}",
        f"- code: {header['commit']}",
        f"- load average (1 min) before / after: {header['load_before']} / {header['load_after']}"
        " — other work on the machine skews every figure"
        + (f"; at the end of each figure: {', '.join(f'{k} {v}' for k, v in header['phase_load'].items())}"
           if header.get("phase_load") else ""),
        "",
        "Speed is reported, never asserted. See benchmarks/README.md for what each row measures.",
        "",
        "| Figure | Setup | Result | Notes |",
        "|---|---|---|---|",
    ]
    for row in rows:
        cells = [row.figure, row.setup, row.result, row.notes]
        lines.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |")
    if header.get("before_after"):
        lines += ["", "## Before → after", "", *header["before_after"]]
    if header.get("failures"):
        lines += ["", "Failed phases:", ""] + [f"- {name}: {error}" for name, error in header["failures"].items()]
    return "\n".join(lines) + "\n"


def write(directory: Path, header: dict, rows: list[Row]) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    text = markdown(header, rows)
    (directory / "latest.md").write_text(text)
    (directory / "latest.json").write_text(
        json.dumps({"header": header, "rows": [asdict(row) for row in rows]}, indent=2, default=str) + "\n"
    )
    return text
