"""One signed POST to a checked address over a kept-alive connection; redirects
are not followed and network errors are the outcome, never raised."""

from __future__ import annotations

import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass

import urllib3
from django.conf import settings
from django.utils import timezone

from tracking.webhooks.signing import webhook_sign
from tracking.webhooks.targets import (
    CONTROL_OR_SPACE,
    Target,
    TargetRefused,
    target_addresses,
    target_parse,
)

ANSWER_EXCERPT_BYTES = 1024

USER_AGENT = "emailsvc-webhooks/1.0"


@dataclass
class AttemptOutcome:
    ok: bool
    status_code: int | None = None
    error: str = ""
    duration_ms: int = 0

    @property
    def gone(self) -> bool:
        return self.status_code == 410


_pools: OrderedDict[tuple, urllib3.HTTPConnectionPool] = OrderedDict()
MAX_POOLS = 64
# A host with several addresses: the next is tried when a connection to one cannot be made.
MAX_ADDRESSES_TRIED = 3


def _pool(target: Target, address: str) -> urllib3.HTTPConnectionPool:
    """A keep-alive connection pool to `address` (the checked one) for `target`'s host."""
    key = (target.scheme, address, target.port, target.host)
    pool = _pools.get(key)
    if pool is not None:
        _pools.move_to_end(key)
        return pool
    timeout = urllib3.Timeout(connect=settings.WEBHOOK_TIMEOUT_SECONDS, read=settings.WEBHOOK_TIMEOUT_SECONDS)
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address, target.port, timeout=timeout, maxsize=1, retries=False,
            server_hostname=target.host, assert_hostname=target.host, ssl_context=_ssl_context(),
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, target.port, timeout=timeout, maxsize=1, retries=False)
    _pools[key] = pool
    while len(_pools) > MAX_POOLS:
        _pools.popitem(last=False)[1].close()
    return pool


def _ssl_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.WEBHOOK_CA_BUNDLE:
        context.load_verify_locations(cafile=settings.WEBHOOK_CA_BUNDLE)
    return context


def webhook_post(*, url: str, secret: str, webhook_id: str, body: str) -> AttemptOutcome:
    """One signed POST of `body` to `url`, to an address checked just now (the
    next one if a connection to it cannot be made); never raises for network or
    receiver errors: they are the outcome."""
    started = time.monotonic()

    def outcome(ok: bool, status_code: int | None = None, error: str = "") -> AttemptOutcome:
        return AttemptOutcome(ok, status_code, error[:1000], int((time.monotonic() - started) * 1000))

    try:
        target = target_parse(url)
        addresses = target_addresses(target)
    except TargetRefused as refused:
        return outcome(False, error=f"{refused.code}: {refused.detail}")
    headers = {
        "Host": target.host_header,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **webhook_sign(secret=secret, webhook_id=webhook_id, at=timezone.now(), body=body),
    }
    for index, address in enumerate(addresses[:MAX_ADDRESSES_TRIED]):
        try:
            status_code, excerpt = _post_to(target, address, headers, body.encode("utf-8"))
        except urllib3.exceptions.NewConnectionError as error:  # refused or unreachable: try the next address
            if index + 1 < min(len(addresses), MAX_ADDRESSES_TRIED):
                continue
            return outcome(False, error=f"{type(error).__name__}: {error}")
        except (urllib3.exceptions.HTTPError, OSError) as error:
            return outcome(False, error=f"{type(error).__name__}: {error}")
        break
    if 200 <= status_code < 300:
        return outcome(True, status_code)
    text = CONTROL_OR_SPACE.sub(" ", excerpt.decode("utf-8", errors="replace")).strip()
    return outcome(False, status_code, f"HTTP {status_code}" + (f": {text[:300]}" if text else ""))


def _post_to(target: Target, address: str, headers: dict, body: bytes) -> tuple[int, bytes]:
    """The status and the first ANSWER_EXCERPT_BYTES of the answer; redirects are not followed."""
    response = _pool(target, address).urlopen(
        "POST", target.path, body=body, headers=headers,
        redirect=False, retries=False, assert_same_host=False, preload_content=False,
    )
    complete = False
    try:
        excerpt = response.read(ANSWER_EXCERPT_BYTES, decode_content=False)
        complete = len(excerpt) < ANSWER_EXCERPT_BYTES
    finally:
        if not complete:
            response.close()  # a long answer is not read to its end: drop the connection
        response.release_conn()
    return response.status, excerpt
