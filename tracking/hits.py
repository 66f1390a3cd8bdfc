"""emailsvc's own opens and clicks: hits on the pixel and the redirects,
buffered in Redis and applied in sets (SPEC §4 Tracking, §6.5).

The web process answers a hit without writing to the database: it checks the
token's signature, appends the hit to a Redis stream (with a fresh event id,
the time, the user agent and the client address) and, at most once per
TRACKING_HITS_APPLY_DELAY_SECONDS, wakes `hits_apply`. That task (and beat,
every TRACKING_HITS_APPLY_INTERVAL_SECONDS) reads the stream in sets of
TRACKING_HITS_APPLY_BATCH, turns each hit into the same normalized `open` or
`click` event SES would publish and applies the set through the one apply
path (tracking.apply.events_apply: one transaction, set-based), then deletes
the hits it committed. A hit applied twice (the task died between its commit
and the delete) is stored once: its event id is unique.

With Redis unavailable a hit is not lost: the request applies it itself, the
same way (one transaction through events_apply), so an outage of Redis costs
the hits their buffering, not their record. Only with both Redis and the
database down is a hit lost (logged); the reader still gets the pixel or the
redirect.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from redis.exceptions import LockNotOwnedError, RedisError

from core.outages import outage
from core.redisclient import redis_client
from core.tracking_tokens import CLICK, TrackingToken
from emailsvc.models import Message, Recipient
from tracking.apply import events_apply
from tracking.models import EngagementEvent, EventType
from tracking.normalize import NormalizedEvent

logger = logging.getLogger(__name__)

HITS_STREAM = "emailsvc:tracking:hits"
# Hits that could not be applied even alone: kept for a look, out of the way.
DEAD_HITS_STREAM = "emailsvc:tracking:hits:dead"
WAKE_KEY = "emailsvc:tracking:hits-wake"
APPLY_LOCK = "emailsvc:lock:tracking-hits-apply"
# The stream never grows past this many hits (about 300 bytes each): a backstop
# for workers that stay down, not a limit reached in normal operation.
STREAM_MAX_HITS = 2_000_000
EVENT_ID_PREFIX = "hit:"
MAX_USER_AGENT = 500


# --- The request path (web) ---------------------------------------------------


def hit_record(*, token: TrackingToken, user_agent: str, ip: str, url: str = "") -> str:
    """Buffer one hit; its event id. No database write: one Redis round trip
    (XADD and the wake flag pipelined), plus a task publish at most once per
    TRACKING_HITS_APPLY_DELAY_SECONDS. With Redis down the hit is applied here
    and now (`_hit_apply_now`)."""
    hit_id = uuid.uuid4().hex
    fields = {
        "k": token.kind, "m": token.message_id, "r": token.recipient_id, "l": token.link_index,
        "id": hit_id, "at": f"{time.time():.3f}", "ua": user_agent[:MAX_USER_AGENT], "ip": ip, "u": url,
    }
    delay = settings.TRACKING_HITS_APPLY_DELAY_SECONDS
    try:
        pipe = redis_client().pipeline(transaction=False)
        pipe.xadd(HITS_STREAM, fields, maxlen=STREAM_MAX_HITS, approximate=True)
        pipe.set(WAKE_KEY, 1, nx=True, ex=max(1, int(delay) + 1))
        _, woken = pipe.execute()
    except RedisError as error:
        _redis_outage.failed(error, action="tracking hits are applied by the request that receives them")
        _hit_apply_now(fields)
        return hit_id
    _redis_outage.succeeded()
    if woken:
        from tracking.queueing import hits_apply_enqueue

        hits_apply_enqueue(countdown=delay)
    return hit_id


_redis_outage = outage("Redis")
# Hits one web process applies itself at once while Redis is away: a burst of
# opens then waits its turn (DIRECT_APPLY_WAIT_SECONDS at most) instead of taking
# every database connection the API needs.
DIRECT_APPLY_MAX = 4
DIRECT_APPLY_WAIT_SECONDS = 2.0
_direct_applies = threading.BoundedSemaphore(DIRECT_APPLY_MAX)


def _hit_apply_now(fields: dict) -> None:
    """Apply one hit in the request (Redis unavailable): the same events as a
    buffered hit's, through the same apply path, so a copy of it that reached
    the buffer after all (Redis failed after the XADD) is a duplicate, not a
    second open."""
    entry = (f"direct-{fields['id']}", {key: str(value) for key, value in fields.items()})
    if not _direct_applies.acquire(timeout=DIRECT_APPLY_WAIT_SECONDS):
        logger.error("tracking hit lost: Redis unavailable and %d hits already being applied here", DIRECT_APPLY_MAX)
        return
    try:
        events_apply(events=hits_events([entry]), source=EngagementEvent.Source.TRACKING)
    except (DatabaseError, ValueError, KeyError) as error:
        logger.error("tracking hit lost: Redis and the database unavailable: %s", error)
    finally:
        _direct_applies.release()


def click_destination(token: TrackingToken) -> str | None:
    """The URL a click token's link leads to: one primary-key read of the
    message's tracked links. None if the message or the link is unknown."""
    # By primary key, no ORDER BY … LIMIT 1 (.first()): one index probe whatever the statistics.
    found = list(Message.objects.filter(pk=token.message_id).values_list("tracking", flat=True))
    links = (found[0] or {}).get("links") or [] if found else []
    return links[token.link_index] if 0 <= token.link_index < len(links) else None


