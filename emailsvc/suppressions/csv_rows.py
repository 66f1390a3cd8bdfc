"""Suppression lists as CSV: every row read and validated in one place, and
every row written the same way, for the API (`POST /api/v1/suppressions/import`,
`GET /api/v1/suppressions/export`), `manage.py load_suppressions` and the
admin's import and export (console.admin.sending, through django-import-export).

The format: UTF-8 (a byte-order mark is fine), comma-separated (a header with
semicolons or tabs and no comma switches to that delimiter), a header row
first, then one suppression per row::

    email,reason,note,expires_at
    jane@example.com,hard_bounce,imported from the old ESP,
    Kim@Bücher.example,,,2027-01-31

`email` is required; `reason` (hard_bounce, complaint, soft_bounce_limit,
manual, unsubscribe; empty: the importer's default, `manual` unless told),
`note` and `expires_at` (ISO-8601 date or date-time, in the future; a date is
midnight UTC; empty: never expires) are optional; the importer sets the
source. Any other column is refused, so a misspelt header never drops a column
silently. Blank lines are skipped. An export writes these four columns, so a
file exported imports back unchanged.

Formulas: a spreadsheet runs a cell starting with `=`, `+`, `-` or `@` (an
address may start with the first three, a note with any). An export writes
such a cell behind a `'`, so a spreadsheet reads it as text, and a cell that
already starts with `'` and one of them (or `''`) behind one more; an import
drops a `'` before one of those characters or before another `'`, so every
cell reads back as it was.

Line numbers are the file's own, counting the header as line 1; a quoted cell
spanning lines is reported at the line where its row starts. An address given
twice is imported once (the first row wins) and counted as a duplicate.
"""

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time

from django.db.models import QuerySet
from django.utils import dateparse, timezone

from core.addresses import CONTROL_CHARACTERS, InvalidAddress, address_canonical, printable, shown
from core.errors import PayloadTooLarge, ValidationFailed
from emailsvc.models import Suppression

COLUMNS = ("email", "reason", "note", "expires_at")
# A cell starting with one of these is a formula to a spreadsheet.
FORMULA_STARTS = ("=", "+", "-", "@")
MAX_ADDRESS_LENGTH = 320  # Suppression.email; RFC 3696
MAX_NOTE_LENGTH = 2000
EXPORT_CHUNK_ROWS = 1000  # rows read by one query of an export


class CsvUnreadable(ValidationFailed):
    """The file as a whole cannot be read: not UTF-8, no header, unknown columns."""

    code = "invalid_csv"
    default_detail = "The CSV file cannot be read."


class TooManyRows(PayloadTooLarge):
    code = "too_many_rows"
    default_detail = "The CSV file has more rows than one import may hold."


@dataclass(frozen=True)
class SuppressionRow:
    """One valid row: the address in its canonical form."""

    line: int
    email: str
    reason: str
    note: str = ""
    expires_at: datetime | None = None


@dataclass(frozen=True)
class RowError:
    """One invalid row: its line, a stable code and what is wrong."""

    line: int
    error: str
    detail: str


@dataclass
class SuppressionRows:
    """A whole file read: its valid rows (one per address) and its bad ones."""

    valid: list[SuppressionRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    duplicates: int = 0  # rows repeating an address of an earlier row
    read: int = 0  # data rows (blank lines and the header not counted)


def cell_escaped(value: str) -> str:
    """A cell as an export writes it: never a formula (see the module docstring)."""
    if value.startswith(FORMULA_STARTS) or (value.startswith("'") and value[1:].startswith((*FORMULA_STARTS, "'"))):
        return "'" + value
    return value


def cell_unescaped(value: str) -> str:
    """A cell as an import reads it: the export's escape undone."""
    if value.startswith("'") and value[1:].startswith((*FORMULA_STARTS, "'")):
        return value[1:]
    return value


def suppression_cells(suppression: Suppression) -> list[str]:
    """One suppression as an export's row (COLUMNS), ready for csv.writer."""
    expires_at = suppression.expires_at.isoformat() if suppression.expires_at else ""
    return [cell_escaped(value) for value in (suppression.email, suppression.reason, suppression.note, expires_at)]


def suppressions_csv(rows: QuerySet[Suppression]) -> Iterator[str]:
    """An export of `rows` as CSV text, the header first, then a piece per
    EXPORT_CHUNK_ROWS suppressions, newest first: each piece is one query (the
    ids below the last one written), so the table is never read into memory
    at once and no cursor stays open between pieces."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    rows = rows.order_by("-id").only("id", "email", "reason", "note", "expires_at")
    below = None
    while True:
        chunk = list((rows if below is None else rows.filter(id__lt=below))[:EXPORT_CHUNK_ROWS])
        writer.writerows(suppression_cells(suppression) for suppression in chunk)
        if text := buffer.getvalue():
            yield text
        buffer.seek(0)
        buffer.truncate()
        if len(chunk) < EXPORT_CHUNK_ROWS:
            return
        below = chunk[-1].id


def csv_text(data: bytes) -> str:
    """The text of an uploaded file: UTF-8, with or without a byte-order mark."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise CsvUnreadable(
            f"The file is not UTF-8 text (line {line}, byte {error.start}). Save it as UTF-8 CSV."
        ) from None


