import json
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tracking.drain import events_drain


class Command(BaseCommand):
    help = (
        "Drain SES events from the SQS queue and apply them: one run with --once, "
        "else runs every SES_EVENTS_DRAIN_INTERVAL_SECONDS until interrupted."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="One drain run, then exit")
        parser.add_argument("--max-seconds", type=float, default=None, help="Stop receiving after this long")

    def handle(self, *args, once, max_seconds, **options):
        while True:
            result = events_drain(max_seconds=max_seconds)
            self.stdout.write(json.dumps(vars(result)))
            if result.skipped:
                self.stderr.write(f"skipped: {result.skipped}")
            if once:
                if result.errors:
                    raise CommandError("; ".join(result.errors))
                return
            time.sleep(settings.SES_EVENTS_DRAIN_INTERVAL_SECONDS)
