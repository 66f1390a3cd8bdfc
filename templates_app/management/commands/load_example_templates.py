"""Create the shipped example templates (welcome, password-reset, invite and
their layout) unless templates of those names exist. `make run` calls it."""

from django.core.management.base import BaseCommand

from templates_app.services import template_examples_load


class Command(BaseCommand):
    help = "Create the example templates (welcome, password-reset, invite, base-layout) that do not exist yet."

    def handle(self, *args, **options):
        for name, created in template_examples_load().items():
            self.stdout.write(f"{name}: {'created' if created else 'exists, left alone'}")
