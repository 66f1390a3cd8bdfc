"""
One exception hierarchy with stable codes, mapped to the JSON error body in
exactly one place (`api_exception_handler`).

Every error body is ``{"error": code, "detail": text}`` plus ``"fields"`` for
validation errors (SPEC §4).
"""

from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers, status
from rest_framework.response import Response


class EmailsvcError(Exception):
    """Base of every error the service reports to a caller."""

    code = "error"
    http_status = status.HTTP_400_BAD_REQUEST
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
    http_status = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The message is larger than the allowed maximum."


class Conflict(EmailsvcError):
    code = "conflict"
    http_status = status.HTTP_409_CONFLICT


class Unauthorized(EmailsvcError):
    code = "unauthorized"
    http_status = status.HTTP_401_UNAUTHORIZED
    default_detail = "A valid API key is required."


class Forbidden(EmailsvcError):
    code = "forbidden"
    http_status = status.HTTP_403_FORBIDDEN
    default_detail = "This API key may not do that."


class NotFound(EmailsvcError):
    code = "not_found"
    http_status = status.HTTP_404_NOT_FOUND
    default_detail = "Not found."


class ErrorBodySerializer(serializers.Serializer):
    """The body of every error answer (documented in the OpenAPI schema)."""

    error = serializers.CharField(help_text="Stable machine-readable code")
    detail = serializers.CharField(help_text="Human-readable explanation")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Per-field messages (validation errors only)",
    )


# DRF's own per-field error codes, mapped onto ours. Which code a response
# carries when several fields fail: the first of ours in CODE_ORDER.
_DRF_FIELD_CODES = {"required": "missing_fields", "blank": "missing_fields", "null": "missing_fields"}
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
_DETAILS = {
    "missing_fields": "Required fields are missing.",
    "invalid_address": "An email address is invalid.",
    "too_many_recipients": "Too many recipients.",
    "invalid_header": "A custom header is not allowed.",
    "invalid_attachment": "An attachment is invalid.",
    "invalid_send_at": "send_at is not a valid ISO-8601 date-time.",
    "too_many_emails": "Too many emails in one batch.",
    "invalid_field": "The request is invalid.",
}


def _flatten(errors, prefix: str = "") -> tuple[dict[str, list[str]], list[str]]:
    """DRF's nested error structure → {"field.path": [messages]} and the codes seen."""
    fields: dict[str, list[str]] = {}
    codes: list[str] = []
    if isinstance(errors, dict):
        for key, value in errors.items():
            if isinstance(key, int):
                name = f"{prefix}[{key}]"
            elif key == "non_field_errors" and prefix:
                name = prefix
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
            sub_fields, sub_codes = _flatten(value, name)
            for k, v in sub_fields.items():
                fields.setdefault(k, []).extend(v)
            codes.extend(sub_codes)
    elif isinstance(errors, list):
        if all(isinstance(item, (str, drf_exceptions.ErrorDetail)) for item in errors):
            for item in errors:
                fields.setdefault(prefix or "non_field_errors", []).append(str(item))
                codes.append(getattr(item, "code", None) or "invalid")
        else:
            for index, item in enumerate(errors):
                if item:
                    sub_fields, sub_codes = _flatten(item, f"{prefix}[{index}]")
                    for k, v in sub_fields.items():
                        fields.setdefault(k, []).extend(v)
                    codes.extend(sub_codes)
    else:
        fields.setdefault(prefix or "non_field_errors", []).append(str(errors))
        codes.append(getattr(errors, "code", None) or "invalid")
    return fields, codes


def validation_failed_from_drf(errors) -> ValidationFailed:
    """Turn serializer.errors into one ValidationFailed with a stable code."""
    fields, codes = _flatten(errors)
    ours = {_DRF_FIELD_CODES.get(code, code if code in _DETAILS else "invalid_field") for code in codes}
    code = next((c for c in CODE_ORDER if c in ours), "invalid_field")
    if code == "missing_fields":
        missing = [
            name for name, msgs in fields.items() if any("required" in m or "may not be" in m for m in msgs)
        ]
        detail = f"Missing required fields: {', '.join(sorted(missing))}." if missing else _DETAILS[code]
    else:
        field, messages = next(((f, m) for f, m in fields.items()), ("", []))
        detail = f"{_DETAILS[code]} {field}: {messages[0]}" if messages else _DETAILS[code]
    return ValidationFailed(detail, fields=fields, code=code)


def error_body(error: EmailsvcError) -> dict:
    body = {"error": error.code, "detail": error.detail}
    if error.fields is not None:
        body["fields"] = error.fields
    return body


def api_exception_handler(exc, context):
    """DRF EXCEPTION_HANDLER: every failure of the API leaves through here."""
    error = to_emailsvc_error(exc)
    if error is None:
        return None  # unexpected: let Django report a 500
    response = Response(error_body(error), status=error.http_status)
    if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    if isinstance(exc, drf_exceptions.Throttled) and exc.wait:
        response["Retry-After"] = str(int(exc.wait))
    return response


def to_emailsvc_error(exc) -> EmailsvcError | None:
    if isinstance(exc, EmailsvcError):
        return exc
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge("The request body is larger than the allowed maximum.")
    if isinstance(exc, drf_exceptions.ValidationError):
        return validation_failed_from_drf(exc.detail)
    if isinstance(exc, drf_exceptions.ParseError):
        return ValidationFailed(f"The body is not valid JSON: {exc.detail}", code="invalid_json")
    if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
        return Unauthorized(str(exc.detail))
    if isinstance(exc, drf_exceptions.PermissionDenied):
        return Forbidden(str(exc.detail))
    if isinstance(exc, Http404 | drf_exceptions.NotFound):
        return NotFound()
    if isinstance(exc, drf_exceptions.APIException):
        codes = {
            405: "method_not_allowed",
            406: "not_acceptable",
            415: "unsupported_media_type",
            429: "rate_limited",
        }
        error = EmailsvcError(str(exc.detail), code=codes.get(exc.status_code, exc.default_code))
        error.http_status = exc.status_code
        return error
    return None
