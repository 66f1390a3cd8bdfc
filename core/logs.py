"""Structured logs (SPEC §7): one JSON object per line from web, worker and beat alike.

Every log record — the service's own (`logging.getLogger(__name__)`, still
written stdlib-style: "delivery failed email_id=%s …"), Django's, Celery's,
gunicorn's, botocore's — goes through one `structlog.stdlib.ProcessorFormatter`
(settings.LOGGING), which adds

    timestamp (ISO 8601, UTC), level, logger, message,
    request_id (web: RequestIdMiddleware), task_id and task_name (Celery tasks),
    email_id (when the message names one: "email_id=<id>"), exception (a traceback),

and redacts every recipient address in every field (`j***@example.com`) before
the line is written. LOG_FORMAT=text renders the same fields for a human
(`make run`). Celery workers and beat keep Django's LOGGING instead of setting
up their own handlers (the `setup_logging` receiver below), so their lines,
task arguments and results included, are formatted and redacted the same way.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

import structlog
from celery import signals
from django.core.signals import request_finished
from django.dispatch import receiver
from structlog.stdlib import ProcessorFormatter

from core.redaction import redact_address

# --- Processors --------------------------------------------------------------------------

_EMAIL_ID = re.compile(r"\bemail_id=([0-9A-Za-z][0-9A-Za-z_\-]{0,99})")
_PLAIN = (int, float, bool, type(None))


def _redacted(value):
    if isinstance(value, str):
        return redact_address(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {redact_address(str(key)): _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redacted(item) for item in value]
    # Anything else is rendered as text here, so the renderer never writes an unredacted repr.
    return redact_address(str(value))


def redact_addresses(logger, method_name, event_dict):
    """Every recipient address in every field, nested ones too, becomes j***@example.com."""
    return {key: _redacted(value) for key, value in event_dict.items()}


def email_id_from_message(logger, method_name, event_dict):
    """`email_id` as a field of its own when the message names one ("… email_id=<id> …")."""
    if "email_id" not in event_dict:
        message = event_dict.get("event")
        if isinstance(message, str) and "email_id=" in message:
            found = _EMAIL_ID.search(message)
            if found:
                event_dict["email_id"] = found.group(1)
    return event_dict


_LEADING_KEYS = ("timestamp", "level", "logger", "message")


def _leading_keys_first(logger, method_name, event_dict):
    """timestamp, level, logger and message open every JSON line; the rest follow as given."""
    ordered = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


# Added to every record, the stdlib's and structlog's alike.
_COMMON = (
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
)


def _final(log_format: str) -> list:
    """From the event dict to the line: exception text, email_id, redaction, rendering."""
    head = [
        ProcessorFormatter.remove_processors_meta,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        email_id_from_message,
        redact_addresses,  # last before rendering: nothing is added after it
    ]
    if log_format == "text":
        return [*head, structlog.dev.ConsoleRenderer(colors=False)]
    return [*head, structlog.processors.EventRenamer("message"), _leading_keys_first, structlog.processors.JSONRenderer()]


def structlog_configure() -> None:
    """structlog's own loggers (structlog.get_logger) hand their events to the stdlib
    handlers, and so do Python's warnings (the "py.warnings" logger)."""
    logging.captureWarnings(True)
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *_COMMON, ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def formatter(log_format: str = "json") -> ProcessorFormatter:
    """The formatter of settings.LOGGING's handler (a dictConfig factory): "json" or "text"."""
    if log_format not in ("json", "text"):
        raise ValueError(f"log format must be json or text, not {log_format!r}")
    structlog_configure()
    return ProcessorFormatter(foreign_pre_chain=list(_COMMON), processors=_final(log_format))


# --- Web: request ids --------------------------------------------------------------------

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is kept when it looks like one (a UUID, a trace id, …); anything else is replaced.
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
_request_logger = structlog.get_logger("emailsvc.request")


class RequestIdMiddleware:
    """Gives every request an id — the caller's `X-Request-ID` when it is a plain
    token of at most 128 characters, else a new UUID — bound to every log line
    written while it is handled, echoed in the answer's `X-Request-ID`, and logs
    one line per request (method, path without the query, status, duration_ms)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        given = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        request.request_id = request_id
        started = time.perf_counter()
        # Bound until the response is closed (request_finished): Django logs a 4xx/5xx
        # answer ("django.request") after the middleware has returned it.
        structlog.contextvars.bind_contextvars(request_id=request_id)
        response = self.get_response(request)
        response.headers[REQUEST_ID_HEADER] = request_id
        _request_logger.info(
            "request",
            method=request.method,
            path=request.path,
            status=response.status_code,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return response


@receiver(request_finished)
def _request_context_clear(**kwargs) -> None:
    structlog.contextvars.unbind_contextvars("request_id")


# --- Celery: workers and beat ------------------------------------------------------------


@signals.setup_logging.connect
def _celery_logging_setup(**kwargs) -> None:
    """Workers and beat log through Django's LOGGING, not handlers of Celery's own
    (which would bypass the formatter, and so the redaction)."""
    from django.conf import settings
    from django.utils.log import configure_logging

    configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)


@signals.task_prerun.connect
def _task_context_bind(task_id=None, task=None, **kwargs) -> None:
    structlog.contextvars.bind_contextvars(task_id=task_id, task_name=getattr(task, "name", None))


@signals.task_postrun.connect
def _task_context_clear(**kwargs) -> None:
    structlog.contextvars.unbind_contextvars("task_id", "task_name")
