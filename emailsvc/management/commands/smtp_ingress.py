"""python manage.py smtp_ingress: the Procfile's `smtp` process (docs/smtp.md)."""

from django.core.management.base import BaseCommand

from emailsvc.smtp_ingress.server import serve


class Command(BaseCommand):
    help = "Accept mail over SMTP (submission with an API key as the password) until SIGTERM."

    def handle(self, *args, **options):
        serve()
