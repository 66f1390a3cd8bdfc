"""Suppressions: add (idempotent) and lift (SPEC §3)."""

from datetime import datetime

from django.utils import timezone

from emailsvc.addresses import address_forms, address_key
from emailsvc.models import (
    Suppression,
)

# --- Suppressions -----------------------------------------------------------


def suppression_add(
    *,
    email: str,
    reason: str,
    source: str = "",
    note: str = "",
    expires_at: datetime | None = None,
    keep_existing: bool = False,
) -> Suppression:
    """Suppress an address (idempotent: an existing entry is updated).

    With keep_existing (automatic suppressions from events) an active entry is
    left exactly as it is, so support's reason and note are never overwritten.
    The address is stored in its canonical form (emailsvc.addresses), the form
    sends are checked with; an address without one (an odd address in a
    provider event) is stored lower-cased rather than refused.
    """
    address = address_key(email)
    defaults = {"reason": reason, "source": source, "note": note, "expires_at": expires_at}
    if keep_existing:
        suppression, created = Suppression.objects.get_or_create(email=address, defaults=defaults)
        if not created and suppression.expires_at is not None and suppression.expires_at <= timezone.now():
            Suppression.objects.filter(pk=suppression.pk).update(**defaults, created_at=timezone.now())
            suppression.refresh_from_db()
        return suppression
    suppression, _ = Suppression.objects.update_or_create(email=address, defaults=defaults)
    return suppression


def suppression_lift(*, email: str) -> bool:
    """Remove a suppression, in whichever form it was stored; True if there was one."""
    deleted, _ = Suppression.objects.filter(email__in=address_forms(email)).delete()
    return bool(deleted)
