"""A new user's path, once: `git clone` of this repository at HEAD, `make run` in the
clone (a new virtualenv with the runtime lock file only, installed by uv; SQLite,
embedded Redis, the moto sandbox), an email sent with the demo key it printed and
seen `delivered` through the API; Ctrl-C stops it with no process left. Then
`make venv` in the same clone adds only the tests' packages, and leaves `make
run`'s set up to date.

It runs in one of CI's two runs only: the zero-configuration one (no
DATABASE_URL), since that is what a fresh clone's `make run` uses; in the
PostgreSQL run it would be the same test twice (about 40 s). uv's and pip's
caches are the machine's (warm); cold-cache figures are the bench's
(`python -m benchmarks.run --fresh-clone`, benchmarks/README.md).
"""

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from config.devservices import BASE_DIR
from tests.config.conftest import MakeRun
from tests.conftest import wait_until




def api(run: MakeRun, path: str, key: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{run.web_port}{path}", data=json.dumps(body).encode() if body else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.mark.worker
@pytest.mark.skipif(
    bool(os.environ.get("DATABASE_URL")),
    reason="runs in the zero-configuration run only (what a fresh clone's make run uses)",
)
def test_make_run_in_a_fresh_clone_installs_the_runtime_set_delivers_and_stops_clean(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(BASE_DIR), str(clone)], check=True, timeout=120)
    # Only one thing set besides the ports: a drain every 3 s instead of 10, so the wait for
    # `delivered` costs the suite less; the path is the same.
    run = MakeRun(tmp_path, command=["make", "run"], cwd=clone, fresh=True, SES_EVENTS_DRAIN_INTERVAL_SECONDS="3")
    try:
        key = run.wait_for(r"Demo API key (\S+)", timeout=240).group(1)
        run.wait_for(r"emailsvc: ready [\d.]+ s after `make run` started", timeout=120)
        run.remember()
        email = api(run, "/api/v1/emails", key, {"to": "success@simulator.amazonses.com", "subject": "Hi", "text": "t"})
        assert wait_until(
            lambda: api(run, f"/api/v1/emails/{email['email_id']}", key)["status"] == "delivered", timeout=60
        ), run.output()
        run.wait_for(r"emailsvc: first SES events applied [\d.]+ s after `make run` started", timeout=10)
        run.remember()

        os.killpg(run.process.pid, signal.SIGINT)  # Ctrl-C in its terminal
        run.process.wait(timeout=120)
        run._reader.join(timeout=5)
    finally:
        run.stop()
    output = run.output()
    assert wait_until(lambda: run.left_running() == [], timeout=10), run.left_running()
    assert "Traceback" not in output, output
    # The runtime set only, through uv, and its stamp.
    assert "== installing requirements.lock" in output and "requirements-dev.lock" not in output, output
    assert "pip installs instead" not in output, output
    python = clone / ".venv" / "bin" / "python"
    assert subprocess.run([python, "-c", "import pytest"], capture_output=True).returncode != 0

    # `make test`'s set on top: only the tests' packages are added; `make run`'s stays up to date.
    began = time.monotonic()
    venv = subprocess.run(["make", "venv"], cwd=clone, env=_plain_env(), capture_output=True, text=True, timeout=300)
    assert venv.returncode == 0, venv.stdout + venv.stderr
    assert "== installing requirements-dev.lock" in venv.stdout and "creating .venv" not in venv.stdout
    installed = [line for line in venv.stderr.splitlines() if line.startswith(" + ")]  # uv's list
    assert 0 < len(installed) < 40 and not any(line.startswith(" + django==") for line in installed), venv.stderr
    assert time.monotonic() - began < 120
    assert subprocess.run([python, "-c", "import pytest"]).returncode == 0
    assert subprocess.run(["make", "-q", ".venv/.installed-run"], cwd=clone, env=_plain_env()).returncode == 0


def _plain_env() -> dict[str, str]:
    return {
        name: value for name, value in os.environ.items()
        if name not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKE_STARTED_AT", "VIRTUAL_ENV"}
    }


def test_the_lock_files_pin_every_package():
    """What uv and pip read: every requirement `name==version` (markers allowed), nothing unpinned."""
    for lock in ("requirements.lock", "requirements-dev.lock", "benchmarks/requirements.lock"):
        lines = [line.strip() for line in Path(BASE_DIR, lock).read_text().splitlines()]
        requirements = [line for line in lines if line and not line.startswith(("#", "-"))]
        assert requirements and all("==" in line.split(";")[0] for line in requirements), lock
