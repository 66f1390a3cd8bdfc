"""Every answer under /api/ and /webhooks/ is the JSON error body (SPEC §4).

DRF views already answer their errors through core.errors. What is left
are answers Django makes without them — an unknown URL (404), a wrong method
on a plain view (405), an exception nobody handled (500, logged with its
traceback by Django before it gets here, and only there) — a view outside
DRF failing because the database is unreachable (503 with Retry-After, as DRF
views answer it), and paths that no view should see. This middleware turns
those into the same `{"error", "detail"}` body; the admin and the rest of the
site keep Django's HTML pages.
"""

import re

from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest, HttpResponse, JsonResponse

from core.addresses import shown
from core.errors import (
    DependencyUnavailable,
    EmailsvcError,
    NotFound,
    ValidationFailed,
    error_for_status,
)
from core.responses import error_body, error_response, to_emailsvc_error

API_PREFIXES = ("/api/", "/webhooks/")
# No id, group or query value the API stores can hold a control character
# (they are refused on input), and PostgreSQL refuses NUL in a query: such a
# path names nothing, and such a query value matches nothing.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _json_error(error: EmailsvcError) -> JsonResponse:
    return JsonResponse(error_body(error), status=error.http_status)


class JsonErrorsMiddleware:
    """First in MIDDLEWARE, so it sees the answer of every layer below it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path_info.startswith(API_PREFIXES):
            return self.get_response(request)
        if _CONTROL.search(request.path_info):
            return _json_error(NotFound("There is nothing at this URL: it contains control characters."))
        try:
            refused = [
                key for key, values in request.GET.lists()
                if _CONTROL.search(key) or any(_CONTROL.search(value) for value in values)
            ]
        except SuspiciousOperation as error:  # e.g. more than DATA_UPLOAD_MAX_NUMBER_FIELDS parameters
            return _json_error(error_for_status(400, f"The query string cannot be read: {error}"))
        if refused:
            message = "may not contain control characters."
            return _json_error(
                ValidationFailed(
                    f"The query parameter {shown(refused[0])} {message}",
                    fields={key: [f"A query parameter {message}"] for key in refused},
                    code="invalid_field",
                )
            )
        response = self.get_response(request)
        if response.status_code >= 400 and not response.get("Content-Type", "").startswith("application/json"):
            replacement = _json_error(error_for_status(response.status_code))
            for header in ("Allow", "WWW-Authenticate", "Retry-After"):
                if header in response:
                    replacement[header] = response[header]
            # A crash was logged with its traceback already: Django would log the replacement once more.
            replacement._has_been_logged = getattr(response, "_has_been_logged", False)
            return replacement
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """A view under /api/ or /webhooks/ that DRF does not wrap (DRF answers its
        own through core.responses) raised: its error of the hierarchy, the
        database outage answer, or Django's 500 as before."""
        if not request.path_info.startswith(API_PREFIXES):
            return None
        if isinstance(exception, EmailsvcError):
            return error_response(exception)
        error = to_emailsvc_error(exception)
        if not isinstance(error, DependencyUnavailable):
            return None
        return error.answer(_json_error(error))
