"""The open pixel `/t/o/<token>` and the click redirect `/t/c/<token>`, served
by the web process (tracking.hits). Plain Django views: a hit is answered
without the API's machinery and without a database write; a token the service
did not sign is 404."""

import base64

from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.views.decorators.http import require_safe

from core.tracking_tokens import CLICK, OPEN, token_read
from tracking.hits import click_destination, hit_record

# The smallest transparent GIF (1×1, 43 bytes).
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = "no-store, no-cache, must-revalidate, private, max-age=0"


def _client(request) -> tuple[str, str]:
    return request.META.get("HTTP_USER_AGENT", ""), request.META.get("REMOTE_ADDR", "")


@require_safe
def open_pixel_view(request, token: str):
    found = token_read(token, kind=OPEN)
    if found is None:
        raise Http404("unknown tracking token")
    if request.method == "GET":  # a HEAD (a link checker) loads no image: not an open
        user_agent, ip = _client(request)
        hit_record(token=found, user_agent=user_agent, ip=ip)
    response = HttpResponse(PIXEL_GIF, content_type="image/gif")
    response["Cache-Control"] = NO_CACHE
    return response


class _Redirect(HttpResponseRedirect):
    # The destinations are the email's own links, checked when stored: any http(s) URL.
    allowed_schemes = ["http", "https"]


@require_safe
def click_redirect_view(request, token: str):
    found = token_read(token, kind=CLICK)
    url = click_destination(found) if found is not None else None
    if url is None:
        raise Http404("unknown tracking token")
    if request.method == "GET":
        user_agent, ip = _client(request)
        hit_record(token=found, user_agent=user_agent, ip=ip, url=url)
    response = _Redirect(url)
    response["Cache-Control"] = NO_CACHE
    response["Referrer-Policy"] = "no-referrer"
    return response
