"""Suppressions: add (idempotent), lift, import a list, and keep SES's
account-level suppression list and ours in step (SPEC §3, §4, §6.4; issue 16)."""

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from core.addresses import address_forms, address_key
from core.errors import DependencyFailed, ValidationFailed
from core.outages import outage
from emailsvc.delivery.queueing import ses_suppression_delete_enqueue
from emailsvc.models import SesSuppressionLift, Suppression
from emailsvc.selectors import suppressions_to_push
from emailsvc.suppressions import ses_sync
from emailsvc.suppressions.csv_rows import RowError, SuppressionRows

logger = logging.getLogger(__name__)

# Rows per statement of a set-based write (SQLite allows 32,766 variables a statement).
_WRITE_BATCH = 500
# An address from SES's list we do not take: PostgreSQL cannot hold NUL in
# text, and no address we send to holds a control character.
_UNSTORABLE = re.compile(r"[\x00-\x1f\x7f]")
_MAX_STORED_LENGTH = 320

# --- Suppressions -----------------------------------------------------------


def suppression_add(
    *,
    email: str,
    reason: str,
    source: str = "",
    note: str = "",
    expires_at: datetime | None = None,
) -> Suppression:
    """Suppress an address (idempotent: an existing entry is updated).

    Automatic suppressions from events go through suppression_ensure instead,
    which leaves an active entry as it is. The address is stored in its canonical form
    (core.addresses), the form sends are checked with; an address without
    one (an odd address in a provider event) is stored lower-cased rather than
    refused.
    """
    address = address_key(email)
    defaults = {"reason": reason, "source": source, "note": note, "expires_at": expires_at}
    suppression, _ = Suppression.objects.update_or_create(email=address, defaults=defaults)
    return suppression


def _active(now: datetime) -> Q:
    return Q(expires_at__isnull=True) | Q(expires_at__gt=now)


def suppression_ensure(
    *,
    email: str,
    reason: str,
    source: str = "",
    note: str = "",
    expires_at: datetime | None = None,
) -> tuple[Suppression, bool]:
    """Make sure an address is suppressed: (the entry, whether it was created).

    An active entry — in whichever form the address was stored — is returned
    exactly as it is (False). Without one, the entry is created (True); an
    expired entry is replaced by a new one, so it sorts with the newest (lists
    go by id) and counts as new for the push to SES. Safe against a concurrent
    add of the same address.
    """
    address = address_key(email)
    now = timezone.now()
    with transaction.atomic():
        stored = list(Suppression.objects.filter(email__in=address_forms(email)))
        active = [s for s in stored if s.expires_at is None or s.expires_at > now]
        if active:
            return min(active, key=lambda s: (s.email != address, s.pk)), False
        if stored:
            Suppression.objects.filter(pk__in=[s.pk for s in stored]).delete()
        try:
            with transaction.atomic():
                created = Suppression.objects.create(
                    email=address, reason=reason, source=source, note=note, expires_at=expires_at
                )
        except IntegrityError:  # added by someone else since we looked
            return Suppression.objects.get(email=address), False
    return created, True


def suppression_lift(*, email: str) -> bool:
    """Remove a suppression, in whichever form it was stored; True if there was one.

    When the SES account-level list is synchronised (SES_SUPPRESSION_SYNC),
    the address is also taken off that list once this commits (a task):
    otherwise the next pull would bring it straight back, and SES would keep
    dropping sends to it.
    """
    if "\x00" in email:
        return False  # no entry can have it, and PostgreSQL refuses NUL in a query
    with transaction.atomic():
        deleted, _ = Suppression.objects.filter(email__in=address_forms(email)).delete()
        if deleted and settings.SES_SUPPRESSION_SYNC:
            address = address_key(email)
            SesSuppressionLift.objects.update_or_create(email=address, defaults={"lifted_at": timezone.now()})
            transaction.on_commit(lambda: _ses_lift_publish(address))
    return bool(deleted)


def _ses_lift_publish(address: str) -> None:
    """Ask a worker to take the address off SES's list now. If the broker is
    down, the pending lift waits in the database for the next periodic sync."""
    try:
        ses_suppression_delete_enqueue(email=address)
    except Exception as error:  # any broker failure: the lift is stored, the sync forwards it
        outage("the Celery broker").failed(
            error, action="lifted addresses go to SES's suppression list with the next periodic sync"
        )


