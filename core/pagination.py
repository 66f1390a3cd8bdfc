"""Cursor pagination shared by every list of the API, and the query it reads.

Every list answers a bad query with 400 rather than a page the caller did not
ask for: a `cursor` the list did not give is `invalid_cursor`; a `limit` that
is not a whole number from 1 to 500, or a parameter the list does not know,
is `invalid_field` naming it.
"""

from base64 import b64decode, b64encode
from binascii import Error as Base64Error
from collections.abc import Iterable
from urllib.parse import parse_qs, urlencode

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.pagination import Cursor, CursorPagination

from core.addresses import shown
from core.errors import ValidationFailed
from core.responses import ErrorBodySerializer

PAGINATION_PARAMETERS = ("cursor", "limit")


class PageQuerySerializer(serializers.Serializer):
    """The query of a list without filters of its own (what the schema states)."""

    cursor = serializers.CharField(required=False, allow_blank=True, help_text="From `next` or `previous` of a page")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=500, help_text="Items a page (default 50)")


# The answer of a list to a query it cannot follow (for the schema).
BAD_PAGE_QUERY = {
    400: OpenApiResponse(
        ErrorBodySerializer, description="invalid_cursor; invalid_field (`limit`, or an unknown parameter)"
    )
}


def query_parameters_check(query, allowed: Iterable[str]) -> None:
    """ValidationFailed (invalid_field) naming every parameter of `query` not in `allowed`."""
    unknown = [name for name in query if name not in set(allowed)]
    if unknown:
        names = ", ".join(shown(name) for name in unknown)
        raise ValidationFailed(
            f"Unknown query parameter{'s' if len(unknown) > 1 else ''}: {names}.",
            fields={name: [f"Unknown parameter {shown(name)}."] for name in unknown},
        )


def _invalid_cursor() -> ValidationFailed:
    return ValidationFailed(
        "The cursor is not valid: follow `next` or `previous` as given.",
        fields={"cursor": ["Not a cursor of this list."]},
        code="invalid_cursor",
    )


class CheckedCursorPagination(CursorPagination):
    """DRF's cursor pagination, refusing what DRF would quietly replace: a
    cursor it did not encode (DRF answers page 1 for some, 404 for others) and
    a `limit` out of range or not a number (DRF uses its default or its
    maximum). `filters` are the list's own query parameters; any other one but
    `cursor` and `limit` is refused."""

    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500
    # Whether the ordering field is an integer (then a cursor's position must be one).
    integer_position = True

    def __init__(self, *, filters: Iterable[str] = ()):
        self.filters = tuple(filters)

    def paginate_queryset(self, queryset, request, view=None):
        query_parameters_check(request.query_params, (*self.filters, *PAGINATION_PARAMETERS))
        return super().paginate_queryset(queryset, request, view)

    def get_page_size(self, request):
        values = request.query_params.getlist(self.page_size_query_param)
        if not values:
            return self.page_size
        value = values[0].strip()
        if len(values) > 1 or not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= self.max_page_size:
            raise ValidationFailed(
                f"limit: a whole number from 1 to {self.max_page_size} (default {self.page_size}).",
                fields={"limit": [f"A whole number from 1 to {self.max_page_size}."]},
            )
        return int(value)

    def decode_cursor(self, request):
        values = request.query_params.getlist(self.cursor_query_param)
        if not values:
            return None
        encoded = values[0]
        if len(values) > 1 or not encoded or not encoded.isascii():
            raise _invalid_cursor()
        try:
            text = b64decode(encoded, validate=True).decode("ascii")
            tokens = parse_qs(text, keep_blank_values=True, strict_parsing=True)
            offset = int(tokens.get("o", ["0"])[0])
            reverse = tokens.get("r", ["0"])[0] == "1"
            position = tokens.get("p", [None])[0]
        except (Base64Error, UnicodeDecodeError, ValueError):
            raise _invalid_cursor() from None
        cursor = Cursor(offset=offset, reverse=reverse, position=position)
        # Only a cursor this list encodes reads back the same: no other keys, no
        # repeated ones, an offset DRF would give.
        if self._encoded(cursor) != encoded or not 0 <= offset <= self.offset_cutoff:
            raise _invalid_cursor()
        if self.integer_position and position is not None and not (
            position.isascii() and position.isdigit() and int(position) < 2**63
        ):
            raise _invalid_cursor()
        return cursor

    @staticmethod
    def _encoded(cursor: Cursor) -> str:
        """The cursor as DRF's encode_cursor writes it (without the URL)."""
        tokens = {}
        if cursor.offset != 0:
            tokens["o"] = str(cursor.offset)
        if cursor.reverse:
            tokens["r"] = "1"
        if cursor.position is not None:
            tokens["p"] = cursor.position
        return b64encode(urlencode(tokens, doseq=True).encode("ascii")).decode("ascii")


class NewestFirstPagination(CheckedCursorPagination):
    """Newest first, by id: unique and in acceptance order, so the cursor is one
    value, a page deep into a million rows is an index range (never an OFFSET
    over rows added in the same instant), and rows added meanwhile never shift
    the pages after it. `limit` ≤ 500 (default 50)."""

    ordering = ("-id",)
