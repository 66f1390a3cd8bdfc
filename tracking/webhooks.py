"""Outbound status webhooks: subscriptions, the StatusChange outbox, signed delivery (SPEC §6.6).

How a status change reaches a caller:

1. `emailsvc.status` writes a StatusChange row in the transaction of the change
   itself; nothing here is called by it (the pipeline never waits for a receiver).
2. Beat runs `webhooks_dispatch` every WEBHOOK_DISPATCH_INTERVAL_SECONDS: it reads
   the rows after a stored cursor and creates one WebhookDelivery per (change,
   endpoint subscribed to its status), in the same transaction as it moves the
   cursor — set-based, exactly once. Ids are taken when a row is inserted but
   become visible when its transaction commits, so a lower id can appear after
   a higher one was read: the ids skipped are kept as gaps and looked for again
   for WEBHOOK_OUTBOX_GAP_SECONDS.
3. Per endpoint with due deliveries, a task `webhook_deliveries_send` (one at a
   time per endpoint, a Redis lock) POSTs them one by one, each JSON event
   signed per Standard Webhooks with the `standardwebhooks` package. The same
   `webhook-id` goes with every attempt of a delivery (at-least-once: receivers
   de-duplicate on it). A failure is retried after RETRY_DELAYS (with jitter,
   about 23 hours in all); an endpoint that has failed without a break for
   WEBHOOK_DISABLE_AFTER_HOURS, or answered 410 Gone, is disabled.

No SSRF: a target must be https (plain http only with WEBHOOK_ALLOW_HTTP) and
every address its host resolves to must be public (WEBHOOK_ALLOW_PRIVATE_TARGETS
lifts that), checked when subscribing and again before every connection; the
connection goes to the address that was checked (Host header and TLS SNI carry
the name), and redirects are not followed.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import random
import re
import secrets
import socket
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit

import idna
import urllib3
from django.conf import settings
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone
from redis.exceptions import LockError, RedisError
from standardwebhooks import Webhook

from core import metrics
from core.sql import index_lookups
from core.errors import Conflict, NotFound, ValidationFailed
from emailsvc.models import PENDING_STATUSES, PRECEDENCE, Status, StatusChange
from core.redisclient import redis_client
from emailsvc.selectors import one_or_none
from tracking.models import WebhookDelivery, WebhookEndpoint, WebhookOutboxCursor

logger = logging.getLogger(__name__)

# The statuses a status change can reach (a recipient is never moved *to* a pending one).
EVENT_TYPES = tuple(s.value for s in Status if s not in PENDING_STATUSES)
# Statuses a recipient reached by the provider has passed: sent, and delivered for these.
_AFTER_SENT = frozenset(s for s, rank in PRECEDENCE.items() if rank >= PRECEDENCE[Status.SENT])
_AFTER_DELIVERY = frozenset({Status.OPENED, Status.CLICKED, Status.COMPLAINED})
ALL_EVENTS = "*"
EVENT_TYPE_CHOICES = (*EVENT_TYPES, ALL_EVENTS)
MAX_URL_LENGTH = 2000
SECRET_BYTES = 32
# Seconds to wait after the 1st, 2nd, … failed attempt (±20 % jitter): 11 attempts
# over about 23.7 hours, then the delivery is `failed`.
RETRY_DELAYS = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800)
RETRY_JITTER = 0.2
# A sender run stops starting new POSTs after this long; the next dispatch starts another.
SEND_MAX_SECONDS = 30
SEND_CHUNK = 50
DISPATCH_BATCH = 1000
DISPATCH_MAX_BATCHES = 10
# Attempts kept in a delivery's attempt_log (there are at most 11 before an operator re-sends).
ATTEMPT_LOG_LENGTH = 20
ANSWER_EXCERPT_BYTES = 1024
MAX_GAP_RANGES = 10_000
CURSOR_NAME = "status_changes"
SEND_LOCK_PREFIX = "emailsvc:lock:webhook-send:"
SEND_QUEUED_PREFIX = "emailsvc:webhook-send-queued:"
USER_AGENT = "emailsvc-webhooks/1.0"

_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f-\x9f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
# Labels of letters, digits, "-" and "_" (some hosts have one), at most 63 long.
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")
# NAT64 (RFC 6052) embeds an IPv4 address: judge the embedded one.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


# --- Target URLs: validation and the SSRF rule ---------------------------------


class TargetRefused(Exception):
    """A webhook URL that may not be used; `code` is the API's error code."""

    def __init__(self, code: str, detail: str):
        self.code = code
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # A-label host name or IP address text (no brackets)
    port: int
    path: str  # path and query, as sent in the request line

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def target_parse(url: str) -> Target:
    """The parts of a webhook URL, or TargetRefused(invalid_webhook_url)."""

    def refuse(why: str):
        raise TargetRefused("invalid_webhook_url", f"url: {why}")

    if len(url) > MAX_URL_LENGTH:
        refuse(f"at most {MAX_URL_LENGTH} characters.")
    if _CONTROL_OR_SPACE.search(url):
        refuse("spaces and control characters are not allowed (percent-encode them).")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        refuse("must be an https:// URL.")
    if scheme == "http" and not settings.WEBHOOK_ALLOW_HTTP:
        refuse("must be https:// (plain http is allowed only with WEBHOOK_ALLOW_HTTP).")
    if "@" in parts.netloc:
        refuse("credentials in the URL are not allowed; authenticate the request by its signature.")
    if parts.fragment or url.endswith("#"):
        refuse("a fragment (#…) is not allowed.")
    try:
        port = parts.port
    except ValueError:
        refuse("the port is not a number from 1 to 65535.")
    if port == 0:
        refuse("the port is not a number from 1 to 65535.")
    host = parts.hostname or ""
    if not host:
        refuse("a host name is required.")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if host.startswith("[") or ":" in host:
            refuse("the host is not a valid address.")
        host = host.rstrip(".")
        if not host.isascii():
            try:
                host = idna.encode(host, uts46=True).decode("ascii")
            except idna.IDNAError:
                refuse("the host is not a valid host name.")
        if not _HOST_NAME.fullmatch(host):
            refuse("the host is not a valid host name.")
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    path = _NON_ASCII.sub(lambda found: quote(found.group()), path)  # the request line is ASCII
    return Target(scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80), path=path)