def hits_backlog(client=None) -> dict:
    """The buffer as /metrics shows it: hits waiting to be applied, the age in
    seconds of the oldest (None when none waits), and the dead hits kept aside.
    One pipelined round trip."""
    pipe = (client or redis_client()).pipeline(transaction=False)
    pipe.xlen(HITS_STREAM)
    pipe.xlen(DEAD_HITS_STREAM)
    pipe.xrange(HITS_STREAM, count=1)
    waiting, dead, oldest = pipe.execute()
    age = None
    if oldest:  # a stream entry's id begins with the milliseconds it was added at
        added_ms = int(_text(oldest[0][0]).split("-", 1)[0])
        age = round(max(time.time() - added_ms / 1000, 0.0), 3)
    return {"waiting": waiting, "dead": dead, "oldest_age_seconds": age}


# --- Machine opens ------------------------------------------------------------

# Heuristics, not proof (docs/tracking.md): a privacy proxy fetches every image of
# an email whether or not anybody reads it, so its fetch says nothing of a reader.
_APPLE_NETWORK = ipaddress.ip_network("17.0.0.0/8")  # Apple's own network, where Mail Privacy Protection fetches from
_PROXY_AGENTS = (
    ("googleimageproxy", "gmail_image_proxy"),
    ("ggpht.com", "gmail_image_proxy"),
    ("yahoomailproxy", "yahoo_mail_proxy"),
)
_BOT_WORDS = ("bot", "crawler", "spider", "preview", "scanner", "headless", "python-requests", "curl/", "wget/")


def machine_reason(*, user_agent: str, ip: str) -> str:
    """Why a hit looks like a machine's fetch rather than a reader's ("" if it does not)."""
    agent = user_agent.strip()
    lowered = agent.lower()
    for needle, reason in _PROXY_AGENTS:
        if needle in lowered:
            return reason
    if agent == "Mozilla/5.0":  # Apple Mail Privacy Protection's bare user agent
        return "apple_mail_privacy"
    try:
        if ipaddress.ip_address(ip) in _APPLE_NETWORK:
            return "apple_mail_privacy"
    except ValueError:
        pass
    if not agent:
        return "no_user_agent"
    if any(word in lowered for word in _BOT_WORDS):
        return "bot"
    return ""


# --- Applying (worker) --------------------------------------------------------


@dataclass
class HitsResult:
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    unmatched: int = 0
    dead: int = 0
    batches: int = 0
    skipped: str = ""
    errors: list[str] = field(default_factory=list)


