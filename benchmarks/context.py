"""What the figures share: run parameters, the stack, the SMTP sink, the load
generator, and in-process helpers that use the service's own code to prepare
data (this script runs Django on the same database as the service processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.payload import email_payload
from benchmarks.report import Row
from benchmarks.stack import BASE_DIR, Service, Stack
from config.devservices import free_port


@dataclass(frozen=True)
class Params:
    """How long and how hard each figure runs. `quick` is a ~2-minute smoke run."""

    quick: bool
    web_workers: int = 2  # WEB_CONCURRENCY's default in the Procfile
    worker_concurrency: int = 2  # WORKER_CONCURRENCY's default in the Procfile
    accept_concurrencies: tuple[int, ...] = (1, 4, 16)
    accept_seconds: float = 10
    accept_warmup: float = 1.5
    batch_sizes: tuple[int, ...] = (100, 500)
    batch_concurrency: int = 2  # one request per web worker
    batch_seconds: float = 10
    sink_processes: int = 2
    sink_clients: int = 2
    sink_seconds: float = 4
    delivery_messages: int = 1500
    delivery_workers: tuple[int, ...] = (1, 2)
    rate_limits: tuple[int, ...] = (14, 200)
    reference_rates: tuple[int, ...] = (14,)
    rate_workers: int = 4
    rate_seconds: float = 30
    drain_events: int = 3000
    e2e_limit: int = 14
    e2e_seconds: float = 20

    @classmethod
    def for_mode(cls, quick: bool) -> Params:
        if not quick:
            return cls(quick=False)
        return cls(
            quick=True, accept_seconds=2, accept_warmup=0.5, batch_seconds=3, sink_seconds=2,
            delivery_messages=300, rate_seconds=10, drain_events=500, e2e_seconds=10,
        )


@dataclass
class Bench:
    params: Params
    stack: Stack
    api_key: str = ""
    rows: list[Row] = field(default_factory=list)
    sink: Service | None = None
    sink_port: int = 0
    sink_ceiling: float | None = None
    delivery_ceiling: float | None = None  # fastest delivery seen (emails/s), for sizing later loads
    _numbers: int = 0

    # --- identities ---------------------------------------------------------------

    def numbers(self, count: int) -> int:
        """The first of `count` fresh email numbers: every email gets its own recipient."""
        first = self._numbers
        self._numbers += count
        return first

    # --- SMTP sink -----------------------------------------------------------------

    @property
    def arrivals_dir(self) -> Path:
        return self.stack.work_dir / "arrivals"

    def start_sink(self) -> int:
        from benchmarks.smtpsink import wait_ready

        if self.sink is None or self.sink.process.poll() is not None:
            self.sink_port = free_port()
            self.sink = self.stack.spawn(
                "smtp-sink",
                [sys.executable, "-m", "benchmarks.smtpsink", "serve", "--port", str(self.sink_port),
                 "--processes", str(self.params.sink_processes), "--arrivals", str(self.arrivals_dir)],
                self.stack.env(),
            )
            wait_ready("127.0.0.1", self.sink_port)
        return self.sink_port

    def arrivals(self, start: float, end: float) -> list[float]:
        """Sink arrival times (time.time()) in [start, end), once the sink has flushed them."""
        from benchmarks.smtpsink import read_arrivals

        time.sleep(max(0.0, end + 0.5 - time.time()))  # the sink flushes every 0.2 s
        return [at for at in read_arrivals(self.arrivals_dir) if start <= at < end]

    # --- load generator ---------------------------------------------------------------

    def loadgen(self, url: str, **options) -> dict:
        """Run benchmarks.loadgen in its own process; its JSON result."""
        argv = [sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--key", self.api_key]
        for name, value in options.items():
            if value is not None:
                argv += [f"--{name.replace('_', '-')}", str(value)]
        result = subprocess.run(argv, cwd=BASE_DIR, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"loadgen failed:\n{result.stderr[-3000:]}")
        return json.loads(result.stdout)

    # --- data, through the service's own code (in this process) ----------------------------

    def submit(self, count: int, *, group: str, provider: str) -> None:
        """Store `count` emails with the code behind POST /emails/batch (serializer +
        message_submit_batch), which publishes their delivery tasks after commit."""
        from django.conf import settings

        from emailsvc.serializers import SendEmailInputSerializer
        from emailsvc.services.submission import message_submit_batch

        settings.EMAIL_PROVIDER = provider  # a message keeps the provider it was accepted for
        first = self.numbers(count)
        for start in range(first, first + count, 500):
            items = []
            for n in range(start, min(first + count, start + 500)):
                serializer = SendEmailInputSerializer(data=email_payload(n, group_id=group))
                serializer.is_valid(raise_exception=True)
                items.append(serializer.validated_data)
            for result in message_submit_batch(api_key=None, items=items):
                if isinstance(result, Exception):
                    raise RuntimeError(f"seeding failed: {result}")

    def group_times(self, group: str) -> list[dict]:
        from emailsvc.models import Message

        return list(Message.objects.filter(group_id=group).values("status", "created_at", "queued_at", "sent_at"))

    def wait_group_sent(self, group: str, count: int, *, timeout: float) -> int:
        """Poll until `count` messages of the group have a sent_at; how many do."""
        from django.db import close_old_connections

        from emailsvc.models import Message

        deadline = time.monotonic() + timeout
        while True:
            close_old_connections()
            sent = Message.objects.filter(group_id=group, sent_at__isnull=False).count()
            if sent >= count or time.monotonic() > deadline:
                return sent
            time.sleep(0.25)
