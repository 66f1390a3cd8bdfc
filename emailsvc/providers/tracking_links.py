"""emailsvc's own open and click tracking, for providers that track nothing
themselves (smtp, sandbox, console): the open pixel and the rewritten links of
a tracked email's HTML part (SPEC §4 Tracking, §6.5).

Only the HTML part is touched (a text part has no pixel to load, and its links
stay readable). Links that are left as they are: anything but http(s) —
`mailto:`, `tel:`, anchors (`#…`) —, the email's List-Unsubscribe targets, and
any `<a>` marked `data-emailsvc-notrack`. Each tracked link is numbered in the
order it appears; `tracked_links` lists the destinations in that order, which
is what the click redirect looks up (by message and number), so the same HTML
always gives the same numbering.
"""

import html as html_text
import itertools
import re

from django.conf import settings

from core.tracking_tokens import CLICK, OPEN, TrackingToken, token_sign

_ANCHOR = re.compile(r"<a\b[^>]*>", re.IGNORECASE)
_HREF = re.compile(r"""(\shref\s*=\s*)("[^"]*"|'[^']*'|[^\s"'>]+)""", re.IGNORECASE)
_NOTRACK = re.compile(r"\sdata-emailsvc-notrack\b", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_ANGLE_URL = re.compile(r"<([^>]*)>")


def track_requested(requested: dict | None, default: dict | None = None) -> dict:
    """The tracking a send gets: what it asked for (`track`: it decides both,
    an omitted one is off), else its stream's default (`default`), else off."""
    chosen = requested if requested is not None else (default or {})
    return {"opens": bool(chosen.get("opens", False)), "clicks": bool(chosen.get("clicks", False))}


def tracking_base_url() -> str:
    """TRACKING_DOMAIN as the base URL of the pixel and the redirects."""
    base = settings.TRACKING_DOMAIN.rstrip("/")
    return base if "://" in base else f"https://{base}"


def unsubscribe_targets(headers: dict) -> set[str]:
    """The URLs of the email's List-Unsubscribe header (never rewritten)."""
    value = next((str(v) for name, v in headers.items() if name.lower() == "list-unsubscribe"), "")
    return {url.strip() for url in _ANGLE_URL.findall(value)}


def _destination(tag: str, unsubscribe: set[str]) -> tuple[re.Match, str] | None:
    """The href of an `<a>` tag and the URL it leads to, if the link is to be tracked."""
    if _NOTRACK.search(tag):
        return None
    href = _HREF.search(tag)
    if href is None:
        return None
    value = href.group(2)
    if value[:1] in "\"'":
        value = value[1:-1]
    url = html_text.unescape(value).strip()
    if not url.lower().startswith(("http://", "https://")) or url in unsubscribe:
        return None
    if url.startswith(tracking_base_url() + "/t/"):
        return None
    return href, url


def tracked_links(html: str, *, headers: dict) -> list[str]:
    """The destinations of the links of `html` that tracking rewrites, in order."""
    unsubscribe = unsubscribe_targets(headers)
    return [found[1] for tag in _ANCHOR.findall(html) if (found := _destination(tag, unsubscribe))]


def html_tracked(html: str, *, message_id: int, recipient_id: int, headers: dict, opens: bool, clicks: bool) -> str:
    """`html` with its trackable links pointing at `/t/c/<token>` (`clicks`) and
    the open pixel `/t/o/<token>` before `</body>` (`opens`)."""
    base = tracking_base_url()
    if clicks:
        unsubscribe = unsubscribe_targets(headers)
        counter = itertools.count()

        def rewrite(anchor: re.Match) -> str:
            tag = anchor.group(0)
            found = _destination(tag, unsubscribe)
            if found is None:
                return tag
            href, _ = found
            token = token_sign(TrackingToken(CLICK, message_id, recipient_id, next(counter)))
            return f'{tag[: href.start()]}{href.group(1)}"{base}/t/c/{token}"{tag[href.end():]}'

        html = _ANCHOR.sub(rewrite, html)
    if opens:
        token = token_sign(TrackingToken(OPEN, message_id, recipient_id))
        pixel = (
            f'<img src="{base}/t/o/{token}" width="1" height="1" alt="" '
            'style="display:block;width:1px;height:1px;border:0" />'
        )
        ends = list(_BODY_END.finditer(html))
        html = f"{html[: ends[-1].start()]}{pixel}{html[ends[-1].start():]}" if ends else html + pixel
    return html
