"""The settings of one-click unsubscribe links (emailsvc.streams; docs/streams.md),
read from the environment and checked at start-up like every other setting."""

from django.core.exceptions import ImproperlyConfigured


def unsubscribe_settings(env, *, debug: bool, provider: str) -> dict:
    """PUBLIC_BASE_URL, UNSUBSCRIBE_BASE_URL, UNSUBSCRIBE_MAILTO and UNSUBSCRIBE_TOKEN_DAYS.

    List-Unsubscribe links point at <UNSUBSCRIBE_BASE_URL>/u/<token> (default
    PUBLIC_BASE_URL): https, except with the sandbox or console provider or
    DEBUG. Empty: sends that need the header are refused (400
    unsubscribe_not_configured). Tokens work UNSUBSCRIBE_TOKEN_DAYS (≥ 60) days.
    """
    public = env.str("PUBLIC_BASE_URL", default="").rstrip("/")
    local = debug or provider in ("sandbox", "console")
    base = env.str("UNSUBSCRIBE_BASE_URL", default=public or ("http://localhost:8000" if local else "")).rstrip("/")
    if base and not (base.startswith("https://") or (local and base.startswith("http://"))):
        raise ImproperlyConfigured(
            "UNSUBSCRIBE_BASE_URL (or PUBLIC_BASE_URL) must be an https:// URL (http:// only with the sandbox or "
            f"console provider or DEBUG), got {base!r}"
        )
    try:
        days = int(env.str("UNSUBSCRIBE_TOKEN_DAYS", default="180"))
    except ValueError:
        raise ImproperlyConfigured("UNSUBSCRIBE_TOKEN_DAYS must be a whole number of days") from None
    if days < 60:
        raise ImproperlyConfigured("UNSUBSCRIBE_TOKEN_DAYS must be at least 60 (mailbox providers expect links to last)")
    mailto = env.str("UNSUBSCRIBE_MAILTO", default="").strip()
    if not mailto.isascii() or " " in mailto:
        raise ImproperlyConfigured("UNSUBSCRIBE_MAILTO must be a plain ASCII address (it goes into a mail header as written)")
    return {
        "PUBLIC_BASE_URL": public,
        "UNSUBSCRIBE_BASE_URL": base,
        # A mailbox that takes unsubscribe requests by email (a mailto: beside the URL); empty: none.
        "UNSUBSCRIBE_MAILTO": mailto,
        "UNSUBSCRIBE_TOKEN_DAYS": days,
    }
