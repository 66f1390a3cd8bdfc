"""What a stream changes on the way out: the checks of a send request, the
stream-scoped suppressions, the headers of its emails, and its rate share."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from django.conf import settings

from core.errors import NotFound, ValidationFailed
from emailsvc.keys import api_key_stream_check
from emailsvc.models import ApiKey, Priority
from emailsvc.sending_control.ratelimit import RateLimit
from emailsvc.streams.models import BUILTIN, TRANSACTIONAL, Stream
from emailsvc.streams.selectors import stream_get, stream_suppressed
from emailsvc.streams.tokens import unsubscribe_headers


@dataclass(frozen=True)
class StreamChoice:
    stream: str
    unsubscribe: bool  # the emails carry List-Unsubscribe
    priority: str
    track: dict[str, bool]  # the stream's tracking, for a send that does not say


def stream_send_check(
    *, api_key: ApiKey | None, data: dict, recipients: int, cache: dict[str, Stream] | None = None
) -> StreamChoice:
    """The stream of a send request and what it implies, or the error:
    Forbidden(key_stream_not_allowed) outside the key's streams (asked first: a
    key learns nothing of other streams), NotFound→400 stream_not_found,
    ValidationFailed(unsubscribe_needs_one_recipient, unsubscribe_not_configured).

    Streams other than `transactional` send at `low` priority at most, on the
    low queue: a broadcast backlog never stands before a password reset."""
    name = data.get("stream") or TRANSACTIONAL
    api_key_stream_check(api_key=api_key, stream=name)
    cache = {} if cache is None else cache
    if name not in cache:
        try:
            cache[name] = stream_get(name=name)
        except NotFound as error:  # a bad field value of the request: 400
            raise ValidationFailed(str(error.detail), fields={"stream": [str(error.detail)]}, code="stream_not_found") from None
    stream = cache[name]
    unsubscribe = bool(data.get("unsubscribe")) or stream.unsubscribe == Stream.Unsubscribe.ALWAYS
    if unsubscribe and recipients != 1:
        raise ValidationFailed(
            f"An email with List-Unsubscribe (stream '{name}' or \"unsubscribe\": true) goes to one recipient: "
            f"its link unsubscribes that address; this one has {recipients}. Send one email per recipient (a batch).",
            fields={"to": ["Exactly one recipient in to, cc and bcc."]}, code="unsubscribe_needs_one_recipient",
        )
    if unsubscribe and not settings.UNSUBSCRIBE_BASE_URL:
        raise ValidationFailed(
            "List-Unsubscribe needs UNSUBSCRIBE_BASE_URL (or PUBLIC_BASE_URL): the https address of this service.",
            code="unsubscribe_not_configured",
        )
    priority = data.get("priority", Priority.NORMAL)
    if name != TRANSACTIONAL:
        priority = Priority.LOW
    return StreamChoice(stream=name, unsubscribe=unsubscribe, priority=priority, track=stream.track)


def stream_suppressed_recipients(*, messages: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """For each (stream, addresses) the {address: reason} of those addresses
    unsubscribed from that stream (the transactional stream included)."""
    pairs = {(address, stream) for stream, addresses in messages for address in addresses}
    found = stream_suppressed(pairs=pairs)
    if not found:
        return [{} for _ in messages]
    return [
        {address: f"unsubscribed from {stream}" for address in addresses if (address, stream) in found}
        for stream, addresses in messages
    ]


_LIST_UNSUBSCRIBE = frozenset({"list-unsubscribe", "list-unsubscribe-post"})


def chunk_streams_apply(outgoing: dict) -> None:
    """What their streams change on a chunk's claimed messages (emailsvc.delivery.chunks.Outgoing),
    with two queries whatever the chunk's size: recipients unsubscribed from the
    message's stream are set aside as suppressed; an email with List-Unsubscribe
    gets RFC 8058's headers for its recipient; the stream's SES configuration set
    is named (else SES_CONFIGURATION_SET holds)."""
    if not outgoing:
        return
    streams = _streams()
    messages = list(outgoing.values())
    unsubscribed = stream_suppressed_recipients(
        messages=[(message.stream, [r.email for r in message.recipients]) for message in messages]
    )
    for message, held in zip(messages, unsubscribed, strict=True):
        if held:
            keep = []
            for recipient in message.recipients:
                if recipient.email in held:
                    message.suppressed[recipient.id] = f"suppressed ({held[recipient.email]})"
                else:
                    keep.append(recipient)
            message.recipients = keep
        stream = streams.get(message.stream)
        if stream is not None and stream.configuration_set:
            message.configuration_set = stream.configuration_set
        if message.unsubscribe and message.recipients:
            first = message.recipients[0]
            # Ours replace a caller's own List-Unsubscribe headers (in any case): one of each on the wire.
            own = {name: value for name, value in message.headers.items() if name.lower() not in _LIST_UNSUBSCRIBE}
            message.headers = {
                **own, **unsubscribe_headers(recipient_id=first.id, email=first.email, stream=message.stream)
            }


# How far ahead an email of a stream with a rate share may book its moment (at
# most RATE_LIMIT_MAX_WAIT_SECONDS): a chunk of such emails holds its worker
# process about this long, then the process is free for the next chunk's claim,
# which takes transactional email first (emailsvc.delivery.chunks.PRIORITY_ORDER).
STREAM_SHARE_MAX_WAIT_SECONDS = 0.5


def stream_share_max_wait() -> float:
    return min(STREAM_SHARE_MAX_WAIT_SECONDS, settings.RATE_LIMIT_MAX_WAIT_SECONDS)


def stream_share_chunk_size(stream_limits: dict[str, RateLimit]) -> int | None:
    """Messages a low-priority chunk claims at most while streams have rate shares:
    what the smallest share can book within stream_share_max_wait(); None without shares."""
    if not stream_limits:
        return None
    slowest = min(stream_limits.values(), key=lambda limit: limit.per_second)
    return max(1, math.floor(stream_share_max_wait() * slowest.per_second) + slowest.burst)


def stream_rate_limits(limit: RateLimit) -> dict[str, RateLimit]:
    """{stream: its own bucket} of the streams limited to a share of `limit`
    (the global limiter). An email of such a stream books its moment in its
    stream's bucket, then in the global one: the stream never takes more than
    its share, so the global bucket is not booked ahead by it and the other
    streams (transactional) keep at least the rest of the rate."""
    if not limit.enabled:
        return {}
    return {
        name: RateLimit(per_second=limit.per_second * stream.rate_share, burst=limit.burst, key=f"{limit.key}:stream:{name}")
        for name, stream in _streams().items()
        if stream.rate_share < 1
    }


# The streams as delivery reads them, per process: read again at most this often,
# so a chunk costs no statement for them (a change applies within this time).
STREAMS_CACHE_SECONDS = 5.0
_cached: tuple[float, dict[str, Stream]] = (0.0, {})


def _streams() -> dict[str, Stream]:
    global _cached
    expires, streams = _cached
    if time.monotonic() < expires:
        return streams
    stored = {stream.name: stream for stream in Stream.objects.all()}
    # A built-in stream missing (a table emptied) counts with its own settings.
    streams = {**{name: Stream(name=name, **defaults) for name, defaults in BUILTIN.items()}, **stored}
    _cached = (time.monotonic() + STREAMS_CACHE_SECONDS, streams)
    return streams
