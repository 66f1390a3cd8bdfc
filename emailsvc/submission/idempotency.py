"""Idempotency-Key: the first answer of a request, replayed (SPEC §4)."""

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import Conflict, ValidationFailed
from emailsvc.models import (
    ApiKey,
    IdempotencyKey,
)
from emailsvc.selectors import one_or_none

# --- Idempotency ---------------------------------------------------------------


def idempotency_request_hash(*, method: str, path: str, data) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def _idempotency_answer(*, api_key: ApiKey, key: str, request_hash: str) -> tuple[int, dict] | None:
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    record = one_or_none(IdempotencyKey.objects.filter(api_key=api_key, key=key, created_at__gte=cutoff))
    if record is None:
        return None
    if not hmac.compare_digest(record.request_hash, request_hash):
        raise Conflict(
            "This Idempotency-Key was used with a different request; use a new key for a new request.",
            code="idempotency_key_reused",
        )
    return record.response_status, record.response_body


# What a PostgreSQL jsonb value cannot hold: NUL, and a UTF-16 surrogate on its
# own (JSON can escape one, Unicode text cannot contain it). An answer that
# echoes such input (a validation error naming the bad value) shows it escaped.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(value):
    """`value` (a JSON answer) with every unstorable character written as its `\\uXXXX` escape."""
    if isinstance(value, str):
        return _UNSTORABLE.sub(lambda found: f"\\u{ord(found.group()):04x}", value) if _UNSTORABLE.search(value) else value
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


def idempotent_call(
    *, api_key: ApiKey, key: str | None, request_hash: str, call: Callable[[], tuple[int, dict]]
) -> tuple[int, dict]:
    """Run `call` once per (API key, Idempotency-Key) (SPEC §4).

    A repeat with the same key and request gets the first answer again; the
    same key with another request raises Conflict(idempotency_key_reused).
    The answer is stored in the same transaction as what `call` writes, so a
    crash cannot leave one without the other. Only successful answers are
    kept: a request that failed may be retried with the same key.
    """
    if not key:
        return call()
    if len(key) > 255 or not key.isprintable():
        raise ValidationFailed("Idempotency-Key must be 1-255 printable characters.", code="invalid_idempotency_key")
    answer = _idempotency_answer(api_key=api_key, key=key, request_hash=request_hash)
    if answer is not None:
        return answer
    try:
        with transaction.atomic():
            status, body = call()
            body = _storable(body)  # the first answer and its replays are the same
            cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
            IdempotencyKey.objects.filter(api_key=api_key, key=key, created_at__lt=cutoff).delete()
            IdempotencyKey.objects.create(
                api_key=api_key, key=key, request_hash=request_hash, response_status=status, response_body=body
            )
    except IntegrityError:
        # The same key raced us and won: answer as it did.
        answer = _idempotency_answer(api_key=api_key, key=key, request_hash=request_hash)
        if answer is None:
            raise
        return answer
    return status, body
