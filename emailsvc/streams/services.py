"""Message streams: create and change them, and one-click unsubscribe and
re-subscribe (RFC 8058; docs/streams.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from core import metrics
from core.addresses import address_key
from core.errors import Conflict, NotFound, ValidationFailed
from emailsvc import status
from emailsvc.models import Recipient
from emailsvc.streams.models import Stream, StreamSuppression
from emailsvc.streams.selectors import stream_get
from emailsvc.streams.tokens import UnsubscribeTarget

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# SES configuration set names: letters, digits, _ and -, at most 64.
CONFIGURATION_SET_PATTERN = re.compile(r"^[A-Za-z0-9_-]{0,64}$")
EDITABLE = ("description", "configuration_set", "unsubscribe", "rate_share", "track_opens", "track_clicks")


def _check(fields: dict) -> None:
    problems: dict[str, list[str]] = {}
    if "configuration_set" in fields and not CONFIGURATION_SET_PATTERN.match(fields["configuration_set"]):
        problems["configuration_set"] = ["Letters, digits, _ and - only, at most 64."]
    if "unsubscribe" in fields and fields["unsubscribe"] not in Stream.Unsubscribe.values:
        problems["unsubscribe"] = [f"One of {', '.join(Stream.Unsubscribe.values)}."]
    if "rate_share" in fields and not 0.01 <= fields["rate_share"] <= 1:
        problems["rate_share"] = ["From 0.01 to 1."]
    if problems:
        raise ValidationFailed(f"Invalid stream settings: {', '.join(problems)}.", fields=problems, code="invalid_field")


def stream_create(*, name: str, **fields) -> Stream:
    """A new stream (`name`: lower-case letters, digits, - and _, at most 64).
    Raises ValidationFailed(invalid_stream_name, invalid_field), Conflict(stream_exists)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValidationFailed(
            "A stream name is 1 to 64 lower-case letters, digits, - or _, starting with a letter or digit.",
            fields={"name": ["1 to 64 of a-z, 0-9, - and _."]}, code="invalid_stream_name",
        )
    fields = {key: value for key, value in fields.items() if key in EDITABLE}
    _check(fields)
    try:
        with transaction.atomic():
            return Stream.objects.create(name=name, **fields)
    except IntegrityError:
        raise Conflict(f"A stream named '{name}' already exists.", code="stream_exists") from None


def stream_update(*, stream: Stream, **fields) -> Stream:
    """Change the given settings of `stream` (ValidationFailed invalid_field)."""
    fields = {key: value for key, value in fields.items() if key in EDITABLE}
    _check(fields)
    for key, value in fields.items():
        setattr(stream, key, value)
    if fields:
        stream.save(update_fields=[*fields, "updated_at"])
    return stream


@dataclass
class Unsubscribed:
    email: str
    stream: str
    created: bool  # False: it was already unsubscribed (a repeated POST)


def stream_unsubscribe(*, target: UnsubscribeTarget) -> Unsubscribed:
    """The one-click unsubscribe of a link's recipient from its stream: a
    stream-scoped suppression (the other streams still reach the address),
    and, the first time, an `unsubscribed` status change for webhooks.
    Idempotent: a repeated POST changes nothing. No login: the signed token is
    the authority (emailsvc.streams.tokens)."""
    email = address_key(target.email)
    now = timezone.now()
    with transaction.atomic():
        try:
            stream_get(name=target.stream)
        except NotFound:  # the stream is gone: nothing left to unsubscribe from
            return Unsubscribed(email=email, stream=target.stream, created=False)
        row, created = StreamSuppression.objects.get_or_create(
            email=email, stream_id=target.stream, defaults={"source": f"one-click unsubscribe (recipient {target.recipient_id})"}
        )
        if created:
            metrics.unsubscribe_observe(stream=target.stream)
            recipient = Recipient.objects.select_related("message").filter(pk=target.recipient_id).first()
            if recipient is not None:
                status.unsubscribe_change_record(recipient=recipient, stream=target.stream, at=now)
    return Unsubscribed(email=email, stream=target.stream, created=created)


def stream_resubscribe(*, email: str, stream: str) -> bool:
    """Lift an address's suppression for one stream (the confirmation page's
    button, an operator). Suppressions of every stream stay. Whether one was lifted."""
    deleted, _ = StreamSuppression.objects.filter(email=address_key(email), stream_id=stream).delete()
    return bool(deleted)
