"""README.md and docs/*.md name only what exists: every `METHOD /path` they
show is routed by the URLconf for that method, and every setting they name
(`UPPER_CASE` in inline code, the settings tables included) is a Django
setting or an environment variable the code reads; every `manage.py` command
they show exists; every link between them leads to a file and a heading that
exist.

A named endpoint that answers 404 or 405, or a setting nobody reads, fails
here with the file and the line that names it.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import get_commands
from django.test import RequestFactory
from django.urls import Resolver404, resolve

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_ROUTED = r"/(?:api/|webhooks/|healthz|readyz|metrics)[^\s`'\"|,;)\]]*"
# `POST /api/v1/emails` in prose; a table row's method and path cells are read apart.
_PROSE_ENDPOINT = re.compile(rf"\b({'|'.join(METHODS)})\s+`?({_ROUTED})")
_CODE_PATH = re.compile(rf"`({_ROUTED})`")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_COMMAND = re.compile(r"manage\.py (\w+)")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
# A setting's name: upper case with at least one underscore (`SEND_RATE_PER_SECOND`),
# not part of a hyphenated header name (`X-SES-CONFIGURATION-SET`) nor a shell variable (`$DLQ_ARN`).
_SETTING = re.compile(r"(?<![\w$-])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+(?![\w-])")

# Environment reads: env("X"), env.bool("X"), os.environ.get("X"), os.environ["X"],
# getenv("X"), and the settings' own helpers (_positive_number("X", …)).
_PY_ENV_READ = re.compile(
    r"\b(?:env(?:\.\w+)?|environ\.get|environ\.setdefault|getenv|_\w+)\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']"
    r"|environ\[[\"']([A-Z][A-Z0-9_]*)[\"']\]"
)
# Read by a library the code hands the environment to, not by the code itself.
LIBRARY_READS = {"AWS_ACCESS_KEY_ID": "boto3", "AWS_SECRET_ACCESS_KEY": "boto3"}
# ${WEB_PORT:-8000} in the Procfile, $(WEB_PORT) in the Makefile.
_SHELL_ENV_READ = re.compile(r"\$[{(]([A-Z][A-Z0-9_]*)")


@dataclass(frozen=True)
class Mention:
    file: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def _prose_lines(path: Path):
    """(line number, text) of the lines outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def _endpoints_in(path: Path) -> list[tuple[str, str, Mention]]:
    found = []
    name = str(path.relative_to(ROOT))
    for number, line in _prose_lines(path):
        mention = Mention(name, number, line.strip()[:160])
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        methods = [m.strip() for m in cells[0].split(",")] if cells else []
        if methods and all(m in METHODS for m in methods):
            # | GET, POST | `/api/v1/templates` | …  — every method with every path of the cell.
            for route in _CODE_PATH.findall(cells[1]):
                found += [(method, route, mention) for method in methods]
        # Prose, a table's other cells included ("… (`DELETE /api/v1/emails/{email_id}` does the same)").
        found += [(method, route, mention) for method, route in _PROSE_ENDPOINT.findall(line)]
    return found


def _settings_in(path: Path) -> list[tuple[str, Mention]]:
    found = []
    name = str(path.relative_to(ROOT))
    for number, line in _prose_lines(path):
        for code in _INLINE_CODE.findall(line):
            found += [(setting, Mention(name, number, code)) for setting in _SETTING.findall(code)]
    return found


def _sample_path(route: str) -> str:
    """The route with its placeholders filled: `{n}`, `{version}` and `{id}` a number (an id may be a
    primary key: `/api/v1/api-keys/{id}`), `{email}` an address, others an id."""
    route = route.split("?", 1)[0]

    def fill(match: re.Match) -> str:
        placeholder = match.group(1)
        if placeholder in {"n", "version", "id"}:
            return "1"
        return "jane@example.com" if placeholder == "email" else f"sample-{placeholder.replace('_', '-')}"

    return re.sub(r"\{(\w+)\}", fill, route)


