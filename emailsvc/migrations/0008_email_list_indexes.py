"""Indexes of GET /emails (issue 17): pages by status, template and recipient
newest first, and GIN indexes on tags and metadata on PostgreSQL.

The GIN indexes (jsonb_path_ops: they answer `@>` containment, which is all the
list asks of them) exist on PostgreSQL only, so they are created here rather
than declared in Message.Meta; SQLite filters those two columns without an index.
"""

from django.db import migrations, models

GIN_INDEXES = {
    "message_tags_gin": "tags",
    "message_metadata_gin": "metadata",
}


def gin_indexes_create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = apps.get_model("emailsvc", "Message")._meta.db_table
    for name, column in GIN_INDEXES.items():
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING gin ({column} jsonb_path_ops)")


def gin_indexes_drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in GIN_INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):

    dependencies = [
        ("emailsvc", "0007_sending_pauses_and_counts"),
    ]

    operations = [
        # (email, message) serves every lookup (email) did, and the newest messages of an address.
        migrations.RemoveIndex(model_name="recipient", name="recipient_email"),
        migrations.AddIndex(
            model_name="recipient",
            index=models.Index(fields=["email", "message"], name="recipient_email_message"),
        ),
        migrations.AddIndex(
            model_name="message",
            index=models.Index(fields=["status", "-id"], name="message_status_newest"),
        ),
        migrations.AddIndex(
            model_name="message",
            index=models.Index(fields=["template_name", "-id"], name="message_template_newest"),
        ),
        migrations.RunPython(gin_indexes_create, gin_indexes_drop, elidable=False),
    ]
