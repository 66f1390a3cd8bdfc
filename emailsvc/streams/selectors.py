"""Read-only queries of message streams and their suppressions."""

from django.db.models import QuerySet

from core.addresses import address_forms, address_key
from core.errors import NotFound
from emailsvc.streams.models import BUILTIN, Stream, StreamSuppression, streams_builtin_ensure


def streams_list() -> QuerySet[Stream]:
    """Every stream, by name."""
    streams_builtin_ensure()
    return Stream.objects.order_by("name")


def stream_get(*, name: str) -> Stream:
    """The stream with this name, or NotFound(stream_not_found)."""
    stream = Stream.objects.filter(name=name).first() if isinstance(name, str) else None
    if stream is None and name in BUILTIN:
        streams_builtin_ensure()
        stream = Stream.objects.filter(name=name).first()
    if stream is None:
        raise NotFound(f"There is no stream named '{name}'.", code="stream_not_found")
    return stream


def streams_missing(*, names: list[str]) -> list[str]:
    """Those of `names` that name no stream, in the order given."""
    if not names:
        return []
    known = set(Stream.objects.filter(name__in=names).values_list("name", flat=True)) | set(BUILTIN)
    return [name for name in names if name not in known]


def stream_suppressed(*, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """{(address, stream): reason} for those (address, stream) pairs whose
    address unsubscribed from that stream. Addresses compare in canonical form;
    the keys are the addresses as given."""
    if not pairs:
        return {}
    forms = set().union(*(address_forms(address) for address, _ in pairs))
    streams = {stream for _, stream in pairs}
    found = StreamSuppression.objects.filter(email__in=sorted(forms), stream_id__in=sorted(streams))
    held = {(address_key(email), stream): reason for email, stream, reason in found.values_list("email", "stream_id", "reason")}
    return {
        (address, stream): held[(address_key(address), stream)]
        for address, stream in pairs
        if (address_key(address), stream) in held
    }


def stream_suppressions_of(*, email: str) -> list[StreamSuppression]:
    """The streams an address (any form) unsubscribed from, oldest first."""
    return list(StreamSuppression.objects.filter(email__in=address_forms(email)).order_by("created_at", "id"))
