from django.core.management.base import BaseCommand, CommandError

from emailsvc.keys import api_key_create
from emailsvc.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key and print its secret (shown this once only)."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--permission", default=ApiKey.Permission.SENDING, choices=ApiKey.Permission.values)

    def handle(self, *args, name, permission, **options):
        if not name.strip():
            raise CommandError("--name must not be blank")
        api_key, raw_key = api_key_create(name=name, permission=permission)
        self.stderr.write(f"Created API key '{api_key.name}' ({api_key.permission}). Store it now; it is not shown again.")
        self.stdout.write(raw_key)