def _delimiter(text: str) -> str:
    header = text.lstrip("\r\n").partition("\n")[0]
    if "," not in header:
        for candidate in (";", "\t"):
            if candidate in header:
                return candidate
    return ","


def _header(cells: list[str], line: int) -> list[str]:
    names = [cell.strip().lower() for cell in cells]
    if "email" not in names:
        if any("@" in name for name in names):
            raise CsvUnreadable(
                f"Line {line} must be the header row, e.g. 'email,reason,note,expires_at'; "
                f"it holds an address ({shown(cells[0])})."
            )
        raise CsvUnreadable(f"The header (line {line}) has no 'email' column; the columns are {', '.join(COLUMNS)}.")
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        raise CsvUnreadable(
            f"Unknown column {shown(unknown[0])} in the header (line {line}); the columns are {', '.join(COLUMNS)}."
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CsvUnreadable(f"The header (line {line}) names the column {shown(repeated[0])} twice.")
    return names


def _expires_at(value: str, now: datetime) -> datetime | None:
    if not value:
        return None
    try:
        moment = dateparse.parse_datetime(value)
        if moment is None and (day := dateparse.parse_date(value)) is not None:
            moment = datetime.combine(day, time.min, tzinfo=UTC)
    except ValueError:  # well formed, but not a date (month 13)
        moment = None
    if moment is None:
        raise ValueError(f"expires_at {shown(value)} is not an ISO-8601 date or date-time (2027-01-31T12:00:00Z).")
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=UTC)
    if moment <= now:
        raise ValueError(f"expires_at {shown(value)} is in the past: the suppression would never apply.")
    return moment


def _row(cells: dict[str, str], *, line: int, default_reason: str, now: datetime) -> SuppressionRow | RowError:
    email = cells.get("email", "")
    if not email:
        return RowError(line, "missing_fields", "The email cell is empty.")
    if len(email) > MAX_ADDRESS_LENGTH:
        return RowError(line, "invalid_address", f"{shown(email)} is longer than {MAX_ADDRESS_LENGTH} characters.")
    try:
        email = address_canonical(email)
    except InvalidAddress as error:
        return RowError(line, "invalid_address", str(error))
    reason = cells.get("reason", "").lower() or default_reason
    if reason not in Suppression.Reason.values:
        return RowError(
            line, "invalid_reason", f"reason {shown(reason)} is not one of {', '.join(Suppression.Reason.values)}."
        )
    note = cells.get("note", "")
    if len(note) > MAX_NOTE_LENGTH:
        return RowError(line, "invalid_field", f"The note has {len(note)} characters; at most {MAX_NOTE_LENGTH}.")
    # Control characters, line breaks among them: a note that runs over lines
    # is most often a stray quote that swallowed the rows after it.
    if control := CONTROL_CHARACTERS.search(note):
        return RowError(
            line, "invalid_field",
            f"The note may not contain control characters (line breaks, tabs); it has U+{ord(control.group()):04X}.",
        )
    try:
        expires_at = _expires_at(cells.get("expires_at", ""), now)
    except ValueError as error:
        return RowError(line, "invalid_expires_at", str(error))
    return SuppressionRow(line=line, email=email, reason=reason, note=note, expires_at=expires_at)


def suppression_rows_read(
    text: str, *, max_rows: int, default_reason: str = Suppression.Reason.MANUAL
) -> SuppressionRows:
    """Read and validate a whole CSV file (the format is in this module's docstring).

    Every row is checked; bad rows are collected with their line, never
    raised, so a caller can report them all. Raises CsvUnreadable when the file
    as a whole cannot be read (no header, an unknown column, a broken quote)
    and TooManyRows past `max_rows` data rows (reading stops there).
    """
    if default_reason not in Suppression.Reason.values:
        raise ValueError(f"default_reason {default_reason!r} is not a suppression reason")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text), strict=True)
    result = SuppressionRows()
    seen: set[str] = set()
    names: list[str] | None = None
    now = timezone.now()
    line_before = 0
    try:
        for cells in reader:
            line, line_before = line_before + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue  # a blank line (or only separators)
            if names is None:
                names = _header(cells, line)
                continue
            result.read += 1
            if result.read > max_rows:
                raise TooManyRows(f"The file has more than {max_rows:,} rows; split it into files of at most that many.")
            if len(cells) > len(names):
                result.errors.append(
                    RowError(line, "invalid_field", f"{len(cells)} cells, but the header names {len(names)} columns.")
                )
                continue
            row = _row(
                {name: cell_unescaped(cell.strip()) for name, cell in zip(names, cells, strict=False)},
                line=line, default_reason=default_reason, now=now,
            )
            if isinstance(row, RowError):
                result.errors.append(row)
            elif row.email in seen:
                result.duplicates += 1
            else:
                seen.add(row.email)
                result.valid.append(row)
    except csv.Error as error:
        raise CsvUnreadable(f"Line {reader.line_num} cannot be read as CSV: {printable(str(error))}.") from None
    if names is None:
        raise CsvUnreadable("The file is empty; it needs a header row (email[,reason,note,expires_at]) and rows.")
    return result
