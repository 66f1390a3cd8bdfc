"""The `smtp` process (the Procfile's command) started for real on the test
database and broker, with a certificate it generated, and smtplib clients."""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connections
from django.test import Client

from config.devservices import free_port, procfile_command
from emailsvc.keys import api_key_create
from emailsvc.smtp_ingress.certificate import self_signed_certificate
from tests.conftest import BASE_DIR, wait_until

# Small enough that the size tests stay cheap.
MAX_MESSAGE_BYTES = 200_000


def non_loopback_address() -> str | None:
    """An address of this host that is not loopback (a client there is not 'local')."""
    with contextlib.suppress(OSError):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: picks the outgoing interface
            address = probe.getsockname()[0]
            if not address.startswith("127."):
                return address
    return None


@dataclass
class Ingress:
    """One running `smtp` process."""

    port: int
    tls_port: int
    cert: Path
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self) -> Ingress:
        log = open(self.log_path, "a")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(
            f"exec {procfile_command('smtp')}", shell=True, cwd=BASE_DIR, env=self.env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()

        def listening() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"the smtp process exited:\n{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return sock.recv(4).startswith(b"220")
            return False

        if not wait_until(listening, timeout=60, interval=0.1):
            raise RuntimeError(f"the smtp process did not answer:\n{self.log()}")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            self.process.wait(timeout=15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, key: str | None = None, *, host: str = "127.0.0.1") -> smtplib.SMTP:
        client = smtplib.SMTP(host, self.port, timeout=30)
        client.ehlo("tests.example.com")
        if key is not None:
            client.login("apikey", key)
        return client

    def tls_client_context(self) -> ssl.SSLContext:
        """Trusts the generated certificate only."""
        context = ssl.create_default_context(cafile=str(self.cert))
        return context


def ingress_env(directory: Path, *, port: int, tls_port: int, **overrides: str) -> tuple[dict[str, str], Path]:
    cert, key = self_signed_certificate(directory)
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        TESTS_DB_NAME=str(connections["default"].settings_dict["NAME"]),
        REDIS_URL=django_settings.REDIS_URL,
        CELERY_BROKER_URL=django_settings.CELERY_BROKER_URL,
        EMAIL_PROVIDER="smtp",
        SMTP_INGRESS_BIND="0.0.0.0",
        SMTP_INGRESS_PORT=str(port),
        SMTP_INGRESS_TLS_PORT=str(tls_port),
        SMTP_INGRESS_TLS_CERT=str(cert),
        SMTP_INGRESS_TLS_KEY=str(key),
        MAX_MESSAGE_BYTES=str(MAX_MESSAGE_BYTES),
        ALLOWED_RECIPIENT_DOMAINS="example.com,example.org,example.net",
        PYTHONUNBUFFERED="1",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    env.update(overrides)
    return env, cert


def start_ingress(directory: Path, **overrides: str) -> Ingress:
    port, tls_port = free_port(), free_port()
    env, cert = ingress_env(directory, port=port, tls_port=tls_port, **overrides)
    return Ingress(port=port, tls_port=tls_port, cert=cert, env=env, log_path=directory / "smtp.log").start()


@pytest.fixture(scope="module")
def ingress(django_db_setup, django_db_blocker, tmp_path_factory):
    """The `smtp` process of this module (STARTTLS and implicit TLS with a generated certificate)."""
    server = start_ingress(tmp_path_factory.mktemp("smtp-ingress"))
    yield server
    server.kill(signal.SIGTERM)


def wait_for_count(fetch, count: int, *, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        found = fetch()
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def key(transactional_db) -> str:
    """An API key that may send: the SMTP password of this package's clients."""
    return api_key_create(name="smtp client", permission="sending")[1]


@pytest.fixture
def api(key):
    """The REST API with that same key."""
    client = Client()
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client
