"""Every answer under /api/ and /webhooks/ is the JSON error body (SPEC §4).

DRF views already answer their errors through core.errors. What is left
are answers Django makes without them — an unknown URL (404), a wrong method
on a plain view (405), an exception nobody handled (500, logged with its
traceback by Django before it gets here, and only there) — a view outside
DRF failing because the database is unreachable (503 with Retry-After, as DRF
views answer it), and paths that no view should see. This middleware turns
those into the same `{"error", "detail"}` body; the admin and the rest of the
site keep Django's HTML pages.

It also refuses, on every URL, a request whose Content-Type names a charset
that is not a text encoding (`rot13`, `zlib`, `base64`, …, or no codec at
all): the API answers 400 `invalid_charset`, the admin and other pages an
ordinary 400 page. Django decodes the query string and a form body with the
charset the request names, and fails with such a codec as it builds the
request, before any middleware (an unhandled error: a 500 from the server):
the request classes of `WsgiHandler` and `AsgiHandler` (config.wsgi,
config.asgi) leave such a charset unused, so the request reaches this
middleware.
"""

import re

from django.core.exceptions import SuspiciousOperation
from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.core.handlers.wsgi import WSGIHandler, WSGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.http import parse_header_parameters
from django.views.defaults import bad_request

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


def _text_charset(name: str) -> bool:
    """Whether bytes can be decoded to text with the charset `name`."""
    try:
        b"a".decode(name, "ignore")  # b"" would pass: no codec is tried on nothing
    except (LookupError, UnicodeError, ValueError):  # unknown, a bytes-to-bytes codec, or "undefined"
        return False
    return True


class _TextCharsetOnly:
    """A request that decodes with the charset its Content-Type names only when
    that is a text encoding (Django tries any codec); content_params keep it."""

    def _set_content_type_params(self, meta):
        self.content_type, self.content_params = parse_header_parameters(meta.get("CONTENT_TYPE", ""))
        charset = self.content_params.get("charset")
        if charset is not None and _text_charset(charset):
            self.encoding = charset


class WsgiRequest(_TextCharsetOnly, WSGIRequest):
    pass


class AsgiRequest(_TextCharsetOnly, ASGIRequest):
    pass


class WsgiHandler(WSGIHandler):
    request_class = WsgiRequest


class AsgiHandler(ASGIHandler):
    request_class = AsgiRequest


def _json_error(error: EmailsvcError) -> JsonResponse:
    return JsonResponse(error_body(error), status=error.http_status)


class JsonErrorsMiddleware:
    """First in MIDDLEWARE, so it sees the answer of every layer below it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        charset = request.content_params.get("charset")
        if charset is not None and not _text_charset(charset):
            problem = f"The Content-Type names the charset {shown(charset)}, which is not a text encoding."
            if request.path_info.startswith(API_PREFIXES):
                return _json_error(ValidationFailed(problem, code="invalid_charset"))
            return bad_request(request, SuspiciousOperation(problem))
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
