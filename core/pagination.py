"""Cursor pagination shared by every list of the API."""

from rest_framework.exceptions import NotFound as DrfNotFound
from rest_framework.pagination import CursorPagination

from core.errors import ValidationFailed


class NewestFirstPagination(CursorPagination):
    """Newest first, by id: unique and in acceptance order, so the cursor is one
    value, a page deep into a million rows is an index range (never an OFFSET
    over rows added in the same instant), and rows added meanwhile never shift
    the pages after it. `limit` ≤ 500 (default 50). A cursor this list did not
    give is 400 `invalid_field` naming `cursor`."""

    ordering = ("-id",)
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500

    def decode_cursor(self, request):
        try:
            cursor = super().decode_cursor(request)
        except DrfNotFound:
            cursor, valid = None, False
        else:
            # DRF checks the cursor's shape, not that its position is an id.
            position = cursor.position if cursor else None
            valid = position is None or (position.isascii() and position.isdigit() and int(position) < 2**63)
        if not valid:
            raise ValidationFailed(
                "The cursor is not valid: follow `next` or `previous` as given.",
                fields={"cursor": ["Not a cursor of this list."]},
            )
        return cursor
