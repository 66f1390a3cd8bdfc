import io

import boto3
from botocore.exceptions import ClientError
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from emailsvc.keys import api_key_create, api_key_revoke
from emailsvc.models import ApiKey

DEMO_KEY_NAME = "demo (make run)"


class Command(BaseCommand):
    help = (
        "Prepare the local sandbox: verify the default from-domain in the emulated SES, "
        "ensure an 'admin' superuser, and print a fresh demo API key (older demo keys are revoked)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--admin-password", required=True)
        # `make run` asks for both: one process instead of three saves two Django start-ups (~5 s on 2 cores).
        parser.add_argument("--migrate", action="store_true", help="apply the migrations first")
        parser.add_argument(
            "--example-templates", action="store_true", help="load the example templates first (once)"
        )

    def handle(self, *args, admin_password, migrate=False, example_templates=False, **options):
        if migrate:
            call_command("migrate", interactive=False, verbosity=0, stdout=io.StringIO())
        if example_templates:
            call_command("load_example_templates", stdout=io.StringIO())
        if settings.EMAIL_PROVIDER == "sandbox":
            ses = boto3.client("sesv2", region_name=settings.AWS_REGION, endpoint_url=settings.AWS_ENDPOINT_URL)
            for domain in {settings.DEFAULT_FROM_EMAIL.rpartition("@")[2], *settings.ALLOWED_FROM_DOMAINS} - {"*"}:
                try:
                    ses.create_email_identity(EmailIdentity=domain)
                except ClientError as error:
                    if error.response["Error"]["Code"] != "AlreadyExistsException":
                        raise CommandError(f"could not create the SES identity {domain}: {error}") from error
        users = get_user_model()
        admin = users.objects.filter(username="admin").first() or users(username="admin", email="admin@localhost")
        admin.is_staff = admin.is_superuser = True
        admin.set_password(admin_password)
        admin.save()
        for old in ApiKey.objects.filter(name=DEMO_KEY_NAME, revoked_at__isnull=True):
            api_key_revoke(api_key=old)
        _, raw_key = api_key_create(name=DEMO_KEY_NAME, permission=ApiKey.Permission.FULL)
        self.stdout.write(raw_key)
