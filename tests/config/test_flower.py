"""Flower never starts open by mistake (issue 18): `python -m config.flower`, as the Procfile runs it."""

import base64
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from django.conf import settings

from config.devservices import free_port
from config.flower import auth_problem
from tests.conftest import BASE_DIR


def _env(**values: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLOWER_")}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings", REDIS_URL=settings.REDIS_URL,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL, PYTHONUNBUFFERED="1",
    )
    env.update(values)
    return env


def _run_flower(env: dict[str, str], port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "config.flower", f"--port={port}", "--address=127.0.0.1"],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60,
    )


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_flower_without_auth_refuses_to_start_and_says_what_to_set():
    port = free_port()

    result = _run_flower(_env(), port)

    assert result.returncode == 2, result
    assert "Flower will not start without authentication" in result.stderr
    assert "FLOWER_BASIC_AUTH=user:password" in result.stderr and "FLOWER_UNAUTHENTICATED=true" in result.stderr
    assert not _listening(port)


@pytest.mark.parametrize("value", ["admin", "admin:", ":secret", "admin:secret,other"])
def test_flower_with_a_malformed_basic_auth_refuses_to_start(value):
    result = _run_flower(_env(FLOWER_BASIC_AUTH=value), free_port())

    assert result.returncode == 2
    assert "FLOWER_BASIC_AUTH must be user:password" in result.stderr


def test_auth_settings_that_let_flower_start():
    assert auth_problem({"FLOWER_BASIC_AUTH": "ops:s3cret"}) is None
    assert auth_problem({"FLOWER_BASIC_AUTH": "ops:s3cret,support:other:colon"}) is None
    assert auth_problem({"FLOWER_AUTH": ".*@example\\.com"}) is None
    assert auth_problem({"FLOWER_UNAUTHENTICATED": "true"}) is None
    assert auth_problem({"FLOWER_UNAUTHENTICATED": "false"}) is not None
    assert auth_problem({"FLOWER_BASIC_AUTH": "  "}) is not None


def _status(url: str, *, credentials: str | None = None) -> int:
    request = urllib.request.Request(url)
    if credentials:
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _start(env: dict[str, str], port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "config.flower", f"--port={port}", "--address=127.0.0.1"],
        cwd=BASE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not _listening(port):
        if process.poll() is not None:
            raise AssertionError(f"flower exited with {process.returncode}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("flower did not listen within 60 s")
        time.sleep(0.2)
    return process


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_flower_with_basic_auth_starts_and_asks_for_the_password():
    port = free_port()
    process = _start(_env(FLOWER_BASIC_AUTH="ops:s3cret"), port)
    try:
        assert _status(f"http://127.0.0.1:{port}/workers") == 401
        assert _status(f"http://127.0.0.1:{port}/workers", credentials="ops:wrong") == 401
        assert _status(f"http://127.0.0.1:{port}/workers", credentials="ops:s3cret") == 200
    finally:
        _stop(process)


def test_flowers_own_metrics_ask_for_the_same_password():
    port = free_port()
    process = _start(_env(FLOWER_BASIC_AUTH="ops:s3cret"), port)
    try:
        assert _status(f"http://127.0.0.1:{port}/metrics") == 401
        assert _status(f"http://127.0.0.1:{port}/metrics", credentials="ops:wrong") == 401
        assert _status(f"http://127.0.0.1:{port}/metrics", credentials="ops:s3cret") == 200
        assert _status(f"http://127.0.0.1:{port}/healthcheck") == 200  # a bare "OK" for probes
    finally:
        _stop(process)


def test_flower_unauthenticated_only_when_asked_and_warns():
    port = free_port()
    process = _start(_env(FLOWER_UNAUTHENTICATED="true"), port)
    try:
        assert _status(f"http://127.0.0.1:{port}/workers") == 200
        assert _status(f"http://127.0.0.1:{port}/metrics") == 200
    finally:
        _stop(process)
    assert "WITHOUT authentication" in process.stderr.read()
