"""
A fault-injecting HTTP proxy for Amazon SES v2, for tests.

It is a real HTTP server (``http.server.ThreadingHTTPServer``, run in a daemon
thread inside the pytest process) that sits between the service's SES v2
client and moto's standalone server. Tests tell it to answer particular
SendEmail calls -- picked by a byte string in the raw MIME message, e.g. a
unique subject or the email id -- with a real-looking SES error, so they can
show how delivery copes with throttling (retried until sent), rejection (fails
after one attempt) and account-level pauses (messages wait).

Everything else -- other SES v2 operations, SendEmail calls that match no
rule, and matching calls once a rule's ``times`` is used up -- is forwarded to
the upstream (moto) unchanged and moto's answer is relayed unchanged. The one
exception is GetAccount, which moto does not implement: the proxy answers it
itself, with ``SendingEnabled`` set by ``account_sending_enabled``.

The Celery worker under test is a separate process; point only its SES v2
client at the proxy with botocore's service-specific endpoint variable::

    AWS_ENDPOINT_URL_SESV2=<proxy.url>   # wins over AWS_ENDPOINT_URL for "sesv2"
    AWS_ENDPOINT_URL=<moto url>          # SQS, SNS, ... keep talking to moto

Injected errors follow the SES v2 REST-JSON protocol (status code,
``x-amzn-ErrorType: <Code>:http://internal.amazon.com/coral/com.amazonaws.sesv2/``,
``Content-Type: application/json``, body ``{"message": ...}``), so botocore
raises ``ClientError`` with ``error.response["Error"]["Code"] == <Code>``
(for the modelled ones, the matching ``client.exceptions.<Code>`` subclass).

Beware: botocore retries some of these errors by itself before the caller
sees them (legacy/standard retry modes retry HTTP 429, HTTP 500 and
``Throttling``; default is up to 5 attempts in legacy mode), so with an
unconfigured client ``fail(..., times=2)`` on a throttling error is absorbed
inside one boto3 call. ``calls()`` shows every HTTP attempt.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEND_EMAIL_PATH = "/v2/email/outbound-emails"
GET_ACCOUNT_PATH = "/v2/email/account"
ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazonaws.sesv2/"

# code -> (default HTTP status, default message)
KNOWN_ERRORS: dict[str, tuple[int, str]] = {
    "TooManyRequestsException": (429, "Maximum sending rate exceeded."),
    "Throttling": (400, "Rate exceeded"),
    "MessageRejected": (400, "Email address is not verified."),
    "MailFromDomainNotVerifiedException": (400, "The MAIL FROM domain is not verified."),
    "SendingPausedException": (400, "Sending is paused for this account."),
    "AccountSuspendedException": (400, "Your account has been suspended."),
    "LimitExceededException": (400, "Daily message quota exceeded."),
    "InternalFailure": (500, "The request processing has failed because of an unknown error."),
    "BadRequestException": (400, "Bad request."),
    "NotFoundException": (404, "Resource not found."),
}

# Not relayed as-is: they describe one hop, and the proxy sets its own.
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
    "content-length",
}


@dataclass
class _Rule:
    needle: bytes
    error: str
    status: int
    message: str
    remaining: int | None  # None = every matching call


@dataclass
class _Call:
    raw: bytes
    answered: str
    message_id: str | None
    injected: bool


class SesFaultProxy:
    """Proxy SES v2 calls to ``upstream_url``, answering chosen SendEmail calls with SES errors."""

    def __init__(self, upstream_url: str):
        parsed = urllib.parse.urlsplit(upstream_url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream_url!r}")
        self.upstream_url = upstream_url.rstrip("/")
        self._upstream_host = parsed.hostname
        self._upstream_port = parsed.port or 80
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._calls: list[_Call] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        # What GetAccount answers (an account the provider paused says False).
        self.account_sending_enabled = True
        self.get_account_calls = 0

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        if self._server is not None:
            return
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, name="ses-fault-proxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> SesFaultProxy:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- rules and records ----------------------------------------------------

    def fail(
        self,
        needle: str,
        *,
        error: str,
        times: int | None = None,
        status: int | None = None,
        message: str = "",
    ) -> None:
        """Answer the next `times` (None = every) SendEmail calls whose raw MIME contains `needle` (bytes
        match on the decoded raw message, e.g. a unique subject or email id) with SES error `error`.
        Known errors and default HTTP status: TooManyRequestsException 429 ("Maximum sending rate exceeded."),
        Throttling 400, MessageRejected 400, MailFromDomainNotVerifiedException 400, SendingPausedException 400,
        AccountSuspendedException 400, LimitExceededException 400 ("Daily message quota exceeded."),
        InternalFailure 500, BadRequestException 400, NotFoundException 404.
        Another code may be used when `status` is given. Rules are tried in the order they were added."""
        if not needle:
            raise ValueError("needle must not be empty")
        if times is not None and times < 1:
            raise ValueError("times must be a positive number or None")
        default_status, default_message = KNOWN_ERRORS.get(error, (None, ""))
        if status is None:
            if default_status is None:
                raise ValueError(f"unknown SES error {error!r}: pass status= (known: {', '.join(KNOWN_ERRORS)})")
            status = default_status
        rule = _Rule(needle.encode(), error, status, message or default_message or error, times)
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> None:
        """Forget all rules and recorded calls; the account sends again."""
        with self._lock:
            self._rules.clear()
            self._calls.clear()
            self.account_sending_enabled = True
            self.get_account_calls = 0

    def calls(self, needle: str) -> list[dict]:
        """Every SendEmail call whose raw MIME contains needle, in order:
        {"answered": "error:<code>" | "sent", "message_id": str | None, "injected": bool}.
        ("error:<code>" with injected=False is an error the upstream itself returned.)"""
        wanted = needle.encode()
        with self._lock:
            return [
                {"answered": call.answered, "message_id": call.message_id, "injected": call.injected}
                for call in self._calls
                if wanted in call.raw
            ]

    # --- used by the handler --------------------------------------------------

    def _take_rule(self, raw: bytes) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining != 0 and rule.needle in raw:
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return rule
        return None

    def _record(self, raw: bytes, answered: str, message_id: str | None, injected: bool) -> None:
        with self._lock:
            self._calls.append(_Call(raw, answered, message_id, injected))


def _raw_mime(method: str, path: str, body: bytes) -> bytes | None:
    """The decoded raw MIME of an SES v2 SendEmail request, or None if this is not one (or has no Raw)."""
    if method != "POST" or urllib.parse.urlsplit(path).path.rstrip("/") != SEND_EMAIL_PATH:
        return None
    try:
        data = json.loads(body or b"{}")["Content"]["Raw"]["Data"]
        return base64.b64decode(data, validate=False)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None


def _error_code(status: int, headers: http.client.HTTPMessage, body: bytes) -> str:
    """The error code botocore would read from an upstream REST-JSON error response."""
    code = headers.get("x-amzn-ErrorType")
    if not code:
        try:
            parsed = json.loads(body)
            code = parsed.get("code") or parsed.get("Code") or parsed.get("__type")
        except (ValueError, AttributeError):
            code = None
    if not code:
        return str(status)
    return str(code).split(":", 1)[0].rsplit("#", 1)[-1]


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: SesFaultProxy
    protocol_version = "HTTP/1.1"
    server_version = "SesFaultProxy"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        if self.command == "GET" and urllib.parse.urlsplit(self.path).path.rstrip("/") == GET_ACCOUNT_PATH:
            self._send_account()
            return
        raw = _raw_mime(self.command, self.path, body)
        if raw is not None:
            rule = self.owner._take_rule(raw)
            if rule is not None:
                self.owner._record(raw, f"error:{rule.error}", None, injected=True)
                self._send_error(rule)
                return
        status, reason, headers, response_body = self._forward(body)
        if raw is not None:
            if 200 <= status < 300:
                try:
                    message_id = json.loads(response_body).get("MessageId")
                except (ValueError, AttributeError):
                    message_id = None
                self.owner._record(raw, "sent", message_id, injected=False)
            else:
                self.owner._record(raw, f"error:{_error_code(status, headers, response_body)}", None, injected=False)
        self.send_response_only(status, reason)
        for name, value in headers.items():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(response_body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response_body)

    def _forward(self, body: bytes) -> tuple[int, str, http.client.HTTPMessage, bytes]:
        owner = self.owner
        connection = http.client.HTTPConnection(owner._upstream_host, owner._upstream_port, timeout=60)
        try:
            connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    connection.putheader(name, value)
            if body or self.command in ("POST", "PUT", "PATCH"):
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body or None)
            response = connection.getresponse()
            return response.status, response.reason, response.headers, response.read()
        except OSError as exc:
            payload = json.dumps({"message": f"SesFaultProxy: upstream {owner.upstream_url} failed: {exc}"}).encode()
            headers = http.client.HTTPMessage()
            headers["Content-Type"] = "application/json"
            return 502, "Bad Gateway", headers, payload
        finally:
            connection.close()

    def _send_account(self) -> None:
        with self.owner._lock:
            self.owner.get_account_calls += 1
            enabled = self.owner.account_sending_enabled
        payload = json.dumps({
            "SendingEnabled": enabled, "EnforcementStatus": "HEALTHY" if enabled else "SHUTDOWN",
            "ProductionAccessEnabled": True, "DedicatedIpAutoWarmupEnabled": False,
            "SendQuota": {"Max24HourSend": 50000.0, "MaxSendRate": 14.0, "SentLast24Hours": 0.0},
        }).encode()
        self.send_response_only(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _send_error(self, rule: _Rule) -> None:
        payload = json.dumps({"message": rule.message}).encode()
        self.send_response_only(rule.status)
        self.send_header("Date", self.date_time_string())
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("x-amzn-ErrorType", rule.error + ERROR_TYPE_SUFFIX)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle
