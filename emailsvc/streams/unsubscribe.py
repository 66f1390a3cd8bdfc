"""/u/<token>: RFC 8058 one-click unsubscribe, outside the API (no key, no
login, no cookies, no CSRF token: the signed token is the authority).

POST unsubscribes the link's recipient from its stream (idempotent); GET only
shows a small page — link scanners fetch GETs, so a GET never unsubscribes —
with a button that POSTs, or, once unsubscribed, one that re-subscribes.
A forged, damaged or expired token is 404."""

from html import escape

from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from emailsvc.streams.selectors import stream_suppressions_of
from emailsvc.streams.services import stream_resubscribe, stream_unsubscribe
from emailsvc.streams.tokens import UnsubscribeTarget, unsubscribe_token_read

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}}
button{{font-size:1rem;padding:.5rem 1rem}}</style></head>
<body><h1>{title}</h1><p>{text}</p>{form}</body></html>
"""


def _target(token: str) -> UnsubscribeTarget:
    target = unsubscribe_token_read(token)
    if target is None:
        raise Http404("No such link.")
    return target


def _unsubscribed(target: UnsubscribeTarget) -> bool:
    return any(row.stream_id == target.stream for row in stream_suppressions_of(email=target.email))


def _page(title: str, text: str, *, action: str = "", field: str = "", button: str = "", status: int = 200) -> HttpResponse:
    form = ""
    if action:
        form = (
            f'<form method="post" action="{escape(action)}"><input type="hidden" name="{field}" value="One-Click">'
            f"<button type=\"submit\">{escape(button)}</button></form>"
        )
    body = _PAGE.format(title=escape(title), text=text, form=form)
    response = HttpResponse(body, status=status, content_type="text/html; charset=utf-8")
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"
    return response


@csrf_exempt
@require_http_methods(["GET", "HEAD", "POST"])
def unsubscribe_view(request: HttpRequest, token: str) -> HttpResponse:
    target = _target(token)
    who, stream = escape(target.email), escape(target.stream)
    if request.method == "POST":
        stream_unsubscribe(target=target)
        return _page(
            "You are unsubscribed", f"{who} will receive no more <b>{stream}</b> emails.",
            action=f"/u/{token}/resubscribe", field="Resubscribe", button="Re-subscribe",
        )
    if _unsubscribed(target):
        return _page(
            "You are unsubscribed", f"{who} receives no <b>{stream}</b> emails.",
            action=f"/u/{token}/resubscribe", field="Resubscribe", button="Re-subscribe",
        )
    return _page(
        "Unsubscribe?", f"Stop sending <b>{stream}</b> emails to {who}?",
        action=f"/u/{token}", field="List-Unsubscribe", button="Unsubscribe",
    )


@csrf_exempt
@require_http_methods(["POST"])
def resubscribe_view(request: HttpRequest, token: str) -> HttpResponse:
    target = _target(token)
    stream_resubscribe(email=target.email, stream=target.stream)
    return _page(
        "You are subscribed again", f"{escape(target.email)} receives <b>{escape(target.stream)}</b> emails again.",
        action=f"/u/{token}", field="List-Unsubscribe", button="Unsubscribe",
    )
