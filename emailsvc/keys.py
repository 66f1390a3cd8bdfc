"""API keys: create (secret shown once), revoke, authenticate, and the rules a
key carries into every way of sending — its sending domains and test mode
(SPEC §3, §4, §9; docs/api-keys.md), and its message streams (docs/streams.md).

The REST API and SMTP submission both authenticate here and both submit
through emailsvc.submission.submit, which asks `api_key_sender_check`: so a
key's scope and test mode hold whichever way an email comes in.
"""

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from core.errors import Forbidden, NotFound, Unauthorized, ValidationFailed
from core.sql import row_by_unique
from emailsvc.domains.services import domain_name_canonical
from emailsvc.models import ApiKey

API_KEY_PREFIX = "es"
# last_used_at is written at most this often per key: no write on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiKeyRefused(Unauthorized):
    """401 for a key that does not authenticate: `unauthorized` (unknown,
    malformed or wrong secret, as without a key), `api_key_revoked`, `api_key_expired`."""


# --- Creating and revoking ------------------------------------------------------


def _hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def _domains_canonical(domains: Iterable[str]) -> list[str]:
    """Each domain in its canonical form (lower case, IDNA), once, in the order given."""
    names: list[str] = []
    for name in domains:
        canonical = domain_name_canonical(name, field="domains")
        if canonical not in names:
            names.append(canonical)
    return names


def domain_within(domain: str, scope: Iterable[str]) -> bool:
    """Whether `domain` (canonical) is one of `scope` or a sub-domain of one."""
    return any(domain == allowed or domain.endswith("." + allowed) for allowed in scope)


def _streams_known(streams: Iterable[str]) -> list[str]:
    """The stream names, once each, in the order given; ValidationFailed(stream_not_found) for an unknown one."""
    from emailsvc.streams.selectors import streams_missing

    names = list(dict.fromkeys(streams))
    missing = streams_missing(names=names)
    if missing:
        raise ValidationFailed(
            f"There is no stream named {', '.join(missing)}.", fields={"streams": [f"Unknown: {', '.join(missing)}."]},
            code="stream_not_found",
        )
    return names


def _exceeds(
    actor: ApiKey, *, permission: str, domains: list[str], test: bool, expires_at: datetime | None,
    streams: list[str] | None = None,
) -> str:
    """What a key with these rights could do that `actor` cannot ("" when nothing)."""
    if ApiKey.RANK[permission] > ApiKey.RANK[actor.permission]:
        return f"permission '{permission}' is above this key's '{actor.permission}'"
    if actor.streams and streams is not None:
        if not streams:
            return f"this key may send only on {', '.join(actor.streams)}; a key without streams could send on any"
        outside = [name for name in streams if name not in actor.streams]
        if outside:
            return f"stream {', '.join(outside)} is outside this key's streams ({', '.join(actor.streams)})"
    if actor.domains:
        if not domains:
            return f"this key may send only from {', '.join(actor.domains)}; a key without domains could send from any"
        outside = [name for name in domains if not domain_within(name, actor.domains)]
        if outside:
            return f"{', '.join(outside)} is outside this key's domains ({', '.join(actor.domains)})"
    if actor.test and not test:
        return "this key is a test key; a live key could reach the provider"
    if actor.expires_at is not None and (expires_at is None or expires_at > actor.expires_at):
        return f"this key expires at {actor.expires_at.isoformat()}; the new one may not outlive it"
    return ""


