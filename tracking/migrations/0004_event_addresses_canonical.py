"""Event addresses rewritten in the canonical form of core.addresses, which now
removes quotes a local part does not need: the address page and the admin find
an event under the address its recipient is stored as. An event already stored
for the canonical form of the same mailbox keeps the row as it was recorded."""

from django.db import migrations

from core.addresses import address_key


def _events_rewrite(apps, schema_editor):
    EngagementEvent = apps.get_model("tracking", "EngagementEvent")
    quoted = EngagementEvent.objects.filter(recipient_email__contains='"')
    for pk, event_id, email in list(quoted.values_list("pk", "event_id", "recipient_email")):
        canonical = address_key(email)
        taken = EngagementEvent.objects.filter(event_id=event_id, recipient_email=canonical).exists()
        if canonical != email and not taken:
            EngagementEvent.objects.filter(pk=pk).update(recipient_email=canonical)


class Migration(migrations.Migration):

    dependencies = [
        ("tracking", "0003_event_indexes"),
    ]

    operations = [
        migrations.RunPython(_events_rewrite, migrations.RunPython.noop),
    ]
