"""python manage.py resume_sending [--domain D]: end sending pauses (the breaker's, the provider's)."""

from django.core.management.base import BaseCommand

from emailsvc.sending_control.breaker import sending_resume, sending_status


class Command(BaseCommand):
    help = "Resume a paused sending domain (--domain example.com), the account (--domain '*'), or every pause."

    def add_arguments(self, parser):
        parser.add_argument("--domain", help='the sending domain, or "*" for the whole account; default: every pause')

    def handle(self, *args, domain=None, **options):
        before = sending_status()
        paused = [d["domain"] for d in [before["account"], *before["domains"]] if d["paused"]]
        resumed = sending_resume(domain=domain.lower() if domain and domain != "*" else domain, by="resume_sending command")
        if not resumed:
            self.stdout.write(f"Nothing to resume (paused: {', '.join(paused) or 'none'}).")
            return
        self.stdout.write(self.style.SUCCESS(f"Resumed {resumed} pause(s): {domain or ', '.join(paused)}."))