def api_key_create(
    *,
    name: str,
    permission: str = ApiKey.Permission.SENDING,
    expires_at: datetime | None = None,
    domains: Iterable[str] = (),
    streams: Iterable[str] = (),
    test: bool = False,
    created_by: ApiKey | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; return it with its secret, which is never retrievable again.

    `domains`: the sending domains it may send from (sub-domains included;
    none: any). `streams`: the message streams it may send on (none: any). `test`:
    its emails never reach the provider. `created_by`: the key asking (the
    API); the new key may not have more rights than it — a higher permission,
    wider domains or streams, live instead of test, or a later expiry — (403
    `key_rights_exceeded`). Raises ValidationFailed (invalid_field,
    invalid_domain, stream_not_found).
    """
    name = name.strip() if isinstance(name, str) else name
    if not name or len(name) > 200:
        raise ValidationFailed("name must be 1 to 200 characters.", fields={"name": ["1 to 200 characters."]})
    if permission not in ApiKey.Permission.values:
        choices = ", ".join(ApiKey.Permission.values)
        raise ValidationFailed(f"permission must be one of {choices}.", fields={"permission": [f"One of {choices}."]})
    streams = _streams_known(streams)
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationFailed("expires_at must be in the future.", fields={"expires_at": ["Must be in the future."]})
    names = _domains_canonical(domains)
    if created_by is not None:
        problem = _exceeds(
            created_by, permission=permission, domains=names, test=test, expires_at=expires_at, streams=streams
        )
        if problem:
            raise Forbidden(f"A key cannot create a key with more rights than itself: {problem}.", code="key_rights_exceeded")
    prefix = secrets.token_hex(4)
    raw_key = f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        name=name, prefix=prefix, secret_hash=_hash_key(raw_key), permission=permission, expires_at=expires_at,
        domains=names, streams=streams, test=test, created_by=created_by,
    )
    return api_key, raw_key


def api_key_revoke(*, api_key: ApiKey, revoked_by: ApiKey | None = None) -> ApiKey:
    """Revoke the key (from now on it is refused with 401 `api_key_revoked`).
    `revoked_by`: the key asking (the API); it may not revoke a key with more
    rights than itself (403 `key_rights_exceeded`). Revoking twice changes nothing."""
    if revoked_by is not None and revoked_by.pk != api_key.pk:
        problem = _exceeds(
            revoked_by, permission=api_key.permission, domains=api_key.domains, test=api_key.test,
            expires_at=api_key.expires_at, streams=api_key.streams,
        )
        if problem:
            raise Forbidden(f"A key cannot revoke a key with more rights than itself: {problem}.", code="key_rights_exceeded")
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def api_keys_list() -> QuerySet[ApiKey]:
    """Every key, newest first (revoked and expired ones too)."""
    return ApiKey.objects.order_by("-id")


def api_key_get(*, key_id: int) -> ApiKey:
    """The key with this id, or NotFound(api_key_not_found)."""
    api_key = ApiKey.objects.filter(pk=key_id).first()
    if api_key is None:
        raise NotFound(f"There is no API key with id {key_id}.", code="api_key_not_found")
    return api_key


# --- Authenticating -------------------------------------------------------------


def api_key_identify(*, raw_key: str) -> ApiKey:
    """The active key matching `raw_key`; ApiKeyRefused (401) saying why not:
    `unauthorized`, `api_key_revoked` or `api_key_expired`. Compares hashes
    in constant time; records the use at most once a minute per key."""
    parts = raw_key.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX:
        raise ApiKeyRefused("The API key is not valid.")
    api_key = _key_by_prefix(parts[1])
    if api_key is None or not hmac.compare_digest(api_key.secret_hash, _hash_key(raw_key)):
        raise ApiKeyRefused("The API key is not valid.")
    now = timezone.now()
    if api_key.revoked_at is not None:
        raise ApiKeyRefused(f"The API key was revoked at {api_key.revoked_at.isoformat()}.", code="api_key_revoked")
    if api_key.expires_at is not None and api_key.expires_at <= now:
        raise ApiKeyRefused(f"The API key expired at {api_key.expires_at.isoformat()}.", code="api_key_expired")
    if api_key.last_used_at is None or api_key.last_used_at < now - LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The active key matching `raw_key`, or None (`api_key_identify` says why)."""
    try:
        return api_key_identify(raw_key=raw_key)
    except ApiKeyRefused:
        return None


def _key_by_prefix(prefix: str) -> ApiKey | None:
    """The key with this prefix (unique). On PostgreSQL a plain statement read
    into the model (this runs for every API request); elsewhere the ORM."""
    return row_by_unique(ApiKey, "prefix", prefix)


# --- What a key may send ------------------------------------------------------


def api_key_sender_check(*, api_key: ApiKey | None, from_domain: str) -> None:
    """Raise Forbidden(key_domain_not_allowed, 403) when `api_key` is scoped to
    sending domains and `from_domain` (canonical) is neither one of them nor a
    sub-domain of one. Every way of submitting calls this (the API, SMTP)."""
    if api_key is None or not api_key.domains or domain_within(from_domain, api_key.domains):
        return
    raise Forbidden(
        f"This API key may send only from {', '.join(api_key.domains)} (and their sub-domains), not from '{from_domain}'.",
        fields={"from": [f"Allowed for this key: {', '.join(api_key.domains)}."]},
        code="key_domain_not_allowed",
    )


def api_key_stream_check(*, api_key: ApiKey | None, stream: str) -> None:
    """Raise Forbidden(key_stream_not_allowed, 403) when `api_key` is limited to
    message streams and `stream` is not one of them. Every way of submitting
    calls this (the API, SMTP)."""
    if api_key is None or not api_key.streams or stream in api_key.streams:
        return
    raise Forbidden(
        f"This API key may send only on the stream(s) {', '.join(api_key.streams)}, not on '{stream}'.",
        fields={"stream": [f"Allowed for this key: {', '.join(api_key.streams)}."]},
        code="key_stream_not_allowed",
    )
