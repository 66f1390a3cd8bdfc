"""CPU and database work behind a figure: how much CPU the service's processes
and the bench database's PostgreSQL backends used over a measured run, and
how many transactions the database committed.

- Processes: utime + stime from /proc/<pid>/stat of each started process and
  all its descendants (celery's main process and its pool processes), sampled
  every 0.3 s so a process that ends before the run does is counted up to its
  last sample.
- PostgreSQL: the backends of the bench's database (pg_stat_activity, read
  through a connection to the server's maintenance database, so the sampling
  is not itself counted), CPU read from /proc/<pid>/stat — the server runs on
  this machine. A backend that existed when the run started counts from its
  CPU then; a new one from zero. The bench script's own backend is excluded
  (`exclude_backend`). Background processes (WAL writer, checkpointer) are
  not counted.
- PostgreSQL, whole server: every process of the server (the postmaster's
  process tree: backends, WAL writer, checkpointer, …) plus what its reaped
  children used (the postmaster's cutime/cstime), before and after. It also
  catches short-lived backends (django-post-office reconnects for every batch)
  that sampling misses, but counts other databases' work too: meaningful when
  nothing else uses the server, which the final run waits for.
- Transactions: xact_commit + xact_rollback of the database in
  pg_stat_database, before and after. Backends publish these counters when
  they go idle (at most once a second) and when they exit: read the end after
  the service's processes were stopped.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_cpu(pid: int) -> float | None:
    """utime + stime of one process in seconds (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def process_times(pid: int) -> tuple[float, float] | None:
    """(utime, stime) of one process in seconds (None when it is gone)."""
    fields = _stat(pid)
    if fields is None:
        return None
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def server_cpu(postmaster: int) -> float:
    """CPU seconds of a PostgreSQL server so far: its live processes, and the
    children the postmaster has reaped (cutime + cstime)."""
    fields = _stat(postmaster)
    if fields is None:
        return 0.0
    total = (int(fields[13]) + int(fields[14])) / TICKS
    for pid in descendants(postmaster):
        total += process_cpu(pid) or 0.0
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # without guest time, already in user
    return (total - idle) / TICKS, total / TICKS


def descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{current}/task/{task}/children") as handle:
                    stack += [int(p) for p in handle.read().split()]
    return found


class Meter:
    def __init__(self, stack, *, interval: float = 0.3):
        self.stack = stack
        self.interval = interval
        self.roots: list[int] = []
        self._process_base: dict[int, float] = {}
        self._process_last: dict[int, float] = {}
        self._system_base: dict[int, float] = {}
        self._system_last: dict[int, float] = {}
        self._backend_base: dict[int, float] = {}
        self._backend_last: dict[int, float] = {}
        self._excluded: set[int] = set()
        self._xacts_before: int | None = None
        self._postmaster: int | None = None
        self._server_before = self._server_after = None
        self._admin = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = self.ended = 0.0

    # --- setup ---------------------------------------------------------------

    @property
    def postgres(self) -> bool:
        return bool(getattr(self.stack, "_pg_admin", None) and self.stack.database_name)

    def _connect(self):
        import psycopg

        return psycopg.connect(**self.stack._pg_admin, autocommit=True)  # noqa: SLF001 - the bench's own stack

    def start(self, *pids: int) -> Meter:
        """Baseline now; `pids` (and their descendants) are already running."""
        if self.postgres:
            self._admin = self._connect()
            self._xacts_before = self._xacts()
            backend = self._admin.execute("SELECT pg_backend_pid()").fetchone()[0]
            fields = _stat(backend)  # the server runs here: its postmaster is our backend's parent
            self._postmaster = int(fields[1]) if fields else None
            self._server_before = server_cpu(self._postmaster) if self._postmaster else None
            for pid, cpu in self._backends().items():
                self._backend_base[pid] = cpu
        for pid in pids:
            self.add(pid, existing=True)
        self.started = time.monotonic()
        self._machine_before = machine_busy()
        self._thread = threading.Thread(target=self._run, name="bench-meter", daemon=True)
        self._thread.start()
        return self

    def add(self, pid: int, *, existing: bool = False) -> None:
        """Count `pid` and its descendants from now on (a process started after
        start() counts from zero)."""
        with self._lock:
            self.roots.append(pid)
            for child in descendants(pid):
                times = process_times(child)
                if times is not None:
                    self._process_base.setdefault(child, sum(times) if existing else 0.0)
                    self._process_last[child] = sum(times)
                    self._system_base.setdefault(child, times[1] if existing else 0.0)
                    self._system_last[child] = times[1]

    def exclude_backend(self, pid: int) -> None:
        with self._lock:
            self._excluded.add(pid)

    # --- sampling ------------------------------------------------------------------

    def _backends(self) -> dict[int, float]:
        rows = self._admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
            [self.stack.database_name],
        ).fetchall()
        found = {}
        for (pid,) in rows:
            cpu = process_cpu(pid)
            if cpu is not None:
                found[pid] = cpu
        return found

    def _xacts(self) -> int:
        row = self._admin.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", [self.stack.database_name]
        ).fetchone()
        return int(row[0]) if row else 0

    def sample(self) -> None:
        with self._lock:
            for root in self.roots:
                for pid in descendants(root):
                    times = process_times(pid)
                    if times is not None:
                        self._process_base.setdefault(pid, 0.0)  # born during the run
                        self._process_last[pid] = sum(times)
                        self._system_base.setdefault(pid, 0.0)
                        self._system_last[pid] = times[1]
        if self._admin is not None:
            backends = self._backends()
            with self._lock:
                for pid, cpu in backends.items():
                    self._backend_base.setdefault(pid, 0.0)
                    self._backend_last[pid] = cpu

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a sample that fails (a process just ended) is skipped
                self.sample()

    # --- results -------------------------------------------------------------------

    def stop_sampling(self) -> None:
        """Take the last sample (call while the measured processes still run)."""
        self.sample()
        self.ended = time.monotonic()
        self._machine_after = machine_busy()
        if self._postmaster:
            self._server_after = server_cpu(self._postmaster)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def result(self, *, own_transactions: int = 0) -> dict:
        """CPU seconds of the processes and of the database backends; the
        database's transactions minus `own_transactions` (the bench's own polls).
        Call after stop_sampling() and after the service processes were stopped."""
        with self._lock:
            processes = sum(max(0.0, self._process_last[p] - self._process_base.get(p, 0.0))
                            for p in self._process_last)
            system = sum(max(0.0, self._system_last[p] - self._system_base.get(p, 0.0))
                         for p in self._system_last)
            backends = sum(max(0.0, cpu - self._backend_base.get(pid, 0.0))
                           for pid, cpu in self._backend_last.items() if pid not in self._excluded)
        busy = self._machine_after[0] - self._machine_before[0]
        elapsed = self.ended - self.started
        out = {"seconds": round(elapsed, 3), "process_cpu_seconds": round(processes, 3),
               "process_system_seconds": round(system, 3),  # of which in the kernel (stime)
               # cores busy on average over the run, whoever used them (the machine is shared)
               "machine_busy_cores": round(busy / elapsed, 2) if elapsed > 0 else None,
               # the bench database's backends, sampled (misses backends that lived < 0.3 s)
               "postgres_backends_cpu_seconds": round(backends, 3) if self._admin is not None else None,
               # the whole PostgreSQL server's processes (anything else it did included)
               "postgres_cpu_seconds": (round(self._server_after - self._server_before, 3)
                                        if self._server_after is not None else None),
               "transactions": None}
        if self._admin is not None:
            time.sleep(1.2)  # idle backends publish their counters within a second
            out["transactions"] = max(0, self._xacts() - (self._xacts_before or 0) - own_transactions)
            self._admin.close()
            self._admin = None
        return out
