"""
The Procfile's processes under `make run` (config/devservices.py): `supervise`
runs them, not `honcho start`. honcho stops every process when one exits (its
documented behaviour), so one worker dying after a Redis blip took the whole
stack down. `supervise` keeps honcho's Procfile parser and its
`12:00:00 web.1 | ...` output, but announces a process that exits and starts it
again; Ctrl-C stops them in order (running tasks finish), a second one forces.
"""

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from honcho.colour import get_colours
from honcho.environ import expand_processes, parse_procfile
from honcho.printer import Message, Printer

# A process that dies again within STABLE_AFTER seconds of starting waits twice
# as long as last time before its next start, so a crash loop (Redis still
# down) neither spins nor floods the terminal; one that ran longer is started
# again after RESTART_DELAY_MIN.
RESTART_DELAY_MIN = 1.0
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 10.0
# How long stopping waits for SIGTERM to work before SIGKILL, and then for
# SIGKILL to work. A Celery worker's warm shutdown finishes the chunk it is
# sending, which takes new sends for at most DELIVERY_CHUNK_MAX_SECONDS (60).
STOP_TIMEOUT = 75.0
KILL_TIMEOUT = 5.0
# A stop signal this long after the first forces the stop (SIGKILL at once); one
# sooner is the same stop: `timeout` sends its signal to the command and again
# to the process group.
FORCE_AFTER = 0.25
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


def _group_members(pgid: int) -> dict[int, int]:
    """{pid: parent's pid} of the processes of group `pgid`, from Linux's /proc."""
    members = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                # After "(comm)": state, parent's pid, process group.
                fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
                if int(fields[2]) == pgid:
                    members[int(entry.name)] = int(fields[1])
    return members


def _ask_to_stop(child: subprocess.Popen) -> None:
    """SIGTERM to the commands of the group `child` (a shell) leads, and to what an
    ended process left behind; not to what those commands manage themselves (a
    Celery pool, gunicorn's workers): they end those in order, and a pool process
    given SIGTERM dies mid-task (WorkerLostError) while its master waits for it."""
    if not Path("/proc/self/stat").exists():
        _signal_group(child, signal.SIGTERM)
        return
    members = _group_members(child.pid)
    targets = {pid for pid, parent in members.items() if parent == child.pid or parent not in members}
    if len(targets) > 1:  # the shell ends when its command does
        targets.discard(child.pid)
    for pid in targets or {child.pid}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)


def processes_stop(
    *, processes: list[ProcfileProcess], output: ProcfileOutput, timeout: float, forced=lambda: False
) -> None:
    """Stop every process: SIGTERM (_ask_to_stop: Celery's warm shutdown, gunicorn's
    graceful one), up to `timeout` for all of them to end, then SIGKILL to the
    groups still running; at once when forced() turns true meanwhile."""
    running = [p for p in processes if p.child is not None and _group_running(p.child)]
    for process in running:
        output.announce(f"sending SIGTERM to {process.name} (pid {process.child.pid})")
        _ask_to_stop(process.child)
    deadline = time.monotonic() + timeout
    while running and time.monotonic() < deadline and not forced():
        for process in [p for p in running if not _group_running(p.child)]:
            output.announce(f"{process.name} stopped ({exit_description(process.child.returncode)})")
            running.remove(process)
        time.sleep(0.05)
    if running and forced():
        output.announce("stop forced: sending SIGKILL to every process still running")
    for process in running:
        output.announce(f"sending SIGKILL to {process.name} (pid {process.child.pid})")
        _signal_group(process.child, signal.SIGKILL)
    for process in running:
        if _group_gone(process.child, timeout=KILL_TIMEOUT):
            output.announce(f"{process.name} stopped ({exit_description(process.child.returncode)})")
        else:
            output.announce(f"{process.name}: process group {process.child.pid} still runs after SIGKILL")
    for process in processes:
        if process.relay is not None:
            process.relay.join(timeout=OUTPUT_GRACE)


class StopSignals:
    """The SIGINTs and SIGTERMs a run received: the first asks for a stop; one
    more, FORCE_AFTER seconds later or more, forces it. Install it as their handler."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.first_at = 0.0
        self.forced = False

    def __call__(self, signum: int, _frame) -> None:
        if self.first is None:
            self.first, self.first_at = signum, time.monotonic()
        elif time.monotonic() - self.first_at >= FORCE_AFTER:
            self.forced = True


def supervise(
    *, procfile: Path, env: Mapping[str, str], cwd: Path, stream: TextIO = sys.stdout,
    stop_timeout: float = STOP_TIMEOUT,
) -> int:
    """Run every process of `procfile` until SIGINT or SIGTERM, then stop them all
    (processes_stop, waiting up to `stop_timeout` before SIGKILL) and return 0;
    130 if a second signal forced the stop.

    A process that ends meanwhile is announced with its exit code and started
    again after restart_delay; the others run on. Output goes to `stream` in
    honcho's format. Call it from the main thread: it handles SIGINT and SIGTERM.
    """
    processes = procfile_processes(procfile=procfile, env=env)
    output = ProcfileOutput(stream=stream, names=[process.name for process in processes])
    stop_signals = StopSignals()
    previous_handlers = {signum: signal.signal(signum, stop_signals) for signum in (signal.SIGINT, signal.SIGTERM)}
    _adopt_orphans()
    try:
        for process in processes:
            process_start(process=process, cwd=cwd, output=output)
        while stop_signals.first is None:
            for process in processes:
                process_watch(process=process, cwd=cwd, output=output)
            time.sleep(0.1)
        output.announce(
            f"{signal.Signals(stop_signals.first).name} received, stopping every process"
            f" (running tasks finish first; Ctrl-C again forces the stop)"
        )
    finally:
        processes_stop(processes=processes, output=output, timeout=stop_timeout, forced=lambda: stop_signals.forced)
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    return 130 if stop_signals.forced else 0