def address_allowed(address: str) -> bool:
    """A public unicast address: not loopback, private, link-local (169.254.169.254,
    the cloud metadata service, is one), multicast, reserved or unspecified."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not (
        ip.is_multicast or ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_reserved or ip.is_unspecified
    )


def target_addresses(target: Target) -> list[str]:
    """The addresses to connect to for `target`, every one checked: TargetRefused
    if the host does not resolve or any of its addresses is not allowed."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as error:
        raise TargetRefused("webhook_host_unresolvable", f"url: the host {target.host} does not resolve ({error}).") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise TargetRefused("webhook_host_unresolvable", f"url: the host {target.host} has no address.")
    if not settings.WEBHOOK_ALLOW_PRIVATE_TARGETS:
        refused = [a for a in addresses if not address_allowed(a)]
        if refused:
            raise TargetRefused(
                "webhook_target_not_allowed",
                f"url: {target.host} resolves to {refused[0]}, an internal address "
                "(loopback, private, link-local, multicast or reserved); "
                "only public addresses are allowed unless WEBHOOK_ALLOW_PRIVATE_TARGETS is set.",
            )
    return addresses


def webhook_url_check(url: str) -> Target:
    """Validate a URL a caller subscribes: its shape, its scheme, and (unless
    WEBHOOK_ALLOW_PRIVATE_TARGETS) that its host resolves to public addresses only."""
    try:
        target = target_parse(url)
        if not settings.WEBHOOK_ALLOW_PRIVATE_TARGETS:
            target_addresses(target)
    except TargetRefused as refused:
        raise ValidationFailed(refused.detail, fields={"url": [refused.detail]}, code=refused.code) from None
    return target


# --- Subscriptions ------------------------------------------------------------