def ses_lift_forward(*, email: str) -> bool:
    """Take a lifted address off SES's account-level list and forget the pending
    lift; False if SES did not have it. Raises SesSuppressionListError when SES
    cannot be asked (transient: the lift stays pending), after forgetting the
    lift when SES refused for good."""
    try:
        removed = ses_sync.suppressed_destination_delete(email=email)
    except ses_sync.SesSuppressionListError as error:
        if not (error.transient or error.status is None):
            SesSuppressionLift.objects.filter(email=email).delete()
        raise
    SesSuppressionLift.objects.filter(email=email).delete()
    return removed


def ses_lifts_forward(*, limit: int = 500) -> dict:
    """Forward the pending lifts (their tasks were lost, or SES was away); stops at
    the first transient failure. {"forwarded": n, "refused": n, "pending": n}."""
    result = {"forwarded": 0, "refused": 0, "pending": 0}
    for email in SesSuppressionLift.objects.order_by("lifted_at").values_list("email", flat=True)[:limit]:
        try:
            ses_lift_forward(email=email)
            result["forwarded"] += 1
        except ses_sync.SesSuppressionListError as error:
            if error.transient or error.status is None:
                break
            result["refused"] += 1
            logger.warning("lifted address not taken off SES's suppression list: %s", error)
    result["pending"] = SesSuppressionLift.objects.count()
    return result


def _batches(items: list, size: int):
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


@dataclass(frozen=True)
class _Entry:
    email: str
    reason: str
    note: str = ""
    expires_at: datetime | None = None
    source: str = ""  # this entry's own; else the call's


@dataclass(frozen=True)
class SuppressionRequest:
    """One address an event asks to suppress (suppressions_ensure)."""

    email: str
    reason: str
    source: str = ""
    note: str = ""


def suppressions_ensure(*, requests: list[SuppressionRequest]) -> int:
    """`suppression_ensure` for many addresses at once, set-based, in the
    caller's transaction (the event drain's path): an address with an active
    entry — in whichever form it was stored — keeps it exactly as it is; the
    others are suppressed (an expired entry is replaced). The first request of
    an address wins. Returns how many entries were created."""
    entries: dict[str, _Entry] = {}
    for request in requests:
        address = address_key(request.email)
        entries.setdefault(address, _Entry(address, request.reason, request.note, source=request.source[:255]))
    if not entries:
        return 0
    with transaction.atomic():
        added, _ = _suppressions_insert(list(entries.values()), source="")
    return added


def _suppressions_insert(entries: list[_Entry], *, source: str) -> tuple[int, int]:
    """Suppress every address of `entries` that is not already: (added, already there).

    Set-based, a few statements per 500 addresses, in the caller's transaction.
    Active entries are kept exactly as they are (as automatic suppressions
    do); expired ones are replaced. The addresses are canonical and distinct.
    """
    now = timezone.now()
    added = existing = 0
    for batch in _batches(entries, _WRITE_BATCH):
        forms = set().union(*(address_forms(entry.email) for entry in batch))
        Suppression.objects.filter(email__in=forms).exclude(_active(now)).delete()
        present = {address_key(email) for email in Suppression.objects.filter(email__in=forms).values_list("email", flat=True)}
        new = [
            Suppression(email=e.email, reason=e.reason, source=e.source or source, note=e.note, expires_at=e.expires_at)
            for e in batch
            if e.email not in present
        ]
        # ignore_conflicts: an address added meanwhile by a send's bounce stays as it is.
        Suppression.objects.bulk_create(new, ignore_conflicts=True)
        added += len(new)
        existing += len(batch) - len(new)
    return added, existing


# --- Import -------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    read: int  # data rows in the file
    imported: int  # addresses suppressed by this import
    existing: int  # addresses already suppressed (left as they were)
    duplicates: int  # rows repeating an address of an earlier row
    errors: list[RowError]  # bad rows, not imported


class ImportHasErrors(ValidationFailed):
    """Bad rows in an import that was not partial: nothing was imported."""

    code = "import_has_errors"

    def __init__(self, rows: SuppressionRows):
        self.rows = rows
        lines = ", ".join(str(error.line) for error in rows.errors[:10]) + (", …" if len(rows.errors) > 10 else "")
        valid = len(rows.valid) + rows.duplicates
        super().__init__(
            f"{len(rows.errors)} of {rows.read} rows are invalid (line{'s' if len(rows.errors) > 1 else ''} {lines}); "
            f"nothing was imported. Fix them, or import again as a partial import (partial=true, --partial) "
            f"to import the {valid} valid rows."
        )