def route_problem(method: str, route: str) -> str | None:
    """Why the URLconf would answer `method route` with 404 or 405 (None: it is served)."""
    path = _sample_path(route)
    try:
        match = resolve(path)
    except Resolver404:
        return f"{path} is not routed (404)"
    view = match.func
    view_class = getattr(view, "cls", None) or getattr(view, "view_class", None)
    if view_class is None:
        # A function view says what it allows only by answering: ask it, without credentials.
        request = RequestFactory().generic(method, path)
        status = view(request, *match.args, **match.kwargs).status_code
        return f"{method} {path} answers {status}" if status in {404, 405} else None
    actions = getattr(view, "actions", None)  # a DRF viewset: method → action
    if actions is not None:
        allowed = {verb.upper() for verb in actions}
    else:
        allowed = {verb.upper() for verb in view_class.http_method_names if hasattr(view_class, verb)}
    if "GET" in allowed:
        allowed.add("HEAD")
    if method not in allowed:
        return f"{view_class.__name__} at {path} does not allow {method} (405), only {sorted(allowed)}"
    return None


def environment_reads() -> set[str]:
    """Every environment variable the code reads: the settings, gunicorn, Flower,
    the Procfile and Makefile, the benchmarks and the tests' own switches."""
    names = set(LIBRARY_READS)
    for source in [*ROOT.glob("config/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("tests/**/*.py")]:
        for groups in _PY_ENV_READ.findall(source.read_text()):
            names.update(filter(None, groups))
    for source in (ROOT / "Procfile", ROOT / "Makefile"):
        names.update(_SHELL_ENV_READ.findall(source.read_text()))
    return names


def setting_problem(name: str, env_names: set[str]) -> str | None:
    if hasattr(settings, name) or name in env_names:
        return None
    return f"{name} is neither a Django setting nor an environment variable the code reads"


def test_the_docs_exist_and_name_endpoints_and_settings():
    assert {path.name for path in DOCS} >= {
        "README.md", "api.md", "sending.md", "tracking.md", "templates.md", "deliverability.md",
        "webhooks.md", "console.md", "operations.md", "metrics-and-logs.md", "settings.md", "benchmarks.md",
    }
    endpoints = [e for path in DOCS for e in _endpoints_in(path)]
    assert len(endpoints) > 40
    assert ("DELETE", "/api/v1/emails/{email_id}") in {(method, route) for method, route, _ in endpoints}
    assert len({name for path in DOCS for name, _ in _settings_in(path)}) > 80


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_every_endpoint_named_is_routed_for_its_method(path, settings):
    settings.METRICS_PUBLIC, settings.METRICS_TOKEN = False, ""  # /metrics answers 403 before it reads anything
    problems = [f"{mention}\n    {problem}" for method, route, mention in _endpoints_in(path)
                if (problem := route_problem(method, route))]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_every_setting_named_is_read(path):
    env_names = environment_reads()
    problems = [f"{mention}\n    {problem}" for name, mention in _settings_in(path)
                if (problem := setting_problem(name, env_names))]
    assert problems == [], "\n".join(problems)


def test_every_management_command_named_exists():
    commands = get_commands()
    named = {(name, str(path.relative_to(ROOT))) for path in DOCS for name in _COMMAND.findall(path.read_text())}
    assert len(named) >= 6
    assert sorted(f"{file}: manage.py {name}" for name, file in named if name not in commands) == []


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_anchor(line.lstrip("#")) for _, line in _prose_lines(path) if line.startswith("#")}


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_every_link_leads_to_a_file_and_heading_that_exist(path):
    problems = []
    for number, line in _prose_lines(path):
        for target in _LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue  # https://…: not ours to check
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                problems.append(f"{path.name}:{number}: {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                problems.append(f"{path.name}:{number}: {target}: no such heading")
    assert problems == [], "\n".join(problems)


def test_the_checks_refuse_what_does_not_exist(settings):
    """The checks themselves: an unrouted path, a method the view lacks, an unread name."""
    settings.METRICS_PUBLIC, settings.METRICS_TOKEN = False, ""
    assert "404" in route_problem("POST", "/api/v1/sending/resume")
    assert "405" in route_problem("PUT", "/api/v1/emails")
    assert "405" in route_problem("DELETE", "/api/v1/emails/{email_id}/cancel")
    assert "405" in route_problem("POST", "/metrics")
    assert route_problem("DELETE", "/api/v1/emails/{email_id}") is None
    assert route_problem("POST", "/api/v1/sending-status/resume") is None
    assert route_problem("GET", "/api/v1/templates/{name}/versions/{n}") is None
    assert route_problem("GET", "/metrics") is None
    env_names = environment_reads()
    assert setting_problem("SEND_RATE_PER_SECOND", env_names) is None
    assert setting_problem("WEB_PORT", env_names) is None
    assert setting_problem("SEND_RATE_PER_MINUTE", env_names) is not None
