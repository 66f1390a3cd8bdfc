"""Request bodies read whole, with a bounded wait, before Django sees them (config/wsgi.py).

- Every read of the client's socket waits at most WEB_READ_TIMEOUT seconds: a
  client that stops sending its body is answered 408 `request_timeout` and its
  connection closed; one that sends slowly but steadily is served. (gunicorn's
  gevent workers read the headers within their keep-alive timeout.)
- A `Transfer-Encoding: chunked` body (gunicorn decodes the chunks) is read to
  its end and handed on with its CONTENT_LENGTH, so Django reads it as any
  other body. Past `max_bytes` it is answered 413 `payload_too_large` without
  reading further; a malformed one 400 `invalid_chunked_body`.
- A body whose Content-Length is over `max_bytes` is not read: the service's own
  checks answer 413 before a byte of it is read.

Errors are answered through core.responses, with the same JSON body as every
other error.
"""

import io
import logging

from django.core.exceptions import ImproperlyConfigured
from gunicorn.http.errors import ParseException

from core.errors import PayloadTooLarge, ValidationFailed, error_for_status
from core.responses import error_response

logger = logging.getLogger(__name__)

_STEP = 64 * 1024


def read_timeout_from(environ_value: str | None, default: float) -> float:
    """WEB_READ_TIMEOUT (seconds) from its raw value, refused unless a positive number."""
    if environ_value in (None, ""):
        return default
    try:
        seconds = float(environ_value)
    except ValueError:
        seconds = 0
    if not seconds > 0:
        raise ImproperlyConfigured(f"WEB_READ_TIMEOUT must be a positive number of seconds, not {environ_value!r}")
    return seconds


class _Refused(Exception):
    def __init__(self, error):
        self.error = error


class WholeBody:
    """WSGI middleware: the request body is in memory before `app` is called."""

    def __init__(self, app, *, max_bytes: int, read_timeout: float):
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    def __call__(self, environ, start_response):
        try:
            self._read(environ)
        except _Refused as refused:
            return self._answer(refused.error, environ, start_response)
        return self.app(environ, start_response)

    def _read(self, environ) -> None:
        sock = environ.get("gunicorn.socket")
        if sock is None:
            return  # not served by gunicorn (runserver): its input is not de-chunked
        # Also bounds writing the answer to a client that does not read it, and
        # gunicorn's reading of a body the application left unread.
        sock.settimeout(self.read_timeout)
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return  # Django answers for a malformed Content-Length
        if not chunked and not 0 < length <= self.max_bytes:
            return
        stream = environ["wsgi.input"]
        try:
            body = self._chunked(stream) if chunked else stream.read(length)
        except TimeoutError:
            self._close_after(stream)
            raise _Refused(error_for_status(
                408, f"The request body stopped arriving: nothing came for {self.read_timeout:g} seconds."
            )) from None
        except ParseException as exc:
            self._close_after(stream)
            raise _Refused(ValidationFailed(
                f"The chunked request body is malformed: {exc}", code="invalid_chunked_body"
            )) from None
        if not chunked and len(body) < length:
            self._close_after(stream)
            raise _Refused(ValidationFailed(
                f"The request body ended after {len(body):,} of the {length:,} bytes its Content-Length announced.",
                code="incomplete_body",
            ))
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)

    def _chunked(self, stream) -> bytes:
        parts, size = [], 0
        while part := stream.read(min(_STEP, self.max_bytes + 1 - size)):
            parts.append(part)
            size += len(part)
            if size > self.max_bytes:
                self._close_after(stream)
                raise _Refused(PayloadTooLarge(
                    f"The request body is larger than the allowed maximum ({self.max_bytes:,} bytes)."
                ))
        return b"".join(parts)

    @staticmethod
    def _close_after(stream) -> None:
        # gunicorn's own mark for a body it could not read to its end: the
        # connection is closed after the answer instead of drained for reuse.
        stream.failed = True

    @staticmethod
    def _answer(error, environ, start_response):
        response = error_response(error)
        logger.info("request body refused: %s", error.code, extra={"path": environ.get("PATH_INFO", "")})
        status = f"{response.status_code} {response.reason_phrase}"
        start_response(status, [*response.items(), ("Content-Length", str(len(response.content)))])
        return [response.content]
