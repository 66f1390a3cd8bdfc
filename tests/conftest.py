"""Shared fixtures: API clients with keys, and the real servers at every boundary —
an aiosmtpd SMTP server, moto's standalone AWS server, and a Celery worker process."""

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import boto3
import pytest
from aiosmtpd.controller import Controller
from django.conf import settings as django_settings
from django.db import connections
from rest_framework.test import APIClient

from config.devservices import free_port, start_moto, stop
from emailsvc.keys import api_key_create
from emailsvc.models import ApiKey, Message, Status
from templates_app.models import TemplateVersion
from templates_app.services import template_create

BASE_DIR = Path(__file__).resolve().parent.parent
PENDING = {Status.QUEUED, Status.SENDING, Status.SCHEDULED}


# --- API clients ------------------------------------------------------------


@pytest.fixture
def make_client(db):
    def make(permission: str = ApiKey.Permission.SENDING, *, header: str = "bearer") -> APIClient:
        _, raw_key = api_key_create(name=f"test {permission}", permission=permission)
        client = APIClient()
        if header == "bearer":
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
        else:
            client.credentials(HTTP_X_API_KEY=raw_key)
        client.raw_key = raw_key
        return client

    return make


@pytest.fixture
def api(make_client) -> APIClient:
    """A client whose key may send."""
    return make_client(ApiKey.Permission.SENDING)


def wait_for_status(email_id: str, *, timeout: float = 30, pending=PENDING) -> Message:
    """Poll the database until the message leaves the pending states."""
    deadline = time.monotonic() + timeout
    while True:
        message = Message.objects.get(email_id=email_id)
        if message.status not in pending or time.monotonic() > deadline:
            return message
        time.sleep(0.1)


def poll(fetch, *, until, timeout: float = 30, interval: float = 0.05):
    """Call `fetch` until `until(result)` holds or `timeout` passes; the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if until(result) or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def deliver_now(*, priority: str = "low") -> int:
    """Run the delivery engine in this process, as a worker's tasks would, until
    it claims nothing more; how many messages it claimed."""
    from emailsvc.delivery.engine import deliver_due

    claimed = 0
    while (result := deliver_due(priority=priority)).claimed:
        claimed += result.claimed
    return claimed


def wait_until(predicate, *, timeout: float = 30, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy (returned) or `timeout` passes (last value)."""
    return poll(predicate, until=bool, timeout=timeout, interval=interval)


# --- SMTP server ------------------------------------------------------------


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)


