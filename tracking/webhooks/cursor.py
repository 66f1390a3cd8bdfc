"""The outbox cursor: the last StatusChange id read by the dispatcher."""

from __future__ import annotations

from django.db.models import Max

from emailsvc.models import StatusChange
from tracking.models import WebhookOutboxCursor

CURSOR_NAME = "status_changes"


def cursor_skip_ahead() -> None:
    """Nobody listens: move the cursor to the newest change without reading the
    changes (one statement, no transaction held)."""
    top = StatusChange.objects.aggregate(top=Max("id"))["top"] or 0
    WebhookOutboxCursor.objects.filter(name=CURSOR_NAME, last_change_id__lt=top).update(last_change_id=top, gaps=[])


def cursor_ensure() -> None:
    """The cursor row, created at the newest change when the first endpoint is
    (or the dispatcher first runs): history is not read."""
    if not WebhookOutboxCursor.objects.filter(name=CURSOR_NAME).exists():
        top = StatusChange.objects.aggregate(top=Max("id"))["top"] or 0
        WebhookOutboxCursor.objects.get_or_create(name=CURSOR_NAME, defaults={"last_change_id": top})