def suppressions_import(*, rows: SuppressionRows, partial: bool, source: str) -> ImportResult:
    """Suppress the addresses of a read CSV file (emailsvc.suppressions.csv_rows).

    All or nothing by default: if any row is bad, ImportHasErrors is raised and
    nothing is written. With `partial`, the valid rows are imported and the bad
    ones reported in the result. Either way the write is one transaction, and
    addresses already suppressed are left exactly as they are (counted as
    existing); expired entries are renewed.
    """
    if rows.errors and not partial:
        raise ImportHasErrors(rows)
    entries = [_Entry(row.email, row.reason, row.note, row.expires_at) for row in rows.valid]
    with transaction.atomic():
        imported, existing = _suppressions_insert(entries, source=source[:255])
    logger.info(
        "suppressions imported source=%s rows=%d imported=%d existing=%d duplicates=%d bad_rows=%d",
        source, rows.read, imported, existing, rows.duplicates, len(rows.errors),
    )
    return ImportResult(
        read=rows.read, imported=imported, existing=existing, duplicates=rows.duplicates, errors=rows.errors
    )


# --- SES's account-level suppression list ---------------------------------------

SES_SOURCE = "ses-account-list"
SES_REASONS = {"BOUNCE": Suppression.Reason.HARD_BOUNCE, "COMPLAINT": Suppression.Reason.COMPLAINT}
OUR_REASONS_FOR_SES = {ours: theirs for theirs, ours in SES_REASONS.items()}
PUSH_WATERMARK_KEY = "emailsvc:ses-suppressions:pushed-through-id"
# Entries younger than this wait for the next push: the ids of an import still
# being committed are lower than those of entries committed meanwhile, and the
# push only ever moves forward through ids.
PUSH_SETTLE_SECONDS = 300
# This many refusals in a row stop a push: the account refuses them all (an
# account still in the SES sandbox), not one odd address.
_PUSH_MAX_REFUSED_IN_A_ROW = 10


class SesSyncFailed(DependencyFailed):
    """A pull or push stopped at a failed SES call; `result` holds what was done before it."""

    code = "ses_sync_failed"

    def __init__(self, error: ses_sync.SesSuppressionListError, result):
        self.error = error
        self.result = result
        super().__init__(str(error))


@dataclass
class SesPullResult:
    listed: int = 0  # entries on SES's list
    added: int = 0  # suppressed here by this pull
    existing: int = 0  # already suppressed here (left as they were)
    skipped: int = 0  # entries with a reason or an address we cannot take


@dataclass
class SesPushResult:
    pushed: int = 0
    refused: list[str] = field(default_factory=list)  # addresses SES refused (BadRequestException)


def ses_suppressions_apply(*, summaries: list[dict]) -> SesPullResult:
    """Suppress here what one page of ListSuppressedDestinations lists.

    `summaries` are SES's entries as botocore returns them ({"EmailAddress",
    "Reason", "LastUpdateTime"}). BOUNCE becomes hard_bounce and COMPLAINT
    complaint, with source `ses-account-list`; an address already suppressed
    here keeps its entry as it is (as automatic suppressions do). One transaction.
    """
    result = SesPullResult(listed=len(summaries))
    entries: dict[str, _Entry] = {}
    for summary in summaries:
        reason = SES_REASONS.get(summary.get("Reason"))
        address = summary.get("EmailAddress")
        if reason is None or not isinstance(address, str) or _UNSTORABLE.search(address):
            result.skipped += 1
            continue
        address = address_key(address)
        if len(address) > _MAX_STORED_LENGTH:
            result.skipped += 1
            continue
        since = summary.get("LastUpdateTime")
        note = f"On SES's account-level suppression list ({summary['Reason']})"
        note += f" since {since:%Y-%m-%d %H:%M} UTC." if isinstance(since, datetime) else "."
        entries.setdefault(address, _Entry(address, reason, note))
    listed_twice = len(summaries) - result.skipped - len(entries)
    result.skipped += listed_twice
    # Lifted here and not yet taken off SES's list: not brought back.
    for address in SesSuppressionLift.objects.filter(email__in=list(entries)).values_list("email", flat=True):
        del entries[address]
        result.skipped += 1
    with transaction.atomic():
        result.added, result.existing = _suppressions_insert(list(entries.values()), source=SES_SOURCE)
    return result