def webhook_secret_new() -> str:
    """A Standard Webhooks signing secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def event_types_normalize(event_types: list[str]) -> list[str]:
    """The event types as stored: de-duplicated in the given order; `*` alone stands for all."""
    unknown = [t for t in event_types if t != ALL_EVENTS and t not in EVENT_TYPES]
    if unknown or not event_types:
        detail = f"event_types: unknown type {unknown[0]!r}." if unknown else "event_types: at least one is required."
        raise ValidationFailed(detail, fields={"event_types": [detail]})
    if ALL_EVENTS in event_types:
        return [ALL_EVENTS]
    return list(dict.fromkeys(event_types))


def webhook_endpoint_create(*, url: str, event_types: list[str], description: str = "") -> tuple[WebhookEndpoint, str]:
    """Subscribe `url` to status changes of `event_types`; the endpoint and its
    signing secret, which is shown this once. ValidationFailed (invalid_webhook_url,
    webhook_target_not_allowed, webhook_host_unresolvable) when the URL may not be used.
    Only changes made from now on are sent to it."""
    webhook_url_check(url)
    _cursor_ensure()  # before the endpoint: the dispatcher reads every change made after it
    secret = webhook_secret_new()
    endpoint = WebhookEndpoint.objects.create(
        url=url, event_types=event_types_normalize(event_types), description=description, secret=secret
    )
    logger.info("webhook endpoint created endpoint=%s", endpoint.public_id)
    return endpoint, secret


def webhook_endpoint_get(*, endpoint_id: str) -> WebhookEndpoint:
    endpoint = one_or_none(WebhookEndpoint.objects.filter(public_id=endpoint_id))
    if endpoint is None:
        raise NotFound(f"There is no webhook {endpoint_id!r}.", code="webhook_not_found")
    return endpoint


def webhook_endpoints():
    return WebhookEndpoint.objects.all()


def _endpoint_lock(endpoint_pk: int) -> WebhookEndpoint | None:
    # Every writer locks the endpoint row before its deliveries: one lock order.
    return one_or_none(WebhookEndpoint.objects.select_for_update().filter(pk=endpoint_pk))


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """Delete the subscription and its deliveries; nothing more is sent to it."""
    with transaction.atomic():
        locked = _endpoint_lock(endpoint.pk)
        if locked is not None:
            locked.delete()
    logger.info("webhook endpoint deleted endpoint=%s", endpoint.public_id)


def webhook_endpoint_enable(*, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """Enable a disabled endpoint: its pending deliveries are due at once and
    new changes are sent to it again (changes made while it was disabled are not)."""
    now = timezone.now()
    with transaction.atomic():
        locked = _endpoint_lock(endpoint.pk)
        if locked is None:
            raise NotFound(f"There is no webhook {endpoint.public_id!r}.", code="webhook_not_found")
        if locked.disabled_at is not None:
            WebhookEndpoint.objects.filter(pk=locked.pk).update(
                disabled_at=None, disabled_reason="", first_failure_at=None
            )
            WebhookDelivery.objects.filter(endpoint_id=locked.pk, status=WebhookDelivery.State.PENDING).update(
                next_attempt_at=now
            )
            logger.info("webhook endpoint enabled endpoint=%s", locked.public_id)
    transaction.on_commit(lambda: webhook_send_enqueue(endpoint_pk=endpoint.pk))
    endpoint.refresh_from_db()
    return endpoint


def webhook_endpoint_disable(*, endpoint: WebhookEndpoint, reason: str, now: datetime | None = None) -> bool:
    """Disable an endpoint (an operator, continuous failure, 410 Gone): nothing is
    sent to it until it is enabled. False if it was already disabled."""
    now = now or timezone.now()
    with transaction.atomic():
        disabled = WebhookEndpoint.objects.filter(pk=endpoint.pk, disabled_at__isnull=True).update(
            disabled_at=now, disabled_reason=reason[:2000]
        )
    if disabled:
        logger.warning("webhook endpoint disabled endpoint=%s reason=%s", endpoint.public_id, reason)
    return bool(disabled)


# --- Deliveries: reads and the operator's re-send ------------------------------


def _deliveries_shown():
    """Deliveries with what the API shows of their change: the address and email id, no message bodies."""
    own = [f.name for f in WebhookDelivery._meta.concrete_fields if f.name not in ("endpoint", "change")]
    return WebhookDelivery.objects.select_related("endpoint", "change", "change__message").only(
        *own, "endpoint__public_id", "change__email", "change__message__email_id"
    )


def webhook_deliveries(*, endpoint: WebhookEndpoint, status: str | None = None):
    """The endpoint's deliveries (optionally of one state); the caller orders and pages them."""
    rows = _deliveries_shown().filter(endpoint=endpoint)
    return rows.filter(status=status) if status else rows


def webhook_delivery_get(*, delivery_id: str) -> WebhookDelivery:
    delivery = one_or_none(_deliveries_shown().filter(webhook_id=delivery_id))
    if delivery is None:
        raise NotFound(f"There is no webhook delivery {delivery_id!r}.", code="webhook_delivery_not_found")
    return delivery


