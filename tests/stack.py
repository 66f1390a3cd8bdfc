"""A private copy of the service's processes, for tests that break things.

The session `celery_worker` (tests/conftest.py) shares the test process's
broker: a test that SIGKILLs workers or restarts Redis must not disturb it, and
two workers on one broker steal each other's tasks. A `Stack` runs, on the test
database:

- its own embedded Redis (no persistence), the REDIS_URL and CELERY_BROKER_URL
  of every process in the stack; `restart_redis()` brings a fresh, empty one
  up on the same port, as a Redis restart without AOF/RDB would, and
  `stop_redis()` / `start_redis()` take it away for a while;
- optionally `database_url`: the processes reach PostgreSQL there (e.g.
  through tests/faultproxy.py) instead of at the test process's DATABASE_URL,
  still on the test database (TESTS_DB_NAME);
- a web process: the Procfile's `web` command, with WEB_CONCURRENCY=1;
- any number of `celery worker` processes (optionally with `--beat`), each in
  its own process group so `kill_workers()` can SIGKILL a worker and its pool
  children at once, as a crash or an OOM kill would.

`SmtpServer` is a real aiosmtpd server that records when each message arrived
and can hold SMTP sessions at RCPT TO (before any DATA) until told to go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import redis
from aiosmtpd.controller import Controller

from config.devservices import free_port, procfile_command, start_redis, stop
from tests.conftest import BASE_DIR, WorkerProcess, poll, start_worker, wait_until

ALL_QUEUES = "emails.high,emails.normal,emails.low,events"
# Redis keys that hold tasks (kombu's Redis transport): the queues, and the
# reserved-but-unacknowledged tasks of workers (restored only after visibility_timeout).
TASK_KEYS = ("emails.high", "emails.normal", "emails.low", "events", "unacked", "unacked_index", "unacked_mutex")
RATE_LIMIT_KEY = "emailsvc:ratelimit:send"


# --- SMTP server ----------------------------------------------------------------


@dataclass
class Arrival:
    """One message whose DATA the server accepted, and when (time.monotonic())."""

    at: float
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


class SmtpServer:
    """A real aiosmtpd SMTP server in a thread of the test process.

    `stall()` makes every new RCPT TO wait (the client has not sent DATA yet)
    until `unstall()`; a session whose client dies meanwhile never reaches DATA.
    """

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.port = free_port()
        self._lock = threading.Lock()
        self._stall = threading.Event()
        self.arrivals: list[Arrival] = []
        self.stalled_now = 0  # sessions waiting in RCPT TO at this moment
        self.stalled_total = 0  # sessions that were held at RCPT TO
        self.data_commands = 0  # DATA transactions completed by clients (accepted or not)
        self.data_delay = 0.0  # seconds each DATA takes before it is accepted
        self._controller = Controller(self, hostname=host, port=self.port, decode_data=False)

    def start(self) -> SmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._stall.clear()
        self._controller.stop()

    def reset(self) -> None:
        with self._lock:
            self._stall.clear()
            self.arrivals.clear()
            self.stalled_total = 0
            self.data_commands = 0
            self.data_delay = 0.0

    def stall(self) -> None:
        self._stall.set()

    def unstall(self) -> None:
        self._stall.clear()

    # aiosmtpd handler hooks
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self._stall.is_set():
            with self._lock:
                self.stalled_now += 1
                self.stalled_total += 1
            try:
                while self._stall.is_set():
                    await asyncio.sleep(0.02)
            finally:  # also when aiosmtpd cancels us because the client went away
                with self._lock:
                    self.stalled_now -= 1
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:
            # A slow server: the message is taken only once this wait is over, so
            # a client killed meanwhile never gets it accepted.
            await asyncio.sleep(self.data_delay)
        with self._lock:
            self.data_commands += 1
            self.arrivals.append(
                Arrival(time.monotonic(), envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        return "250 Message accepted for delivery"

    def go_down(self) -> None:
        """Stop listening (connections are refused) until `come_back()`."""
        self._controller.stop()

    def come_back(self) -> None:
        self._controller = Controller(self, hostname=self.host, port=self.port, decode_data=False)
        self._controller.start()

    # queries
    def matching(self, needle: str) -> list[Arrival]:
        wanted = needle.encode()
        with self._lock:
            return [arrival for arrival in self.arrivals if wanted in arrival.data]

    def wait_for(self, needle: str, *, count: int = 1, timeout: float = 30) -> list[Arrival]:
        return poll(lambda: self.matching(needle), until=lambda found: len(found) >= count, timeout=timeout)

    def wait_stalled(self, count: int = 1, *, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stalled_now >= count:
                return True
            time.sleep(0.02)
        return False


# --- the stack --------------------------------------------------------------------


def _killpg(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the whole process group `process` leads (started with start_new_session=True)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=15)


@dataclass
class Stack:
    """Redis + web + workers of the service on the test database, all private to one test module.

    `env` is added to the environment of every process (EMAIL_PROVIDER,
    SEND_RATE_PER_SECOND, ...); the stack sets the database, Redis and web
    variables itself. `database_url`, when given, is the DATABASE_URL of its
    processes (its database name is ignored: they use `db_name`). Call
    `start()`, and `stop()` in a finally / teardown.
    """

    directory: Path
    db_name: str
    env: dict[str, str] = field(default_factory=dict)
    name: str = "stack"
    database_url: str = ""

    redis_process: subprocess.Popen | None = None
    redis_url: str = ""
    web_process: subprocess.Popen | None = None
    web_url: str = ""
    workers: list[WorkerProcess] = field(default_factory=list)
    _started_workers: int = 0

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> Stack:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self.redis_process, self.redis_url = start_redis(directory=str(self.directory))
            self.start_web()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.kill_workers()
        if self.web_process is not None:
            _killpg(self.web_process, signal.SIGTERM)
            if self.web_process.poll() is None:
                _killpg(self.web_process, signal.SIGKILL)
            self.web_process = None
        if self.redis_process is not None:
            stop(self.redis_process)
            self.redis_process = None

    def process_env(self, **overrides: str) -> dict[str, str]:
        """The environment of a process of this stack."""
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="tests.settings",
            TESTS_DB_NAME=self.db_name,
            REDIS_URL=self.redis_url,
            CELERY_BROKER_URL=self.redis_url,
            ALLOWED_HOSTS="127.0.0.1",
            SES_EVENTS_QUEUE_URL="",  # no SES event drain: it would share the session's moto queue
            PYTHONUNBUFFERED="1",
        )
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        env.update(self.env)
        env.update(overrides)
        return env

    # --- Redis ----------------------------------------------------------------

    @property
    def redis_port(self) -> int:
        return int(self.redis_url.rsplit(":", 1)[1].split("/", 1)[0])

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=10)

    def restart_redis(self) -> None:
        """Stop Redis and start an empty one on the same port: every task it held is lost."""
        port = self.redis_port
        if self.redis_process is not None:
            stop(self.redis_process)
        self.redis_process, url = start_redis(port=port, directory=str(self.directory))
        assert url == self.redis_url, (url, self.redis_url)

    def stop_redis(self) -> None:
        """Stop Redis: its port refuses connections until `start_redis()`."""
        if self.redis_process is not None:
            stop(self.redis_process)
            self.redis_process = None

    def start_redis(self) -> None:
        """Start an empty Redis on the stack's port again (after `stop_redis()`)."""
        if self.redis_process is None:
            self.redis_process, url = start_redis(port=self.redis_port, directory=str(self.directory))
            assert url == self.redis_url, (url, self.redis_url)

    def queue_lengths(self) -> dict[str, int]:
        client = self.redis()
        try:
            return {queue: client.llen(queue) for queue in ALL_QUEUES.split(",")}
        finally:
            client.close()

    def unacked(self) -> int:
        """Tasks reserved by a worker and not yet acknowledged."""
        client = self.redis()
        try:
            return client.hlen("unacked")
        finally:
            client.close()

    def drop_tasks(self) -> None:
        """Forget every task and the rate-limit bucket, keeping kombu's queue bindings.

        (A FLUSHALL would also drop `_kombu.binding.*`; a publisher that already
        declared its queues does not declare them again, and kombu's Redis
        transport silently drops a message published to an exchange without
        bindings.)
        """
        client = self.redis()
        try:
            client.delete(*TASK_KEYS, RATE_LIMIT_KEY)
        finally:
            client.close()

    def publish(self, task: str, *, args: list, queue: str) -> None:
        """Publish a task onto this stack's broker, as the service's own Celery app would."""
        from celery import Celery

        app = Celery(f"{self.name}-publisher", set_as_current=False)
        app.config_from_object("django.conf:settings", namespace="CELERY")
        app.conf.broker_url = self.redis_url
        try:
            with app.connection_for_write() as connection:
                app.send_task(task, args=args, queue=queue, connection=connection)
        finally:
            app.close()

    # --- web ------------------------------------------------------------------

    def start_web(self) -> None:
        port = free_port()
        self.web_url = f"http://127.0.0.1:{port}"
        log_path = self.directory / "web.log"
        log = open(log_path, "w")  # noqa: SIM115 - the process owns it
        env = self.process_env(WEB_BIND="127.0.0.1", WEB_PORT=str(port), WEB_CONCURRENCY="1")
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        self.web_process = subprocess.Popen(
            f"exec {procfile_command('web')}", shell=True,
            cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()

        def ready() -> bool:
            if self.web_process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.web_log()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.web_url}/healthz", timeout=2) as response:
                    return response.status == 200
            return False

        if not wait_until(ready, timeout=60, interval=0.1):
            raise RuntimeError(f"gunicorn did not answer /healthz:\n{self.web_log()}")

    def web_log(self) -> str:
        path = self.directory / "web.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def request(self, method: str, path: str, body=None, *, key: str | None = None, timeout: float = 120):
        """(HTTP status, decoded JSON body or None) of one API call to the web process."""
        status, _headers, decoded = self.exchange(method, path, body, key=key, timeout=timeout)
        return status, decoded

    def exchange(self, method: str, path: str, body=None, *, key: str | None = None, timeout: float = 120):
        """(HTTP status, response headers, decoded JSON body or None) of one API call to the web process."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.web_url}{path}", data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, headers, raw = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, headers, raw = error.code, error.headers, error.read()
        try:
            return status, headers, json.loads(raw) if raw else None
        except ValueError:
            return status, headers, {"raw": raw.decode(errors="replace")}

    def post(self, path: str, body=None, key: str | None = None, **kwargs):
        return self.request("POST", path, {} if body is None else body, key=key, **kwargs)

    def get(self, path: str, key: str | None = None, **kwargs):
        return self.request("GET", path, key=key, **kwargs)

    # --- workers --------------------------------------------------------------

    def start_worker(
        self,
        *,
        beat: bool = False,
        concurrency: int = 2,
        queues: str = ALL_QUEUES,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """A `celery worker` on this stack's broker (with beat inside it when `beat`); waits until ready."""
        self._started_workers += 1
        label = f"{self.name}-w{self._started_workers}"
        extra: tuple[str, ...] = ()
        if beat:
            extra = ("--beat", "--schedule", str(self.directory / f"{label}-beat-schedule"))
        worker = start_worker(
            self.process_env(**(env or {})),
            self.directory / f"{label}.log",
            concurrency=concurrency,
            name=label,
            queues=queues,
            extra_args=extra,
            purge=False,
        )
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: WorkerProcess) -> None:
        """SIGKILL the worker and its pool children (its whole process group)."""
        _killpg(worker.process, signal.SIGKILL)

    def kill_workers(self) -> None:
        for worker in self.workers:
            self.kill_worker(worker)
        self.workers.clear()

    def logs(self, tail: int = 4000) -> str:
        """The ends of the web and worker logs, for assertion messages."""
        parts = [f"--- web ---\n{self.web_log()[-tail:]}"]
        for path in sorted(self.directory.glob(f"{self.name}-w*.log")):
            parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)
