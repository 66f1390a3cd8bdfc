"""`make run` keeps the Procfile running: a process that exits is announced (name
and exit code) and started again while the others run on; SIGINT or SIGTERM to
the supervisor stops every process (a running task finishes), leaves none behind
and exits 0; a second signal forces the stop (exit code 130).

Real processes throughout: a supervisor (config.supervisor.supervise) in a
process of its own, running a Procfile of `python -c` commands in tmp_path.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from config.devservices import BASE_DIR
from config.supervisor import exit_description, procfile_processes, restart_delay

pytestmark = pytest.mark.timing

STEADY = """steady: python -c 'import os, time; print("steady up", os.getpid(), flush=True); time.sleep(60)'"""
# Dies after 0.5 s, leaving behind a `sleep` of its process group, as a Celery
# master killed by a Redis blip leaves its pool.
FLAKY = (
    """flaky: sleep 60 & echo "leftover $!"; """
    """python -c 'import os, sys, time; print("flaky up", os.getpid(), flush=True); time.sleep(0.5); sys.exit(1)'"""
)
# Ignores SIGTERM and has a background child: only SIGKILL to its whole group stops it.
STUBBORN = (
    """stubborn: sleep 60 & echo "leftover $!"; python -c 'import os, signal, time; """
    """signal.signal(signal.SIGTERM, signal.SIG_IGN); print("stubborn up", os.getpid(), flush=True); time.sleep(60)'"""
)
LINE_PREFIX = r"^\d\d:\d\d:\d\d "  # honcho's `12:00:00 web.1 | ...`