def webhook_delivery_resend(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery again now, whatever its state, with the same `webhook-id`
    (an operator's re-send). Conflict(webhook_disabled) while its endpoint is disabled."""
    with transaction.atomic():
        endpoint = _endpoint_lock(delivery.endpoint_id)
        if endpoint is None:
            raise NotFound(f"There is no webhook delivery {delivery.webhook_id!r}.", code="webhook_delivery_not_found")
        if endpoint.disabled_at is not None:
            raise Conflict(
                f"The webhook {endpoint.public_id} is disabled; enable it first "
                f"(POST /api/v1/webhooks/{endpoint.public_id}/enable).",
                code="webhook_disabled",
            )
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.State.PENDING, next_attempt_at=timezone.now()
        )
    transaction.on_commit(lambda: webhook_send_enqueue(endpoint_pk=delivery.endpoint_id))
    logger.info("webhook delivery re-sent by an operator delivery=%s", delivery.webhook_id)
    return webhook_delivery_get(delivery_id=delivery.webhook_id)


def webhook_send_enqueue(*, endpoint_pk: int) -> bool:
    """Publish a sender task for the endpoint unless one is already waiting or running."""
    from tracking.tasks import webhook_send_task

    expires = max(settings.WEBHOOK_DISPATCH_INTERVAL_SECONDS * 5, 10)
    try:
        client = redis_client()
        if client.exists(f"{SEND_LOCK_PREFIX}{endpoint_pk}"):
            return False
        if not client.set(f"{SEND_QUEUED_PREFIX}{endpoint_pk}", 1, nx=True, ex=int(expires)):
            return False
    except RedisError:
        logger.warning("webhook sender not published: Redis unavailable endpoint=%s", endpoint_pk)
        return False
    webhook_send_task.apply_async(args=[endpoint_pk], expires=expires)
    return True


# --- The outbox: StatusChange rows → deliveries ---------------------------------


@dataclass
class DispatchResult:
    read: int = 0  # status changes read after the cursor
    late: int = 0  # status changes found in earlier gaps (committed out of id order)
    deliveries: int = 0  # deliveries created
    gaps: int = 0  # id ranges still looked for
    disabled: int = 0  # endpoints disabled for continuous failure
    due_endpoints: list[int] = field(default_factory=list)
    skipped: str = ""


def webhooks_dispatch(*, now: datetime | None = None, batch: int = DISPATCH_BATCH) -> DispatchResult:
    """Turn new StatusChange rows into WebhookDelivery rows and say which endpoints
    have deliveries due.

    One dispatcher at a time (a row lock on the cursor; a second one skips). Each
    batch of up to `batch` changes is read and fanned out in one transaction with
    the cursor's move: a change gets its deliveries exactly once. Also disables
    endpoints that have failed for WEBHOOK_DISABLE_AFTER_HOURS.
    """
    result = DispatchResult()
    result.disabled = _failing_endpoints_disable(now=now or timezone.now())
    _cursor_ensure()
    if not WebhookEndpoint.objects.filter(disabled_at__isnull=True).exists():
        _cursor_skip_ahead()
        return result
    for _ in range(DISPATCH_MAX_BATCHES):
        if not _fan_out_batch(result, batch=batch, now=time.time()):
            break
    if not result.skipped:
        result.due_endpoints = webhook_endpoints_due(now=now or timezone.now())
    return result


def _cursor_skip_ahead() -> None:
    """Nobody listens: move the cursor to the newest change without reading the
    changes (one statement, no transaction held)."""
    top = StatusChange.objects.aggregate(top=Max("id"))["top"] or 0
    WebhookOutboxCursor.objects.filter(name=CURSOR_NAME, last_change_id__lt=top).update(last_change_id=top, gaps=[])


def webhook_endpoints_due(*, now: datetime) -> list[int]:
    """Enabled endpoints with a pending delivery whose time has come: one index
    probe per endpoint (a disabled one may keep many pending deliveries)."""
    enabled = WebhookEndpoint.objects.filter(disabled_at__isnull=True).order_by("id").values_list("id", flat=True)
    return [
        endpoint_pk
        for endpoint_pk in enabled
        if WebhookDelivery.objects.filter(
            endpoint_id=endpoint_pk, status=WebhookDelivery.State.PENDING, next_attempt_at__lte=now
        ).exists()
    ]


def change_statuses(from_status: str, to_status: str) -> frozenset[str]:
    """The statuses a change stands for: the one it reached, and those it passed
    over. Events applied together move a recipient once, to the status their
    facts give: `queued → delivered` (the delivery event came before the worker
    recorded the send) also means sent, `sent → opened` also means delivered.
    Subscribers of `sent` or `delivered` receive such a change too."""
    statuses = {to_status}
    if from_status in PENDING_STATUSES and to_status in _AFTER_SENT:
        statuses.add(Status.SENT)
    if PRECEDENCE.get(from_status, -1) < PRECEDENCE[Status.DELIVERED] and to_status in _AFTER_DELIVERY:
        statuses.add(Status.DELIVERED)
    return frozenset(statuses)


def _cursor_ensure() -> None:
    """The cursor row, created at the newest change when the first endpoint is
    (or the dispatcher first runs): history is not read."""
    if not WebhookOutboxCursor.objects.filter(name=CURSOR_NAME).exists():
        top = StatusChange.objects.aggregate(top=Max("id"))["top"] or 0
        WebhookOutboxCursor.objects.get_or_create(name=CURSOR_NAME, defaults={"last_change_id": top})


def _fan_out_batch(result: DispatchResult, *, batch: int, now: float) -> bool:
    """One batch; True if more changes may be waiting."""
    # A look first, without a transaction: most runs find nothing new (and on
    # SQLite a transaction takes the database's write lock).
    seen = one_or_none(WebhookOutboxCursor.objects.filter(name=CURSOR_NAME))
    if seen is None or (not seen.gaps and not StatusChange.objects.filter(id__gt=seen.last_change_id).exists()):
        return False
    with transaction.atomic():
        index_lookups()
        cursor = one_or_none(WebhookOutboxCursor.objects.select_for_update(skip_locked=True).filter(name=CURSOR_NAME))
        if cursor is None:
            result.skipped = "another dispatcher is running"
            return False
        endpoints = list(WebhookEndpoint.objects.filter(disabled_at__isnull=True).only("id", "event_types", "created_at"))
        columns = ("id", "from_status", "to_status", "at")
        gaps = [list(gap) for gap in cursor.gaps if now - gap[2] <= settings.WEBHOOK_OUTBOX_GAP_SECONDS]
        late = []
        if gaps:
            in_gaps = Q()
            for first, last, _seen in gaps[:500]:
                in_gaps |= Q(id__gte=first, id__lte=last)
            late = list(StatusChange.objects.filter(in_gaps).order_by("id").values_list(*columns)[:batch])
            gaps = _gaps_without(gaps, [row[0] for row in late])
        fresh = list(
            StatusChange.objects.filter(id__gt=cursor.last_change_id).order_by("id").values_list(*columns)[:batch]
        )
        expected = cursor.last_change_id + 1
        for change_id, *_ in fresh:
            if change_id > expected:
                gaps.append([expected, change_id - 1, now])
            expected = change_id + 1
        if fresh:
            cursor.last_change_id = fresh[-1][0]
        cursor.gaps = gaps[-MAX_GAP_RANGES:]
        due = timezone.now()
        deliveries = [
            WebhookDelivery(endpoint_id=endpoint.id, change_id=change_id, event_type=to_status, next_attempt_at=due)
            for change_id, from_status, to_status, at in late + fresh
            for statuses in [change_statuses(from_status, to_status)]
            for endpoint in endpoints
            if endpoint.wants(statuses) and at >= endpoint.created_at
        ]
        if deliveries:
            WebhookDelivery.objects.bulk_create(deliveries, ignore_conflicts=True, batch_size=500)
        cursor.save(update_fields=["last_change_id", "gaps", "updated_at"])
    result.read += len(fresh)
    result.late += len(late)
    result.deliveries += len(deliveries)
    result.gaps = len(cursor.gaps)
    if late or fresh:
        logger.info(
            "webhooks dispatched changes=%d late=%d deliveries=%d gaps=%d", len(fresh), len(late), len(deliveries), result.gaps
        )
    return len(fresh) == batch


def _gaps_without(gaps: list[list], found: list[int]) -> list[list]:
    """The gap ranges with the ids that were found taken out (a range may split)."""
    for change_id in found:
        for index, (first, last, seen) in enumerate(gaps):
            if first <= change_id <= last:
                parts = [[first, change_id - 1, seen]] if first < change_id else []
                parts += [[change_id + 1, last, seen]] if change_id < last else []
                gaps[index : index + 1] = parts
                break
    return gaps


def _failing_endpoints_disable(*, now: datetime) -> int:
    since = now - timedelta(hours=settings.WEBHOOK_DISABLE_AFTER_HOURS)
    failing = WebhookEndpoint.objects.filter(disabled_at__isnull=True, first_failure_at__lte=since)
    return sum(
        webhook_endpoint_disable(endpoint=endpoint, reason=_failing_reason(endpoint.first_failure_at), now=now)
        for endpoint in failing
    )


def _failing_reason(first_failure_at: datetime) -> str:
    return (
        f"every attempt failed since {first_failure_at:%Y-%m-%d %H:%M:%S} UTC "
        f"(WEBHOOK_DISABLE_AFTER_HOURS={settings.WEBHOOK_DISABLE_AFTER_HOURS:g})"
    )


# --- Sending ---------------------------------------------------------------------


def webhook_payload(change: dict) -> dict:
    """The JSON event of one status change (one per POST).

    `change` holds StatusChange columns and the message's email_id, group_id,
    tags and metadata (see _changes_read). The same body on every attempt.
    """
    at = _iso(change["at"])
    return {
        "type": f"email.{change['to_status']}",
        "timestamp": at,
        "data": {
            "email_id": change["email_id"],
            "group_id": change["group_id"],
            "recipient": change["email"],
            "status": change["to_status"],
            "previous": change["from_status"],
            "at": at,
            "cause": change["cause"],
            "detail": change["detail"],
            "tags": change["tags"],
            "metadata": change["metadata"],
        },
    }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def webhook_sign(*, secret: str, webhook_id: str, at: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, at, body),
    }


