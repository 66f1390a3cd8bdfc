"""python manage.py sync_ses_suppressions [--push] [--push-all]: pull SES's
account-level suppression list into ours now (what the beat task does every
SES_SUPPRESSION_SYNC_INTERVAL_SECONDS), and with --push put ours on it."""

from django.core.management.base import BaseCommand, CommandError

from emailsvc.suppressions.services import SesSyncFailed, ses_suppressions_pull, ses_suppressions_push


class Command(BaseCommand):
    help = (
        "Pull SES's account-level suppression list: every address on it is suppressed here too (BOUNCE → "
        "hard_bounce, COMPLAINT → complaint; entries already here are kept as they are). With --push, also put "
        "our permanent hard_bounce and complaint suppressions on SES's list."
    )

    def add_arguments(self, parser):
        parser.add_argument("--push", action="store_true", help="Also push ours added since the last push")
        parser.add_argument("--push-all", action="store_true", help="Also push ours, all of them again")
        parser.add_argument("--no-pull", action="store_true", help="Do not pull (with --push: push only)")

    def handle(self, *args, push: bool, push_all: bool, no_pull: bool, **options):
        failed = []
        if not no_pull:
            try:
                pulled = ses_suppressions_pull()
            except SesSyncFailed as failure:
                pulled = failure.result
                failed.append(str(failure))
            self.stdout.write(
                f"pull: {pulled.listed} on SES's list, {pulled.added} added here, {pulled.existing} already here, "
                f"{pulled.skipped} skipped"
            )
        if push or push_all:
            try:
                pushed = ses_suppressions_push(everything=push_all)
            except SesSyncFailed as failure:
                pushed = failure.result
                failed.append(str(failure))
            self.stdout.write(f"push: {pushed.pushed} put on SES's list, {len(pushed.refused)} refused by SES")
            for address in pushed.refused:
                self.stderr.write(f"refused by SES: {address}")
        if failed:
            raise CommandError("; ".join(failed))
