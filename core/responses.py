"""
Errors as answers: the one place the JSON error body (SPEC §4) is made.

`api_exception_handler` is DRF's EXCEPTION_HANDLER; `error_response` answers
for plain Django views and core.middleware. Both go through
`to_emailsvc_error`, which also turns a database that went away into 503
`service_unavailable` (with Retry-After).
"""

import logging
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError as DatabaseInterfaceError
from django.db import OperationalError as DatabaseOperationalError
from django.db import connections
from django.db.backends.signals import connection_created
from django.dispatch import receiver
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers
from rest_framework.response import Response

from core.errors import (
    CODE_ORDER,
    STATUS_CODES,
    DependencyUnavailable,
    EmailsvcError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    ValidationFailed,
    error_for_status,
)
from core.outages import outage

logger = logging.getLogger(__name__)


class ErrorBodySerializer(serializers.Serializer):
    """The body of every error answer (documented in the OpenAPI schema)."""

    error = serializers.CharField(help_text="Stable machine-readable code")
    detail = serializers.CharField(help_text="Human-readable explanation")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Per-field messages (validation errors only)",
    )


# DRF's own per-field error codes, mapped onto ours (core.errors.CODE_ORDER).
_DRF_AUTH_CODES = {None, "authentication_failed", "not_authenticated", "unauthorized"}
_DRF_FIELD_CODES = {"required": "missing_fields", "blank": "missing_fields", "null": "missing_fields"}


@dataclass(frozen=True)
class _Problem:
    field: str
    message: str
    code: str


def _flatten(errors, prefix: str = "") -> list[_Problem]:
    """DRF's nested error structure → one problem per message, with its field path and code."""
    problems: list[_Problem] = []
    if isinstance(errors, dict):
        for key, value in errors.items():
            if isinstance(key, int):
                name = f"{prefix}[{key}]"
            elif key == "non_field_errors" and prefix:
                name = prefix
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
            problems.extend(_flatten(value, name))
    elif isinstance(errors, list):
        if all(isinstance(item, (str, drf_exceptions.ErrorDetail)) for item in errors):
            for item in errors:
                problems.append(_Problem(prefix or "non_field_errors", str(item), getattr(item, "code", None) or "invalid"))
        else:
            for index, item in enumerate(errors):
                if item:
                    problems.extend(_flatten(item, f"{prefix}[{index}]"))
    else:
        problems.append(_Problem(prefix or "non_field_errors", str(errors), getattr(errors, "code", None) or "invalid"))
    return problems


def _our_code(drf_code: str) -> str:
    return _DRF_FIELD_CODES.get(drf_code, drf_code if drf_code in CODE_ORDER else "invalid_field")


def _sentence(problem: _Problem) -> str:
    """The problem as a sentence that names its field (once)."""
    if problem.field == "non_field_errors" or problem.message.startswith(f"{problem.field} "):
        return problem.message
    return f"{problem.field}: {problem.message}"


def validation_failed_from_drf(errors) -> ValidationFailed:
    """Turn serializer.errors into one ValidationFailed with a stable code.

    The code is the first of CODE_ORDER among the problems; the detail states
    that problem itself (and how many others there are), never a generic line.
    """
    problems = _flatten(errors)
    fields: dict[str, list[str]] = {}
    for problem in problems:
        fields.setdefault(problem.field, []).append(problem.message)
    ours = [_our_code(problem.code) for problem in problems]
    code = next((c for c in CODE_ORDER if c in ours), "invalid_field")
    if not problems:
        return ValidationFailed("The request is invalid.", fields=fields, code=code)
    chosen = [problem for problem, our in zip(problems, ours, strict=True) if our == code]
    if code == "missing_fields":
        generic = {"This field is required.", "This field may not be null.", "This field may not be blank."}
        missing = sorted({p.field for p in chosen if p.message in generic})
        explained = [p for p in chosen if p.message not in generic]
        parts = [f"Missing required fields: {', '.join(missing)}."] if missing else []
        parts += list(dict.fromkeys(p.message for p in explained))
        detail = " ".join(parts)
        others = len(problems) - len(chosen)
    else:
        detail = _sentence(chosen[0])
        others = len(problems) - 1
    if others:
        detail += f" ({others} more problem{'s' if others > 1 else ''}: see fields.)"
    return ValidationFailed(detail, fields=fields, code=code)


