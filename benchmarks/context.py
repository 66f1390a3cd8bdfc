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
    """How long and how hard each figure runs. `quick` is a ~4-5-minute smoke run."""

    quick: bool
    web_workers: int = 2  # WEB_CONCURRENCY's default in the Procfile
    worker_concurrency: int = 2  # WORKER_CONCURRENCY's default in the Procfile
    used_messages: int = 100_000  # figure 0: past emails in the tables before anything is measured
    accept_concurrencies: tuple[int, ...] = (1, 4, 16)
    accept_seconds: float = 10
    accept_warmup: float = 1.5
    batch_sizes: tuple[int, ...] = (100, 500)
    smtp_clients: int = 4  # SMTP submission: sessions, each sending smtp_messages emails
    smtp_messages: int = 1000
    batch_concurrency: int = 2  # one request per web worker
    batch_seconds: float = 10
    sink_processes: int = 2  # aiosmtpd fallback only
    sink_clients: int = 2
    sink_seconds: float = 4
    delivery_messages: int = 10_000
    delivery_workers: int = 1  # × worker_concurrency pool processes: "2 worker processes"
    post_office_processes: int = 2
    ses_messages: int = 6_000
    ses_latency_ms: float = 30
    ses_rate_limit: int = 500
    ses_ceiling_seconds: float = 5
    rate_limits: tuple[int, ...] = (14, 500)
    # Seconds measured per configured rate (SPEC §9: 60 s; ≥ 20 s at 500/s).
    rate_seconds: tuple[tuple[int, float], ...] = ((14, 60), (500, 20))
    reference_rates: tuple[int, ...] = (14,)
    reference_seconds: float = 30
    rate_workers: int = 4
    drain_events: int = 3000
    e2e_limit: int = 14
    e2e_seconds: float = 20
    tracking_hits: int = 10_000
    tracking_clients: tuple[int, ...] = (4, 16)
    tracking_seconds: float = 10

    @classmethod
    def for_mode(cls, quick: bool) -> Params:
        if not quick:
            return cls(quick=False)
        return cls(
            quick=True, used_messages=20_000, accept_seconds=2, accept_warmup=0.5, batch_seconds=3, sink_seconds=2,
            delivery_messages=2_000, ses_messages=1_500, ses_ceiling_seconds=2,
            rate_seconds=((14, 10), (500, 10)), reference_seconds=10, drain_events=500, e2e_seconds=10,
            tracking_hits=2_000, tracking_seconds=4,
        )

    def tracking_batch_label(self) -> str:
        from django.conf import settings

        return f"{settings.TRACKING_HITS_APPLY_BATCH} hits per transaction (TRACKING_HITS_APPLY_BATCH)"

    def seconds_at(self, rate: int) -> float:
        return dict(self.rate_seconds).get(rate, max(dict(self.rate_seconds).values()))


@dataclass
class Bench:
    params: Params
    stack: Stack
    api_key: str = ""
    rows: list[Row] = field(default_factory=list)
    sink: Service | None = None
    sink_port: int = 0
    sink_engine: str = ""  # "postfix" or "aiosmtpd"
    sink_label: str = ""  # what the rows call the sink
    sink_fallback: str = ""  # why postfix's smtp-sink was not used, if it was not
    sink_ceiling: float | None = None
    used_rows: int = 0  # messages in the tables after figure 0 (0: it did not run)
    delivery_ceiling: float | None = None  # fastest delivery seen (emails/s), for sizing later loads
    delivery_smtp_rate: float | None = None  # figure 3's SMTP row, for the reference row's ratio
    statements_per_email: float | None = None
    ses_ceilings: dict = field(default_factory=dict)  # the SES endpoint's own ceilings (emails/s) by name
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
        """The SMTP sink every figure sends to: postfix's smtp-sink when it can be
        had (benchmarks/postfix.py), else the bench's aiosmtpd processes."""
        from benchmarks.smtpsink import wait_ready

        if self.sink is None or self.sink.process.poll() is not None:
            if not self.sink_engine:
                from benchmarks.postfix import PostfixUnavailable, smtp_sink

                try:
                    sink = smtp_sink()
                    self.sink_engine, self.sink_label = "postfix", f"postfix smtp-sink ({sink.version.split('_')[1]})"
                except PostfixUnavailable as error:
                    self.sink_engine = "aiosmtpd"
                    self.sink_label = f"aiosmtpd sink ({self.params.sink_processes} processes, SO_REUSEPORT)"
                    self.sink_fallback = f"postfix's smtp-sink could not be had ({error}): the aiosmtpd fallback ran"
                    print(f"  {self.sink_fallback}", flush=True)
            self.sink_port = free_port()
            self.sink = self.stack.spawn(
                "smtp-sink",
                [sys.executable, "-m", "benchmarks.smtpsink", "serve", "--engine", self.sink_engine,
                 "--port", str(self.sink_port), "--processes", str(self.params.sink_processes),
                 "--arrivals", str(self.arrivals_dir)],
                self.stack.env(),
            )
            wait_ready("127.0.0.1", self.sink_port)
        return self.sink_port

    def used_note(self) -> str:
        """For a row's notes: the tables it ran on (figure 0)."""
        if not self.used_rows:
            return "tables not grown first (figure 0 did not run)"
        return f"tables held ≥ {self.used_rows:,} used messages (figure 0)"

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

        from emailsvc.api.emails_inputs import SendEmailInputSerializer
        from emailsvc.submission.submit import message_submit_batch

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

        return list(Message.objects.filter(group_id=group).values("status", "created_at", "queued_at",
                                                                  "sending_started_at", "sent_at"))

    def wait_sent(self, group: str, count: int, *, timeout: float, meter=None) -> tuple[int, int]:
        """Poll until `count` messages of the group have a sent_at: (how many do,
        how many polls — each one transaction of the bench's own). Tells `meter`
        which PostgreSQL backend is the bench's, so its work is not counted."""
        from django.db import close_old_connections, connection

        deadline, polls = time.monotonic() + timeout, 0
        postgres = connection.vendor == "postgresql"
        sql = ("SELECT count(*)" + (", pg_backend_pid()" if postgres else "")
               + " FROM emailsvc_message WHERE group_id = %s AND sent_at IS NOT NULL")
        while True:
            close_old_connections()
            with connection.cursor() as cursor:
                cursor.execute(sql, [group])
                row = cursor.fetchone()
            polls += 1
            if meter is not None and postgres:
                meter.exclude_backend(row[1])
            if row[0] >= count or time.monotonic() > deadline:
                return row[0], polls
            time.sleep(0.25)  # each poll counts the group's rows: not too often, it is server CPU too

    def retire_due(self) -> int:
        """Take every message still waiting to be sent (what earlier figures
        queued and did not deliver: accept's emails, rate-limit backlogs) out of
        the engine's reach — done, recipients cancelled — so the next figure's
        workers, which claim any due work, deliver only that figure's emails.
        Set-based SQL, bench bookkeeping only. How many messages it took."""
        from django.db import connection, transaction

        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "UPDATE emailsvc_message SET state = 'done', status = 'cancelled' "
                "WHERE state IN ('scheduled', 'queued', 'sending') RETURNING id"
            )
            ids = [row[0] for row in cursor.fetchall()]
            for start in range(0, len(ids), 10_000):
                part = ids[start:start + 10_000]
                cursor.execute(
                    f"UPDATE emailsvc_recipient SET status = 'cancelled' WHERE message_id IN "
                    f"({', '.join(['%s'] * len(part))}) AND status IN ('scheduled', 'queued', 'sending')", part
                )
        return len(ids)

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
