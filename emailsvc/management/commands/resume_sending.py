"""python manage.py resume_sending [--domain D] [--stream S]: end sending pauses (the breaker's, the provider's)."""

from django.core.management.base import BaseCommand

from emailsvc.sending_control.breaker import sending_resume, sending_status


class Command(BaseCommand):
    help = (
        "Resume a paused sending domain (--domain example.com: its pause and its streams' pauses), one message "
        "stream of it (--stream broadcast), the account (--domain '*'), or every pause."
    )

    def add_arguments(self, parser):
        parser.add_argument("--domain", help='the sending domain, or "*" for the whole account; default: every pause')
        parser.add_argument(
            "--stream",
            help="only the pause of this message stream (of --domain, or of every domain); default: every stream",
        )

    def handle(self, *args, domain=None, stream=None, **options):
        before = sending_status()
        paused = [d["domain"] for d in [before["account"], *before["domains"]] if d["paused"]]
        paused += [f"{d['domain']} ({s['stream']})" for d in before["domains"] for s in d["streams"] if s["paused"]]
        resumed = sending_resume(
            domain=domain.lower() if domain and domain != "*" else domain, stream=stream.strip() if stream is not None else None,
            by="resume_sending command",
        )
        if not resumed:
            self.stdout.write(f"Nothing to resume (paused: {', '.join(paused) or 'none'}).")
            return
        what = f"{domain or 'every domain'} ({stream})" if stream else domain or ", ".join(paused)
        self.stdout.write(self.style.SUCCESS(f"Resumed {resumed} pause(s): {what}."))
