"""Indexes no query reads, dropped: every non-HOT update of a message or
recipient (a send, an event) wrote each of them.

- message.group_id and recipient.message_id: covered by message_group_newest
  (group, -id) and recipient_unique_per_message (message, email);
- the `varchar_pattern_ops` twins PostgreSQL gets for LIKE 'x%' on email_id,
  group_id and provider_message_id: nothing here searches those by prefix
  (SQLite never had them: IF EXISTS).
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('emailsvc', '0008_email_list_indexes'),
    ]

    operations = [
        migrations.AlterField(
            model_name='message',
            name='group',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='messages', to='emailsvc.group'),
        ),
        migrations.AlterField(
            model_name='recipient',
            name='message',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='recipients', to='emailsvc.message'),
        ),
        migrations.RunSQL(
            [
                "DROP INDEX IF EXISTS emailsvc_message_email_id_11928ba4_like",
                "DROP INDEX IF EXISTS emailsvc_message_provider_message_id_34d14850_like",
                "DROP INDEX IF EXISTS emailsvc_recipient_group_id_000cc72a_like",
            ],
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