class Supervisor:
    """`supervise` run on a Procfile in a process of its own, its output collected as it comes."""

    def __init__(self, *, directory: Path, procfile: str, stop_timeout: float = 10.0) -> None:
        (directory / "Procfile").write_text(procfile + "\n")
        env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
        code = (
            "import os, sys; from pathlib import Path; from config.supervisor import supervise; "
            f"sys.exit(supervise(procfile=Path({str(directory / 'Procfile')!r}), env=dict(os.environ), "
            f"cwd=Path({str(directory)!r}), stop_timeout={stop_timeout}))"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], cwd=BASE_DIR, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def matching(self, pattern: str) -> list[re.Match]:
        return [match for line in list(self.lines) if (match := re.search(pattern, line))]

    def wait_for(self, pattern: str, *, count: int = 1, timeout: float = 5.0) -> list[re.Match]:
        """The lines matching `pattern` once there are `count` of them."""
        deadline = time.monotonic() + timeout
        while len(matches := self.matching(pattern)) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"no {count} lines matching {pattern!r} within {timeout}s; output:\n{self.output}")
            time.sleep(0.05)
        return matches

    def pids(self) -> set[int]:
        """Every process the supervisor said it started, and every pid they printed."""
        started = {int(m[1]) for m in self.matching(r"started \(pid=(\d+)\)")}
        printed = {int(m[1]) for m in self.matching(r"\| (?:\w+ up|leftover) (\d+)$")}
        return started | printed

    def stop(self, signum: int = signal.SIGINT, *, timeout: float = 15.0) -> int:
        self.process.send_signal(signum)
        returncode = self.process.wait(timeout=timeout)
        self._reader.join(timeout=2)
        return returncode

    def kill_everything(self) -> None:
        """After a failed test: nothing it started outlives it."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in self.pids():
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


@pytest.fixture
def supervisor(tmp_path):
    """Start a supervisor: supervisor(procfile_text, stop_timeout=...)."""
    started: list[Supervisor] = []

    def start(procfile: str, **options) -> Supervisor:
        started.append(Supervisor(directory=tmp_path, procfile=procfile, **options))
        return started[-1]

    yield start
    for running in started:
        running.kill_everything()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _gone_within(pids: set[int], *, timeout: float) -> set[int]:
    """Those of `pids` still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    while (alive := {pid for pid in pids if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def test_a_process_that_exits_is_announced_and_restarted_while_the_others_run_on(supervisor):
    running = supervisor(f"{FLAKY}\n{STEADY}")

    first_up, second_up = running.wait_for(r"flaky up (\d+)$", count=2)
    [announcement] = running.matching(r"flaky\.1 exited")
    [steady_up] = running.wait_for(r"steady up (\d+)$")

    assert re.match(
        LINE_PREFIX + r"system\s+\| flaky\.1 exited unexpectedly \(exit code 1\) after 0\.\ds; restarting it in 1s$",
        announcement.string,
    ), running.output
    assert len(running.matching(r"system\s+\| flaky\.1 started \(pid=\d+\)$")) == 2
    assert first_up[1] != second_up[1]
    # Its first run's output comes before the announcement, its second run's after.
    assert running.lines.index(first_up.string) < running.lines.index(announcement.string)
    assert running.lines.index(announcement.string) < running.lines.index(second_up.string)
    # What the dead run left in its process group was stopped, not left running beside the new run.
    first_leftover = int(running.matching(r"leftover (\d+)$")[0][1])
    assert not _gone_within({first_leftover}, timeout=2)
    # The steady process ran on undisturbed: one start, the same pid, still alive.
    assert re.match(LINE_PREFIX + r"steady\.1\s+\| steady up \d+$", steady_up.string)
    assert len(running.matching(r"steady\.1 started")) == 1
    assert len(running.matching(r"steady up")) == 1
    assert not running.matching(r"steady\.1 exited")
    assert _alive(int(steady_up[1]))

    assert running.stop() == 0


def test_a_process_killed_by_sigkill_is_announced_with_the_signal_and_restarted(supervisor):
    """As `kill -9` of a Celery worker's main process: its shell reports 137."""
    running = supervisor(STEADY)
    [up] = running.wait_for(r"steady up (\d+)$")

    os.kill(int(up[1]), signal.SIGKILL)

    running.wait_for(r"steady up (\d+)$", count=2)
    [announcement] = running.matching(r"steady\.1 exited")
    assert re.search(
        r"system\s+\| steady\.1 exited unexpectedly \(exit code 137, killed by SIGKILL\) after [\d.]+s; "
        r"restarting it in 1s$",
        announcement.string,
    ), running.output
    assert running.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_stops_every_process_leaves_none_behind_and_exits_0(supervisor, signum):
    running = supervisor(f"{STEADY}\n{STUBBORN}", stop_timeout=1)
    running.wait_for(r"(steady|stubborn) up \d+$", count=2)
    running.wait_for(r"leftover \d+$")
    pids = running.pids()
    assert len(pids) == 5  # two shells, two python processes, stubborn's background sleep

    started = time.monotonic()
    assert running.stop(signum) == 0

    assert time.monotonic() - started < 5
    assert not _gone_within(pids, timeout=0), f"still alive: {pids}\n{running.output}"
    name = signal.Signals(signum).name
    assert running.matching(rf"system\s+\| {name} received, stopping every process \(")
    assert running.matching(r"system\s+\| sending SIGTERM to steady\.1 \(pid \d+\)$")
    # stubborn ignored SIGTERM for the whole stop_timeout: SIGKILL ended it.
    assert running.matching(r"system\s+\| sending SIGKILL to stubborn\.1 \(pid \d+\)$")
    assert running.matching(r"system\s+\| steady\.1 stopped \(")
    assert running.matching(r"system\s+\| stubborn\.1 stopped \(")
    assert not running.matching(r"exited unexpectedly")


# As Celery's warm shutdown: given SIGTERM, the master lets the process running a
# task finish it; that process itself dies at once if given SIGTERM.
MASTER_SCRIPT = """
import signal, subprocess, sys
code = "import time; print('task started', flush=True); time.sleep(1.5); print('task done', flush=True)"
task = subprocess.Popen([sys.executable, "-c", code])
signal.signal(signal.SIGTERM, lambda *_: print("master: finishing the running task", flush=True))
sys.exit(task.wait())
"""


def test_a_stop_asks_the_command_not_the_processes_it_manages_so_a_running_task_finishes(supervisor, tmp_path):
    (tmp_path / "master.py").write_text(MASTER_SCRIPT)
    running = supervisor("master: python master.py")
    running.wait_for(r"task started$")

    assert running.stop() == 0

    assert running.matching(r"master\.1\s+\| master: finishing the running task$"), running.output
    assert running.matching(r"master\.1\s+\| task done$"), running.output
    assert running.matching(r"system\s+\| master\.1 stopped \(exit code 0\)$"), running.output


def test_a_second_signal_forces_the_stop_at_once_and_leaves_nothing_behind(supervisor):
    running = supervisor(f"{STEADY}\n{STUBBORN}", stop_timeout=60)
    running.wait_for(r"(steady|stubborn) up \d+$", count=2)
    running.wait_for(r"leftover \d+$")
    pids = running.pids()

    started = time.monotonic()
    running.process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert running.stop(signal.SIGINT) == 130

    assert time.monotonic() - started < 5
    assert not _gone_within(pids, timeout=0), f"still alive: {pids}\n{running.output}"
    assert running.matching(r"system\s+\| stop forced: sending SIGKILL to every process still running$")


def test_the_same_signal_twice_at_once_is_one_stop_not_a_forced_one(supervisor):
    """As `timeout` sends: to the command, and to its process group."""
    running = supervisor(STEADY)
    running.wait_for(r"steady up \d+$")

    running.process.send_signal(signal.SIGTERM)
    assert running.stop(signal.SIGTERM) == 0

    assert not running.matching("stop forced")


def test_restart_delay_doubles_while_a_process_keeps_dying_soon_and_resets_after_a_long_run():
    delays = [0.0]
    for _ in range(7):
        delays.append(restart_delay(previous=delays[-1], ran_for=0.5))

    assert delays[1:] == [1, 2, 4, 8, 16, 30, 30]
    assert restart_delay(previous=30, ran_for=60) == 1


def test_exit_description_names_the_signal_that_killed_a_process():
    assert exit_description(1) == "exit code 1"
    assert exit_description(137) == "exit code 137, killed by SIGKILL"
    assert exit_description(-15) == "exit code -15, killed by SIGTERM"


def test_the_procfile_processes_are_named_and_given_the_environment_honcho_gives():
    processes = procfile_processes(procfile=BASE_DIR / "Procfile", env={"WEB_PORT": "8001"})

    assert [process.name for process in processes] == ["web.1", "worker.1", "beat.1", "flower.1"]
    assert processes[0].command.startswith("gunicorn config.wsgi")
    assert processes[1].env == {"WEB_PORT": "8001", "HONCHO_PROCESS_NAME": "worker.1"}
    assert len({process.colour for process in processes}) == 4