def hits_apply(*, max_seconds: float | None = None) -> HitsResult:
    """Apply the buffered hits, TRACKING_HITS_APPLY_BATCH at a time, each set
    in one transaction through `events_apply`; delete each set from the stream
    after its commit. One applier at a time (a Redis lock); runs until the
    stream is empty or `max_seconds` (default: the beat interval) have passed.
    A set that fails as a whole is applied hit by hit; a hit that fails alone
    moves to DEAD_HITS_STREAM. With the database unavailable the run stops and
    the hits wait."""
    result = HitsResult()
    max_seconds = max_seconds or settings.TRACKING_HITS_APPLY_INTERVAL_SECONDS
    client = redis_client()
    try:
        client.delete(WAKE_KEY)  # hits from now on wake the next run
        lock = client.lock(APPLY_LOCK, timeout=max_seconds + 60)
        if not lock.acquire(blocking=False):
            result.skipped = "another run is applying"
            return result
    except RedisError as error:
        result.errors.append(f"Redis unavailable: {error}")
        return result
    deadline = time.monotonic() + max_seconds
    try:
        while time.monotonic() < deadline:
            entries = client.xrange(HITS_STREAM, count=settings.TRACKING_HITS_APPLY_BATCH)
            if not entries:
                break
            result.read += len(entries)
            result.batches += 1
            if not _entries_apply(client, entries, result):
                break
            lock.reacquire()
    except RedisError as error:
        result.errors.append(f"Redis unavailable: {error}")
    finally:
        try:
            lock.release()
        except (LockNotOwnedError, RedisError):
            pass
    if result.read:
        logger.info(
            "tracking hits read=%d applied=%d duplicates=%d unmatched=%d dead=%d batches=%d",
            result.read, result.applied, result.duplicates, result.unmatched, result.dead, result.batches,
        )
    return result


def _entries_apply(client, entries: list, result: HitsResult) -> bool:
    """Apply one set and delete it; False if the run must stop (database down)."""
    try:
        _outcomes_count(events_apply(events=hits_events(entries), source=EngagementEvent.Source.TRACKING), result)
    except (OperationalError, InterfaceError) as error:
        result.errors.append(f"database unavailable: {error}")
        logger.error("tracking hits wait: database unavailable: %s", error)
        return False
    except (DatabaseError, ValueError, KeyError) as error:
        logger.warning("a set of tracking hits failed (%s); applying them one by one", error)
        for entry in entries:
            try:
                _outcomes_count(events_apply(events=hits_events([entry]), source=EngagementEvent.Source.TRACKING), result)
            except (OperationalError, InterfaceError):
                return False
            except (DatabaseError, ValueError, KeyError) as alone:
                logger.error("tracking hit not applied id=%s: %s", entry[0], alone)
                client.xadd(DEAD_HITS_STREAM, entry[1], maxlen=100_000, approximate=True)
                result.dead += 1
    client.xdel(HITS_STREAM, *[entry_id for entry_id, _ in entries])
    return True


def _outcomes_count(outcomes, result: HitsResult) -> None:
    for outcome in outcomes:
        if outcome.outcome == "applied":
            result.applied += 1
        elif outcome.outcome == "duplicate":
            result.duplicates += 1
        else:
            result.unmatched += 1


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def hits_events(entries: list) -> list[NormalizedEvent]:
    """The normalized events of a set of stream entries: for each hit, one event
    per recipient of its message (one email is one copy for all its recipients,
    as SES counts its opens and clicks). Two indexed queries for the whole set."""
    hits = [{_text(k): _text(v) for k, v in fields.items()} for _, fields in entries]
    message_ids = {int(hit["m"]) for hit in hits}
    messages = {
        pk: (email_id, provider_message_id)
        for pk, email_id, provider_message_id in Message.objects.filter(pk__in=message_ids).values_list(
            "pk", "email_id", "provider_message_id"
        )
    }
    recipients: dict[int, list[str]] = {}
    for message_id, email in Recipient.objects.filter(message_id__in=messages).values_list("message_id", "email").order_by("id"):
        recipients.setdefault(message_id, []).append(email)
    events = []
    for hit in hits:
        message_id = int(hit["m"])
        email_id, provider_message_id = messages.get(message_id, ("", ""))
        reason = machine_reason(user_agent=hit.get("ua", ""), ip=hit.get("ip", ""))
        detail = {"user_agent": hit.get("ua", ""), "ip": hit.get("ip", ""), "machine": bool(reason)}
        if reason:
            detail["machine_reason"] = reason
        if hit["k"] == CLICK:
            detail |= {"url": hit.get("u", ""), "link_index": int(hit.get("l", 0))}
        common = {
            "event_id": EVENT_ID_PREFIX + hit["id"],
            "event_type": EventType.CLICK if hit["k"] == CLICK else EventType.OPEN,
            "provider_message_id": provider_message_id,
            "tracking_id": f"/{email_id}" if email_id else "",
            "occurred_at": datetime.fromtimestamp(float(hit["at"]), dt_timezone.utc),
            "detail": detail,
            "raw": hit,
        }
        for recipient in recipients.get(message_id) or [""]:
            events.append(NormalizedEvent(recipient=recipient, **common))
    return events