@dataclass
class AttemptOutcome:
    ok: bool
    status_code: int | None = None
    error: str = ""
    duration_ms: int = 0

    @property
    def gone(self) -> bool:
        return self.status_code == 410


@dataclass
class SendResult:
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: str = ""


def webhook_deliveries_send(*, endpoint_pk: int, max_seconds: float = SEND_MAX_SECONDS) -> SendResult:
    """POST the endpoint's due deliveries, oldest due first, one at a time.

    One sender per endpoint (a Redis lock, renewed before every POST; if it was
    lost another sender may repeat one — at-least-once). Stops at the first
    failure (the rest stay due: a failing receiver gets one request per run, not
    a burst), when none is due, when the endpoint is disabled, or after
    `max_seconds`. The network call is never inside a transaction.
    """
    result = SendResult()
    try:
        client = redis_client()
        client.delete(f"{SEND_QUEUED_PREFIX}{endpoint_pk}")
        lock = client.lock(f"{SEND_LOCK_PREFIX}{endpoint_pk}", timeout=settings.WEBHOOK_TIMEOUT_SECONDS * 2 + 10)
        if not lock.acquire(blocking=False):
            result.skipped = "another sender is running for this endpoint"
            return result
    except RedisError as error:
        result.skipped = f"Redis unavailable: {error}"
        return result
    try:
        _send(endpoint_pk, time.monotonic() + max_seconds, lock, result)
    finally:
        try:
            lock.release()
        except (LockError, RedisError):
            logger.warning("webhook sender lock expired or unavailable endpoint=%s", endpoint_pk)
    return result


