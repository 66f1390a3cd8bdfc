from django.core.management.base import BaseCommand, CommandError

from core.errors import EmailsvcError
from emailsvc.keys import api_key_create
from emailsvc.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key and print its secret (shown this once only)."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--permission", default=ApiKey.Permission.SENDING, choices=ApiKey.Permission.values)
        parser.add_argument(
            "--domain", action="append", default=[], dest="domains",
            help="A sending domain the key may send from (and its sub-domains); repeat for more. None: any.",
        )
        parser.add_argument("--test", action="store_true", help="A test key: its emails never reach the provider.")

    def handle(self, *args, name, permission, domains, test, **options):
        if not name.strip():
            raise CommandError("--name must not be blank")
        try:
            api_key, raw_key = api_key_create(name=name, permission=permission, domains=domains, test=test)
        except EmailsvcError as error:
            raise CommandError(error.detail) from None
        scope = f", domains {', '.join(api_key.domains)}" if api_key.domains else ""
        mode = "test key" if api_key.test else "API key"
        self.stderr.write(
            f"Created {mode} '{api_key.name}' ({api_key.permission}{scope}). Store it now; it is not shown again."
        )
        self.stdout.write(raw_key)