def ses_suppressions_pull(*, client=None) -> SesPullResult:
    """Page through SES's account-level suppression list and suppress every
    address on it here too (ses_suppressions_apply, one transaction a page).

    Raises SesSyncFailed when a call to SES fails; pages applied before it stay applied.
    """
    result = SesPullResult()
    try:
        for page in ses_sync.suppressed_destination_pages(client=client):
            applied = ses_suppressions_apply(summaries=page)
            for name in ("listed", "added", "existing", "skipped"):
                setattr(result, name, getattr(result, name) + getattr(applied, name))
    except ses_sync.SesSuppressionListError as error:
        raise SesSyncFailed(error, result) from None
    logger.info(
        "SES suppression list pulled listed=%d added=%d existing=%d skipped=%d",
        result.listed, result.added, result.existing, result.skipped,
    )
    return result


def _watermark() -> int:
    from core.redisclient import redis_client

    return int(redis_client().get(PUSH_WATERMARK_KEY) or 0)


def _watermark_save(suppression_id: int) -> None:
    from core.redisclient import redis_client

    redis_client().set(PUSH_WATERMARK_KEY, suppression_id)


def ses_suppressions_push(*, everything: bool = False, client=None) -> SesPushResult:
    """Put our hard_bounce and complaint suppressions on SES's account-level list
    (as BOUNCE and COMPLAINT, the only reasons SES takes).

    Only permanent entries (no expires_at: SES's list never expires) that did
    not come from SES's list, once PUSH_SETTLE_SECONDS old. Entries are pushed once: the highest id pushed is
    kept in Redis and the next push starts after it (`everything` starts from
    the beginning). An address SES refuses is reported and passed over; any
    other failure — or refusals in a row, meaning the account takes none —
    raises SesSyncFailed, and the next push starts again from there.
    """
    client = client or ses_sync.ses_client()
    result = SesPushResult()
    after_id = 0 if everything else _watermark()
    # Refusals not yet known to be one-offs: (the id before the first of them, their addresses).
    refusals_before, refusals = after_id, []
    settled = timezone.now() - timedelta(seconds=PUSH_SETTLE_SECONDS)
    while batch := suppressions_to_push(
        after_id=after_id, reasons=list(OUR_REASONS_FOR_SES), exclude_source=SES_SOURCE, created_before=settled
    ):
        for suppression in batch:
            try:
                ses_sync.suppressed_destination_put(
                    email=suppression.email, reason=OUR_REASONS_FOR_SES[suppression.reason], client=client
                )
            except ses_sync.SesSuppressionListError as error:
                if error.ses_code != "BadRequestException" or len(refusals) + 1 >= _PUSH_MAX_REFUSED_IN_A_ROW:
                    # The next push starts again at the first address not known to be pushed or refused.
                    _watermark_save(refusals_before if refusals else after_id)
                    raise SesSyncFailed(error, result) from None
                if not refusals:
                    refusals_before = after_id
                refusals.append(suppression.email)
            else:
                result.refused += refusals
                refusals = []
                result.pushed += 1
            after_id = suppression.pk
        _watermark_save(refusals_before if refusals else after_id)
    result.refused += refusals
    _watermark_save(after_id)
    if result.refused:
        logger.warning(
            "SES refused %d suppressed addresses (BadRequestException); they stay suppressed here", len(result.refused)
        )
    logger.info("SES suppression list pushed pushed=%d refused=%d", result.pushed, len(result.refused))
    return result


def ses_suppressions_sync(*, pull: bool, push: bool) -> dict:
    """The periodic sync: pull, then push; a failed step is logged, not raised
    (the next run tries again), and reported in the answer."""
    report: dict = {}
    if pull and SesSuppressionLift.objects.exists():
        report["lifts"] = ses_lifts_forward()
    for name, step, wanted in (("pull", ses_suppressions_pull, pull), ("push", ses_suppressions_push, push)):
        if not wanted:
            continue
        try:
            report[name] = vars(step())
        except SesSyncFailed as failure:
            logger.warning("SES suppression list %s failed: %s", name, failure)
            report[name] = {**vars(failure.result), "error": str(failure)}
    return report


def ses_suppression_forget(*, email: str) -> bool:
    """Take a lifted address off SES's account-level list; False if it was not on it.

    Raises ses_sync.SesSuppressionListError when SES cannot be asked.
    """
    return ses_lift_forward(email=email)
