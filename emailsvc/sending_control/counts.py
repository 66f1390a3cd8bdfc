"""The safety breaker's counts: recipients handed to the provider, bounced and
complained, per sending domain, message stream and hour (`SendingCounts`).

Fed from committed StatusChange rows (emailsvc.status.status_changes_committed),
so a transition rolled back is never counted; the breaker (breaker.py) reads
the rolling 24 h from these ~25 rows per domain and stream instead of a day of changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from core.sql_engine import counts_add
from emailsvc.models import PENDING_STATUSES, PRECEDENCE, SendingCounts, Status, StatusChange

if TYPE_CHECKING:
    from emailsvc.status import MessageFacts

# A recipient handed to the provider leaves the pending states for one of these
# (an event may move it past `sent` before the worker records it): counted once.
_ACCEPTED = frozenset(s for s, rank in PRECEDENCE.items() if rank >= PRECEDENCE[Status.SENT])


def sending_counts_add(*, changes: Sequence[StatusChange], messages: dict[int, MessageFacts]) -> None:
    """Add committed sends, bounces and complaints to the hourly counts per
    sending domain and message stream: one upsert, whatever the number of changes.
    `messages`: {message id: its sending domain and stream} of the changes' messages."""
    counts: dict[tuple[str, str, datetime], list[int]] = {}
    for change in changes:
        sent = change.from_status in PENDING_STATUSES and change.to_status in _ACCEPTED
        bounced = change.to_status == Status.BOUNCED
        complained = change.to_status == Status.COMPLAINED
        if not (sent or bounced or complained):
            continue
        facts = messages[change.message_id]
        hour = change.at.replace(minute=0, second=0, microsecond=0)
        row = counts.setdefault((facts.sending_domain, facts.stream, hour), [0, 0, 0])
        row[0] += sent
        row[1] += bounced
        row[2] += complained
    if not counts:
        return
    rows = [(*key, *added) for key, added in sorted(counts.items())]  # one lock order
    counts_add(SendingCounts, rows, key=("sending_domain", "stream", "hour"), counters=("sent", "bounced", "complained"))