def error_body(error: EmailsvcError) -> dict:
    body = {"error": error.code, "detail": error.detail}
    if error.fields is not None:
        body["fields"] = error.fields
    return body


def error_response(error: EmailsvcError) -> JsonResponse:
    """The answer to `error` from a view outside DRF."""
    response = JsonResponse(error_body(error), status=error.http_status)
    if isinstance(error, DependencyUnavailable):
        error.answer(response)
    return response


def api_exception_handler(exc, context):
    """DRF EXCEPTION_HANDLER: every failure of the API leaves through here."""
    error = to_emailsvc_error(exc)
    if error is None:
        return None  # unexpected: let Django report a 500
    response = Response(error_body(error), status=error.http_status)
    if isinstance(error, DependencyUnavailable):
        error.answer(response)
    if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    if isinstance(exc, drf_exceptions.Throttled) and exc.wait:
        response["Retry-After"] = str(int(exc.wait))
    return response


def to_emailsvc_error(exc) -> EmailsvcError | None:
    if isinstance(exc, EmailsvcError):
        return exc
    if isinstance(exc, _connection_error_classes()):
        # Any other database error (a statement timeout, a deadlock, a missing
        # table) is not an outage: it stays a 500, logged with its traceback.
        return database_unavailable(exc) if _database_connection_lost() else None
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge("The request body is larger than the allowed maximum.")
    if isinstance(exc, drf_exceptions.ValidationError):
        return validation_failed_from_drf(exc.detail)
    if isinstance(exc, drf_exceptions.ParseError):
        return ValidationFailed(f"The body is not valid JSON: {exc.detail}", code="invalid_json")
    if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
        # A code of our own (api_key_revoked, api_key_expired) is kept; DRF's are `unauthorized`.
        code = getattr(exc.detail, "code", None)
        return Unauthorized(str(exc.detail), code=None if code in _DRF_AUTH_CODES else code)
    if isinstance(exc, drf_exceptions.PermissionDenied):
        return Forbidden(str(exc.detail))
    if isinstance(exc, Http404 | drf_exceptions.NotFound):
        return NotFound()
    if isinstance(exc, drf_exceptions.APIException):
        error = error_for_status(exc.status_code, str(exc.detail))
        if exc.status_code not in STATUS_CODES:
            error.code = exc.default_code
        return error
    return None


# --- the database going away -------------------------------------------------------

_database_outage = outage("the database")


def _connection_error_classes() -> tuple[type[Exception], ...]:
    """Django's wrapped OperationalError and InterfaceError, and the driver's own
    (psycopg's, sqlite3's), raised when a raw driver connection is used unwrapped."""
    driver = connections["default"].Database
    return (DatabaseOperationalError, DatabaseInterfaceError, driver.OperationalError, driver.InterfaceError)


def _database_connection_lost() -> bool:
    """Whether a database error left this thread without a working connection:
    none could be opened (refused, timed out, too many clients, the server
    starting or shutting down), or the open one broke or was closed under it.
    Django discards such a connection when the request ends (close_old_connections,
    or the health check of the next request), so that one connects afresh."""
    for connection in connections.all(initialized_only=True):
        raw = connection.connection
        if raw is None:
            if connection.errors_occurred:  # the last attempt to connect failed
                return True
        elif getattr(raw, "broken", False) or getattr(raw, "closed", False):
            return True
    return False


def database_unavailable(error: BaseException) -> DependencyUnavailable:
    """The answer to a request that failed because the database is unreachable;
    the first such failure of an outage is logged (one line, no traceback)."""
    _database_outage.failed(
        error, action=f"the API answers 503 (Retry-After: {settings.UNAVAILABLE_RETRY_AFTER_SECONDS}) until it is back"
    )
    return DependencyUnavailable("The database is unavailable; retry in a few seconds.")


@receiver(connection_created)
def _database_back(**kwargs) -> None:
    """A new connection opened: the database answers (again)."""
    _database_outage.succeeded()
