"""python manage.py load_suppressions FILE [--partial] [--reason R]: a CSV list of
addresses suppressed at once, read and validated exactly as POST
/api/v1/suppressions/import does (format: emailsvc.suppressions.csv_rows)."""

import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from core.errors import EmailsvcError
from emailsvc.models import Suppression
from emailsvc.suppressions.csv_rows import csv_text, suppression_rows_read
from emailsvc.suppressions.services import ImportHasErrors, suppressions_import


class Command(BaseCommand):
    help = (
        "Suppress the addresses of a CSV file (header row: email[,reason,note,expires_at]). Every row is "
        "validated; if any is bad nothing is imported (exit code 1) unless --partial is given, and the bad rows "
        "are printed by line."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="The CSV file, UTF-8; '-' reads standard input")
        parser.add_argument(
            "--partial", action="store_true", help="Import the valid rows even when some are bad (they are listed)"
        )
        parser.add_argument(
            "--reason", default=Suppression.Reason.MANUAL, choices=Suppression.Reason.values,
            help="The reason of rows whose reason cell is empty (default: manual)",
        )

    def handle(self, *args, file: str, partial: bool, reason: str, **options):
        try:
            data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
        except OSError as error:
            raise CommandError(f"Cannot read {file}: {error.strerror or error}") from None
        try:
            rows = suppression_rows_read(csv_text(data), max_rows=settings.SUPPRESSION_IMPORT_MAX_ROWS, default_reason=reason)
        except EmailsvcError as error:  # the file as a whole: not UTF-8, no header, too many rows
            raise CommandError(f"{error.code}: {error.detail}") from None
        for error in rows.errors:
            self.stderr.write(f"line {error.line}: {error.error}: {error.detail}")
        source = f"load_suppressions:{'stdin' if file == '-' else Path(file).name}"
        try:
            result = suppressions_import(rows=rows, partial=partial, source=source)
        except ImportHasErrors as error:
            raise CommandError(error.detail) from None
        self.stdout.write(
            f"{result.read} rows: {result.imported} imported, {result.existing} already suppressed, "
            f"{result.duplicates} duplicates, {len(result.errors)} bad (not imported)."
        )
