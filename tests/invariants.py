"""Checks of the stored facts that hold whatever faults happened on the way.

- `status_history_problems`: replaying each recipient's StatusChange rows gives
  its status — the chain starts where a recipient starts (queued, scheduled),
  each change starts from the status the one before ended at, and the last one
  ends at the status stored now.
- `sent_but_never_received`: every recipient recorded as handed to the provider
  (sent, or an event beyond it) is among the envelope recipients of a message
  the SMTP server took for that email.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from emailsvc.models import NOT_SENT_STATUSES, PENDING_STATUSES, Recipient

START_STATUSES = {"queued", "scheduled"}


def status_history_problems(*, email_ids: list[str] | None = None) -> list[str]:
    """What keeps the recipients of these emails (all stored, when None) from
    replaying to their status. One statement, so one snapshot: it can run while
    workers are still changing statuses (a change and its row commit together)."""
    recipients = Recipient.objects.all() if email_ids is None else Recipient.objects.filter(message__email_id__in=email_ids)
    rows = recipients.order_by("id", "status_changes__id").values_list(
        "id", "message__email_id", "email", "status", "status_changes__from_status", "status_changes__to_status"
    )
    stored: dict[int, tuple[str, str, str]] = {}
    history: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for recipient_id, email_id, address, status, from_status, to_status in rows:
        stored[recipient_id] = (email_id, address, status)
        if from_status is not None:
            history[recipient_id].append((from_status, to_status))
    problems = []
    for recipient_id, (email_id, address, status) in stored.items():
        changes = history[recipient_id]
        current = changes[0][0] if changes else status
        if changes and current not in START_STATUSES:
            problems.append(f"{email_id} {address}: history starts at {current}")
        for from_status, to_status in changes:
            if from_status != current:
                problems.append(f"{email_id} {address}: {from_status} → {to_status} after reaching {current}")
            current = to_status
        if changes and current != status:
            problems.append(f"{email_id} {address}: history ends at {current}, stored {status}")
        if not changes and status not in START_STATUSES:
            problems.append(f"{email_id} {address}: {status} without any status change")
    return problems


def histories_replay() -> None:
    """Assert that every stored recipient's status history replays to its status:
    the last check of a test that broke something on the way."""
    problems = status_history_problems()
    assert not problems, "status histories that do not replay:\n" + "\n".join(problems[:20])


def received_by_email(arrivals, email_ids: list[str]) -> dict[str, Counter]:
    """{email id: Counter(envelope recipient → copies)} of what the SMTP server took."""
    wanted = {email_id.encode(): email_id for email_id in email_ids}
    received: dict[str, Counter] = {email_id: Counter() for email_id in email_ids}
    for arrival in arrivals:
        for needle, email_id in wanted.items():
            if needle in arrival.data:
                received[email_id].update(address.lower() for address in arrival.rcpt_tos)
    return received


def sent_but_never_received(arrivals, *, email_ids: list[str]) -> list[str]:
    received = received_by_email(arrivals, email_ids)
    problems = []
    for email_id, address, stored in Recipient.objects.filter(message__email_id__in=email_ids).values_list(
        "message__email_id", "email", "status"
    ):
        handed = stored not in PENDING_STATUSES and stored not in NOT_SENT_STATUSES
        if handed and not received[email_id][address]:
            problems.append(f"{email_id} {address}: recorded {stored}, never reached the server")
    return problems