def _send(endpoint_pk: int, deadline: float, lock, result: SendResult) -> None:
    while time.monotonic() < deadline:
        endpoint = one_or_none(WebhookEndpoint.objects.filter(pk=endpoint_pk, disabled_at__isnull=True))
        if endpoint is None:
            return
        due = list(
            WebhookDelivery.objects.filter(
                endpoint_id=endpoint_pk, status=WebhookDelivery.State.PENDING, next_attempt_at__lte=timezone.now()
            )
            .order_by("next_attempt_at", "id")
            .values_list("id", "webhook_id", "change_id")[:SEND_CHUNK]
        )
        if not due:
            return
        changes = _changes_read([change_id for _, _, change_id in due])
        for delivery_pk, webhook_id, change_id in due:
            if time.monotonic() >= deadline:
                return
            try:
                lock.reacquire()
            except (LockError, RedisError):
                result.skipped = "sender lock lost"
                return
            if change_id not in changes:  # its message was deleted meanwhile
                continue
            body = json.dumps(webhook_payload(changes[change_id]), separators=(",", ":"))
            outcome = webhook_post(url=endpoint.url, secret=endpoint.secret, webhook_id=webhook_id, body=body)
            result.attempted += 1
            if outcome.ok:
                result.succeeded += 1
            else:
                result.failed += 1
            still_enabled = webhook_attempt_record(delivery_pk=delivery_pk, endpoint_pk=endpoint_pk, outcome=outcome)
            if not outcome.ok or not still_enabled:
                return


