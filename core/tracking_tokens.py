"""Signed tokens of the open pixel and the click redirects (SPEC §4 Tracking, §9).

A token names what was hit — `o` (the open pixel) or `c` (a link), the message,
the recipient the email was addressed to and, for a link, its index among the
email's tracked links — and carries an HMAC-SHA256 of that, keyed from
SECRET_KEY (Django's signing, with a salt of its own). The ids are plain
numbers; the signature is what a guess or an edit cannot reproduce, so any
token the service did not make is refused. A token holds no URL: the
destination of a link is looked up server-side by message and index, so a
token can never send a browser anywhere the email did not link to.
"""

from dataclasses import dataclass

from django.core import signing

OPEN = "o"
CLICK = "c"
_SALT = "emailsvc.tracking-token"


@dataclass(frozen=True)
class TrackingToken:
    kind: str  # OPEN or CLICK
    message_id: int
    recipient_id: int
    link_index: int = 0


def _signer() -> signing.Signer:
    # sep "~": the token is one URL path segment, unreserved characters only.
    return signing.Signer(salt=_SALT, sep="~", algorithm="sha256")


def token_sign(token: TrackingToken) -> str:
    """The URL-safe text of `token`: `<kind>.<message>.<recipient>[.<link>]~<signature>`."""
    parts = [token.kind, str(token.message_id), str(token.recipient_id)]
    if token.kind == CLICK:
        parts.append(str(token.link_index))
    return _signer().sign(".".join(parts))


def token_read(text: str, *, kind: str) -> TrackingToken | None:
    """The token `text` stands for, if the service signed it and it is of `kind`;
    None for anything else (a bad signature, an edited id, another kind)."""
    if len(text) > 200:
        return None
    try:
        value = _signer().unsign(text)
    except signing.BadSignature:
        return None
    parts = value.split(".")
    if not parts or parts[0] != kind or len(parts) != (4 if kind == CLICK else 3):
        return None
    try:
        numbers = [int(part) for part in parts[1:]]
    except ValueError:
        return None
    return TrackingToken(kind, numbers[0], numbers[1], numbers[2] if kind == CLICK else 0)
