"""API keys: create (secret shown once), revoke, authenticate (SPEC §3, §9)."""

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from django.utils import timezone

from core.sql import row_by_unique
from emailsvc.models import (
    ApiKey,
)

API_KEY_PREFIX = "es"


# --- API keys ---------------------------------------------------------------


def _hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_create(
    *, name: str, permission: str = ApiKey.Permission.SENDING, expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create a key; return it with its secret, which is never retrievable again."""
    if permission not in ApiKey.Permission.values:
        raise ValueError(f"permission must be one of {', '.join(ApiKey.Permission.values)}")
    prefix = secrets.token_hex(4)
    raw_key = f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        name=name, prefix=prefix, secret_hash=_hash_key(raw_key), permission=permission, expires_at=expires_at
    )
    return api_key, raw_key


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The active key matching `raw_key`, or None. Compares hashes in constant time."""
    parts = raw_key.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX:
        return None
    api_key = _key_by_prefix(parts[1])
    if api_key is None or not hmac.compare_digest(api_key.secret_hash, _hash_key(raw_key)):
        return None
    now = timezone.now()
    if api_key.revoked_at is not None or (api_key.expires_at is not None and api_key.expires_at <= now):
        return None
    # Record use at most once a minute per key: no write on every request.
    if api_key.last_used_at is None or api_key.last_used_at < now - timedelta(minutes=1):
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key


def _key_by_prefix(prefix: str) -> ApiKey | None:
    """The key with this prefix (unique). On PostgreSQL a plain statement read
    into the model (this runs for every API request); elsewhere the ORM."""
    return row_by_unique(ApiKey, "prefix", prefix)
