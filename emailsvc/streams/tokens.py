"""Unsubscribe links: `<UNSUBSCRIBE_BASE_URL>/u/<token>`, the token signed with
HMAC-SHA256 under SECRET_KEY (django.core.signing) over the recipient, its
address and the stream. A token cannot be forged or guessed from another
(a changed character fails the signature: 404), and is honoured for
UNSUBSCRIBE_TOKEN_DAYS (default 180, at least 60) after the email was built."""

from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote

from django.conf import settings
from django.core import signing

_SALT = "emailsvc.streams.unsubscribe"


@dataclass(frozen=True)
class UnsubscribeTarget:
    recipient_id: int
    email: str
    stream: str


def _signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=_SALT, algorithm="sha256")


def unsubscribe_token(*, recipient_id: int, email: str, stream: str) -> str:
    return _signer().sign_object({"r": recipient_id, "e": email, "s": stream}, compress=True)


def unsubscribe_token_read(token: str) -> UnsubscribeTarget | None:
    """What a token names, or None when it is forged, damaged or too old."""
    try:
        data = _signer().unsign_object(token, max_age=timedelta(days=settings.UNSUBSCRIBE_TOKEN_DAYS))
        return UnsubscribeTarget(recipient_id=int(data["r"]), email=str(data["e"]), stream=str(data["s"]))
    except (signing.BadSignature, ValueError, KeyError, TypeError):
        return None


def unsubscribe_headers(*, recipient_id: int, email: str, stream: str) -> dict[str, str]:
    """RFC 8058's two headers for one recipient: an https URL (http only in the
    sandbox) that takes a one-click POST, and a mailto: when UNSUBSCRIBE_MAILTO
    names a mailbox (RFC 2369)."""
    token = unsubscribe_token(recipient_id=recipient_id, email=email, stream=stream)
    links = [f"<{settings.UNSUBSCRIBE_BASE_URL}/u/{token}>"]
    if settings.UNSUBSCRIBE_MAILTO:
        links.append(f"<mailto:{settings.UNSUBSCRIBE_MAILTO}?subject={quote('unsubscribe ' + token)}>")
    return {"List-Unsubscribe": ", ".join(links), "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
