"""
One exception hierarchy with stable codes. Each class also subclasses the
matching stdlib error where callers catch that one (ValueError, ...). They
are turned into the JSON error body in one place, core.responses (the DRF
exception handler, and the answers of plain views and of core.middleware).

Every error body is ``{"error": code, "detail": text}`` plus ``"fields"`` for
validation errors (SPEC §4). Codes: the validation codes of CODE_ORDER and
invalid_json, from/reply_to/recipient_domain_not_allowed, invalid_idempotency_key,
payload_too_large (413), duplicate_email_id / idempotency_key_reused /
not_cancellable (409), service_unavailable (503, with Retry-After: the
database is unreachable), and per HTTP status STATUS_CODES (unauthorized,
forbidden, not_found, method_not_allowed, server_error, ...).
"""

from http import HTTPStatus

from django.conf import settings


class EmailsvcError(Exception):
    """Base of every error the service reports to a caller."""

    code = "error"
    http_status = 400
    default_detail = "The request could not be processed."

    def __init__(self, detail: str | None = None, *, fields: dict[str, list[str]] | None = None, code: str | None = None):
        self.detail = detail or self.default_detail
        self.fields = fields
        if code:
            self.code = code
        super().__init__(self.detail)


class ValidationFailed(EmailsvcError):
    """Bad input: the code says which rule (invalid_address, missing_fields, ...)."""

    code = "invalid_field"
    default_detail = "The request is invalid."


class PolicyViolation(ValidationFailed):
    """Input that is well-formed but not allowed by this service's policy."""


class PayloadTooLarge(ValidationFailed):
    code = "payload_too_large"
    http_status = 413
    default_detail = "The message is larger than the allowed maximum."


class Conflict(EmailsvcError):
    code = "conflict"
    http_status = 409


class Unauthorized(EmailsvcError):
    code = "unauthorized"
    http_status = 401
    default_detail = "A valid API key is required."


class Forbidden(EmailsvcError):
    code = "forbidden"
    http_status = 403
    default_detail = "This API key may not do that."


class NotFound(EmailsvcError):
    code = "not_found"
    http_status = 404
    default_detail = "Not found."


class ServerError(EmailsvcError):
    code = "server_error"
    http_status = 500
    default_detail = "The server failed to answer this request; the error has been logged."


class DependencyUnavailable(EmailsvcError):
    """A service this one cannot answer without is unreachable: the caller should
    retry after `Retry-After` seconds (settings.UNAVAILABLE_RETRY_AFTER_SECONDS)."""

    code = "service_unavailable"
    http_status = 503
    default_detail = "A service this API depends on is unavailable; retry in a few seconds."

    def answer(self, response):
        """`response` (the error body) with Retry-After, and kept out of Django's request log."""
        response["Retry-After"] = str(settings.UNAVAILABLE_RETRY_AFTER_SECONDS)
        # The outage is logged once (core.outages); Django's request logger
        # would add an error line for every 503 answered meanwhile.
        response._has_been_logged = True
        return response


class DependencyFailed(EmailsvcError):
    """A service this one called (Amazon SES or SNS) answered with an error or
    could not be reached while doing what was asked: 502."""

    code = "dependency_failed"
    http_status = 502
    default_detail = "A service this one depends on failed; the error has been logged."


# The code of an answer that carries only an HTTP status (DRF's own errors,
# and pages Django answers without a view: unknown URL, wrong method, crash).
STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "server_error",
    503: "service_unavailable",
}


def error_for_status(http_status: int, detail: str | None = None) -> EmailsvcError:
    """The error for an answer that has only a status code."""
    if http_status == 500:
        return ServerError(detail)
    if http_status == 404:
        return NotFound(detail or "There is nothing at this URL.")
    try:
        phrase = HTTPStatus(http_status).phrase
    except ValueError:
        phrase = "Error"
    code = STATUS_CODES.get(http_status) or phrase.lower().replace(" ", "_").replace("-", "_")
    error = EmailsvcError(detail or f"{phrase}.", code=code)
    error.http_status = http_status
    return error


# Which code a response carries when several fields fail: the first of ours here.
CODE_ORDER = (
    "missing_fields",
    "invalid_address",
    "too_many_recipients",
    "invalid_header",
    "invalid_attachment",
    "invalid_send_at",
    "too_many_emails",
    "invalid_field",
)