@dataclass
class SmtpSink:
    """Everything a real aiosmtpd server received, in order."""

    host: str
    port: int
    received: list[ReceivedMail] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    refusals: list[str] = field(default_factory=list)
    recipient_refusals: dict[str, list[str]] = field(default_factory=dict)

    def refuse_next(self, reply: str) -> None:
        """Answer the next DATA with `reply` (e.g. "550 5.1.1 no such user") instead of 250."""
        with self.lock:
            self.refusals.append(reply)

    def refuse_recipient(self, address: str, reply: str, *, times: int = 1) -> None:
        """Answer the next `times` RCPT TO:<address> with `reply` instead of 250."""
        with self.lock:
            self.recipient_refusals.setdefault(address.lower(), []).extend([reply] * times)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            pending = self.recipient_refusals.get(address.lower())
            if pending:
                return pending.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            if self.refusals:
                return self.refusals.pop(0)
            self.received.append(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 Message accepted for delivery"

    def matching(self, needle: str) -> list[ReceivedMail]:
        with self.lock:
            return [mail for mail in self.received if needle.encode() in mail.data]

    def wait_for(self, needle: str, *, count: int = 1, timeout: float = 30) -> list[ReceivedMail]:
        return poll(lambda: self.matching(needle), until=lambda found: len(found) >= count, timeout=timeout)


@pytest.fixture(scope="session")
def smtp_server():
    sink = SmtpSink(host="127.0.0.1", port=free_port())
    controller = Controller(sink, hostname=sink.host, port=sink.port, decode_data=False)
    controller.start()
    yield sink
    controller.stop()


# --- moto (AWS) -------------------------------------------------------------


@dataclass
class MotoServer:
    url: str

    def client(self, service: str):
        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1")

    def sent_raw_messages(self) -> list[dict]:
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/moto-api/data.json") as response:
            data = json.load(response)
        return data.get("ses", {}).get("RawMessage", []) + data.get("sesv2", {}).get("RawMessage", [])


@pytest.fixture(scope="session")
def moto_server():
    process, url = start_moto()
    server = MotoServer(url=url)
    server.client("sesv2").create_email_identity(EmailIdentity="example.com")
    # The queue the test worker publishes sandbox events to and drains.
    server.worker_events_queue_url = server.client("sqs").create_queue(QueueName="worker-ses-events")["QueueUrl"]
    yield server
    stop(process)


@dataclass
class EventsQueue:
    """A fresh SQS queue on moto, set as SES_EVENTS_QUEUE_URL for the test."""

    url: str
    sqs: object

    def put(self, *bodies) -> None:
        for body in bodies:
            self.sqs.send_message(QueueUrl=self.url, MessageBody=body if isinstance(body, str) else json.dumps(body))

    def depth(self) -> int:
        """Messages still on the queue, visible or in flight."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture
def events_queue(moto_server, settings) -> EventsQueue:
    sqs = moto_server.client("sqs")
    url = sqs.create_queue(QueueName=f"ses-events-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    settings.SES_EVENTS_QUEUE_URL = url
    settings.AWS_ENDPOINT_URL = moto_server.url
    settings.SES_EVENTS_WAIT_SECONDS = 0
    return EventsQueue(url=url, sqs=sqs)


# --- Celery worker ----------------------------------------------------------


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _worker_env(smtp_server: SmtpSink, moto_server: MotoServer) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        TESTS_DB_NAME=str(connections["default"].settings_dict["NAME"]),
        REDIS_URL=django_settings.REDIS_URL,
        CELERY_BROKER_URL=django_settings.CELERY_BROKER_URL,
        SMTP_HOST=smtp_server.host,
        SMTP_PORT=str(smtp_server.port),
        AWS_ENDPOINT_URL=moto_server.url,
        SES_EVENTS_QUEUE_URL=moto_server.worker_events_queue_url,
        DELIVERY_RETRY_BASE_SECONDS="0.2",
        DELIVERY_RETRY_MAX_SECONDS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def start_worker(
    env: dict[str, str],
    log_path: Path,
    *,
    concurrency: int = 2,
    name: str = "tests",
    queues: str = "emails.high,emails.normal,emails.low,events",
    extra_args: tuple[str, ...] = (),
    purge: bool = True,
) -> WorkerProcess:
    """A real `celery worker` process with `env`; waits until it is ready.

    `purge` empties the test process's broker first (tasks of earlier runs point
    at rows that no longer exist); a worker on another broker passes False.
    `extra_args` e.g. ("--beat", "--schedule", path) to run beat inside it.
    """
    if purge:
        from config.celery import app

        app.control.purge()
    log = open(log_path, "w")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "prefork",
            "--concurrency", str(concurrency), "--queues", queues,
            "--hostname", f"{name}-{os.getpid()}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
            *extra_args,
        ],
        cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while "ready." not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"celery worker did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.1)
    return WorkerProcess(process=process, log_path=log_path)


@pytest.fixture(scope="module")
def celery_worker(django_db_setup, django_db_blocker, smtp_server, moto_server, tmp_path_factory):
    """A real `celery worker` process on the test database, SMTP server and moto,
    for one test module: it stops when the module ends, so the modules after it
    publish to a broker nobody consumes unless they start a worker themselves.

    Tests that use it need `@pytest.mark.django_db(transaction=True)` so the
    worker sees their committed rows.
    """
    worker = start_worker(_worker_env(smtp_server, moto_server), tmp_path_factory.mktemp("worker") / "worker.log")
    yield worker
    stop(worker.process)


# --- Templates: saved through the services; API clients per permission ---

@pytest.fixture
def make_template(db):
    """Save a template (version 1) through the service; returns its TemplateVersion."""

    def make(name: str = "welcome", **fields) -> TemplateVersion:
        fields.setdefault("subject", "Hello")
        if not any(fields.get(part) for part in ("html", "text", "mjml")):
            fields["html"] = "<p>Hi {{ name }}</p>"
        return template_create(name=name, data=fields, created_by="tests")

    return make


@pytest.fixture
def full_api(make_client):
    return make_client(ApiKey.Permission.FULL)


@pytest.fixture
def read_api(make_client):
    return make_client(ApiKey.Permission.READ_ONLY)


@pytest.fixture(autouse=True)
def no_stale_drain_lock():
    """A drain killed by an earlier test must not make this test's drain skip."""
    from core.redisclient import redis_client
    from tracking.drain import DRAIN_LOCK_PREFIX

    client = redis_client()
    for key in client.scan_iter(match=DRAIN_LOCK_PREFIX + "*"):
        client.delete(key)


@pytest.fixture(scope="session", autouse=True)
def _flush_tries_again_after_a_deadlock():
    """A transactional test ends by emptying every table (TRUNCATE), while the
    processes a module started (its worker, beat, web) may still be writing:
    PostgreSQL may pick the TRUNCATE as the victim of the deadlock. The flush is
    then tried again, as any client of a deadlocked transaction would."""
    from django.db import OperationalError
    from django.test import TransactionTestCase

    original = TransactionTestCase._fixture_teardown

    def teardown(self):
        for attempt in range(5):
            try:
                return original(self)
            except OperationalError as error:
                if "deadlock detected" not in str(error) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    TransactionTestCase._fixture_teardown = teardown
    yield
    TransactionTestCase._fixture_teardown = original
