"""`make run` (python -m config.devservices run): a taken port stops it before it
starts anything, with a message naming the variable to set; the environment it
hands the Procfile binds to loopback and keeps beat's schedule in the checkout."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config.devservices import BASE_DIR, free_port, listen_problems, procfile_env, sandbox_init_argv

STATE_DIR = BASE_DIR / ".sandbox"


@pytest.fixture
def occupied_port():
    """A port something else listens on (127.0.0.1), as a running dev server would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _make_run(tmp_path: Path, **variables: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run `python -m config.devservices run` with `variables`; (result, seconds).

    Everything it could start if it did not stop first points somewhere
    harmless: a database file in tmp_path, a Redis and an AWS endpoint nobody
    listens on, so a regression shows as a slow or failing run, not as a
    migrated checkout.
    """
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'never-created.sqlite3'}",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
        WEB_PORT=str(free_port()),
        FLOWER_PORT=str(free_port()),
        SMTP_INGRESS_PORT=str(free_port()),
    )
    env.pop("WEB_BIND", None)
    env.pop("FLOWER_ADDRESS", None)
    env.update(variables)
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "config.devservices", "run"], cwd=BASE_DIR, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"make run did not stop on a taken port; it printed:\n{stdout}\n{stderr}")
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return result, time.monotonic() - started


def test_make_run_on_a_taken_web_port_says_to_set_web_port(occupied_port, tmp_path):
    result, seconds = _make_run(tmp_path, WEB_PORT=str(occupied_port))

    assert result.returncode != 0
    assert seconds < 10
    assert f"port {occupied_port} (WEB_PORT) is in use" in result.stderr
    assert "make run WEB_PORT=" in result.stderr
    assert "FLOWER_PORT" not in result.stderr
    # Nothing was started: no banner, no migration.
    assert "emailsvc is starting" not in result.stdout
    assert not (tmp_path / "never-created.sqlite3").exists()


def test_make_run_on_a_taken_flower_port_says_to_set_flower_port(occupied_port, tmp_path):
    result, seconds = _make_run(tmp_path, FLOWER_PORT=str(occupied_port))

    assert result.returncode != 0
    assert seconds < 10
    assert f"port {occupied_port} (FLOWER_PORT) is in use" in result.stderr
    assert "make run FLOWER_PORT=" in result.stderr
    assert "WEB_PORT" not in result.stderr
    assert not (tmp_path / "never-created.sqlite3").exists()


def test_make_run_refuses_a_port_that_is_not_a_number(tmp_path):
    result, _ = _make_run(tmp_path, WEB_PORT="http")

    assert result.returncode != 0
    assert "WEB_PORT='http' is not a port number" in result.stderr


def test_suggested_port_is_free(occupied_port):
    env = procfile_env({"WEB_PORT": str(occupied_port), "FLOWER_PORT": str(free_port()), "SMTP_INGRESS_PORT": str(free_port())})

    [problem] = listen_problems(env)

    suggested = int(problem.rpartition("make run WEB_PORT=")[2].rstrip(")"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", suggested))


def test_a_port_taken_on_all_addresses_is_taken_for_loopback_too():
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        env = procfile_env({"WEB_PORT": str(port), "FLOWER_PORT": str(free_port()), "SMTP_INGRESS_PORT": str(free_port())})

        assert [p for p in listen_problems(env) if "(WEB_PORT) is in use on 127.0.0.1" in p]


def test_free_ports_have_no_problems():
    env = procfile_env({"WEB_PORT": str(free_port()), "FLOWER_PORT": str(free_port()), "SMTP_INGRESS_PORT": str(free_port())})

    assert listen_problems(env) == []


def test_procfile_env_binds_to_loopback_and_keeps_beat_schedule_in_the_checkout():
    env = procfile_env({})

    assert env["WEB_BIND"] == "127.0.0.1"
    assert env["FLOWER_ADDRESS"] == "127.0.0.1"
    assert (env["WEB_PORT"], env["FLOWER_PORT"]) == ("8000", "5555")
    schedule = Path(env["CELERY_BEAT_SCHEDULE_FILE"])
    assert schedule.parent == STATE_DIR
    assert schedule.is_relative_to(BASE_DIR)


def test_procfile_env_keeps_what_the_user_set():
    env = procfile_env(
        {"WEB_BIND": "0.0.0.0", "FLOWER_ADDRESS": "0.0.0.0", "WEB_PORT": "8001", "CELERY_BEAT_SCHEDULE_FILE": "/var/lib/beat"}
    )

    assert (env["WEB_BIND"], env["FLOWER_ADDRESS"], env["WEB_PORT"]) == ("0.0.0.0", "0.0.0.0", "8001")
    assert env["CELERY_BEAT_SCHEDULE_FILE"] == "/var/lib/beat"


def test_procfile_passes_the_bind_addresses_and_schedule_file_on():
    """The variables procfile_env sets are the ones the Procfile reads."""
    procfile = (BASE_DIR / "Procfile").read_text()

    for variable in ("WEB_BIND", "WEB_PORT", "FLOWER_ADDRESS", "FLOWER_PORT", "CELERY_BEAT_SCHEDULE_FILE"):
        assert "${" + variable + ":-" in procfile, variable
    assert "/tmp/" not in procfile


def test_make_run_allows_a_local_http_webhook_receiver_unless_told_otherwise():
    env = procfile_env({})
    kept = procfile_env({"WEBHOOK_ALLOW_HTTP": "false", "WEBHOOK_ALLOW_PRIVATE_TARGETS": "false"})

    assert (env["WEBHOOK_ALLOW_HTTP"], env["WEBHOOK_ALLOW_PRIVATE_TARGETS"]) == ("true", "true")
    assert (kept["WEBHOOK_ALLOW_HTTP"], kept["WEBHOOK_ALLOW_PRIVATE_TARGETS"]) == ("false", "false")


def test_make_run_serves_smtp_on_loopback_with_a_certificate_it_made(tmp_path):
    import ssl

    env = procfile_env({}, state_dir=tmp_path)
    assert (env["SMTP_INGRESS_BIND"], env["SMTP_INGRESS_PORT"]) == ("127.0.0.1", "2525")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(env["SMTP_INGRESS_TLS_CERT"], env["SMTP_INGRESS_TLS_KEY"])  # a usable pair
    assert procfile_env({}, state_dir=tmp_path)["SMTP_INGRESS_TLS_CERT"] == env["SMTP_INGRESS_TLS_CERT"]  # made once


def test_a_taken_smtp_port_is_named_before_anything_starts(occupied_port):
    env = procfile_env({"WEB_PORT": str(free_port()), "FLOWER_PORT": str(free_port()), "SMTP_INGRESS_PORT": str(occupied_port)})

    [problem] = listen_problems(env)

    assert f"port {occupied_port} (SMTP_INGRESS_PORT) is in use" in problem
    assert "make run SMTP_INGRESS_PORT=" in problem


def test_two_listeners_on_one_port_are_named():
    port = str(free_port())
    env = procfile_env({"WEB_PORT": port, "FLOWER_PORT": str(free_port()), "SMTP_INGRESS_PORT": port})

    assert listen_problems(env) == [f"WEB_PORT and SMTP_INGRESS_PORT are both {port}; give them different ports"]


def test_an_admin_password_that_begins_with_a_dash_reaches_sandbox_init():
    from emailsvc.management.commands.sandbox_init import Command

    argv = sandbox_init_argv("-H9YiuCL_g06Uvdzuq_o73Uq")
    options = Command().create_parser("manage.py", argv[0]).parse_args(argv[1:])

    assert (options.admin_password, options.migrate, options.example_templates) == ("-H9YiuCL_g06Uvdzuq_o73Uq", True, True)
