"""How a message's status follows from its recipients' statuses (SPEC §3)."""

from collections.abc import Iterable

from emailsvc.models import NOT_SENT_STATUSES, PRECEDENCE, Status


def higher_status(current: str, candidate: str) -> str:
    """The status a recipient ends with when `candidate` is reported: never lower."""
    if current in NOT_SENT_STATUSES and candidate not in PRECEDENCE:
        return current
    return candidate if PRECEDENCE.get(candidate, -1) > PRECEDENCE.get(current, -1) else current


def summarize(statuses: Iterable[str]) -> str:
    """A message's status from its recipients'.

    The most advanced status among the recipients that were handed to the
    provider; when none was, failed before cancelled before suppressed (an
    email the caller cancelled reads `cancelled` even if one of its addresses
    was suppressed).
    """
    statuses = list(statuses)
    progressed = [s for s in statuses if s not in NOT_SENT_STATUSES]
    if progressed:
        return max(progressed, key=lambda s: PRECEDENCE.get(s, 0))
    for terminal in (Status.FAILED, Status.CANCELLED, Status.SUPPRESSED):
        if terminal in statuses:
            return terminal
    return Status.QUEUED