def _changes_read(change_ids: list[int]) -> dict[int, dict]:
    rows = StatusChange.objects.filter(id__in=change_ids).values(
        "id", "email", "from_status", "to_status", "at", "cause", "detail",
        "message__email_id", "message__group_id", "message__tags", "message__metadata",
    )
    return {
        row["id"]: {
            **row,
            "email_id": row["message__email_id"],
            "group_id": row["message__group_id"],
            "tags": row["message__tags"],
            "metadata": row["message__metadata"],
        }
        for row in rows
    }


def webhook_attempt_record(*, delivery_pk: int, endpoint_pk: int, outcome: AttemptOutcome, now: datetime | None = None) -> bool:
    """Record one attempt's outcome on the delivery and its endpoint; whether the
    endpoint is still enabled.

    2xx: succeeded, and the endpoint's failure run ends. Otherwise the next
    attempt is due after RETRY_DELAYS[attempts - 1] (±20 %), or the delivery is
    `failed` once they are used up; the endpoint's failure run starts (if it had
    not) and, once it is WEBHOOK_DISABLE_AFTER_HOURS long, the endpoint is
    disabled. 410 Gone fails the delivery and disables the endpoint at once.
    """
    now = now or timezone.now()
    with transaction.atomic():
        endpoint = _endpoint_lock(endpoint_pk)
        delivery = one_or_none(WebhookDelivery.objects.select_for_update().filter(pk=delivery_pk))
        if endpoint is None or delivery is None:
            return False
        attempts = delivery.attempts + 1
        entry = {"at": _iso(now), "status_code": outcome.status_code, "error": outcome.error, "duration_ms": outcome.duration_ms}
        metrics.webhook_delivery_observed(ok=outcome.ok)
        fields = {
            "attempts": attempts,
            "last_attempt_at": now,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
            "attempt_log": [*delivery.attempt_log, entry][-ATTEMPT_LOG_LENGTH:],
        }
        if outcome.ok:
            fields.update(status=WebhookDelivery.State.SUCCEEDED, next_attempt_at=None, delivered_at=now)
        elif outcome.gone or attempts > len(RETRY_DELAYS):
            fields.update(status=WebhookDelivery.State.FAILED, next_attempt_at=None)
        else:
            fields.update(status=WebhookDelivery.State.PENDING, next_attempt_at=now + retry_delay(attempts))
        WebhookDelivery.objects.filter(pk=delivery_pk).update(**fields)
        if outcome.ok:
            if endpoint.first_failure_at is not None or endpoint.last_success_at is None or (
                endpoint.last_success_at < now - timedelta(minutes=1)
            ):
                WebhookEndpoint.objects.filter(pk=endpoint_pk).update(first_failure_at=None, last_success_at=now)
            return endpoint.disabled_at is None
        failing_since = endpoint.first_failure_at or now
        WebhookEndpoint.objects.filter(pk=endpoint_pk).update(first_failure_at=failing_since, last_failure_at=now)
    if endpoint.disabled_at is not None:
        return False
    if outcome.gone:
        return not webhook_endpoint_disable(endpoint=endpoint, reason="the endpoint answered 410 Gone", now=now)
    if failing_since <= now - timedelta(hours=settings.WEBHOOK_DISABLE_AFTER_HOURS):
        return not webhook_endpoint_disable(endpoint=endpoint, reason=_failing_reason(failing_since), now=now)
    return True


def retry_delay(attempts: int) -> timedelta:
    """How long after the `attempts`-th failed attempt the next one is due."""
    base = RETRY_DELAYS[min(attempts, len(RETRY_DELAYS)) - 1]
    return timedelta(seconds=base * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER))


# --- HTTP ------------------------------------------------------------------------------

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
    text = _CONTROL_OR_SPACE.sub(" ", excerpt.decode("utf-8", errors="replace")).strip()
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
