"""python manage.py smtp_ingress: the Procfile's `smtp` process (docs/smtp.md)."""

import errno

from django.core.management.base import BaseCommand, CommandError

from emailsvc.smtp_ingress.server import serve


class Command(BaseCommand):
    help = "Accept mail over SMTP (submission with an API key as the password) until SIGTERM."

    def handle(self, *args, **options):
        try:
            serve()
        except OSError as error:
            if error.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                raise
            raise CommandError(
                f"cannot listen for SMTP submission ({error.strerror}); "
                "check SMTP_INGRESS_BIND, SMTP_INGRESS_PORT and SMTP_INGRESS_TLS_PORT"
            ) from None
