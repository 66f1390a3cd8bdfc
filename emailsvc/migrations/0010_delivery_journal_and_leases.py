"""The delivery journal moves from Redis to the database (a Redis that restarts
empty no longer turns a dead worker's unrecorded sends into second sends), and
claims name the process holding them, which beats while it holds them (the
sweeper recovers a dead process's claims after its lease, not after ten minutes).
Adding a column with a constant default rewrites nothing on PostgreSQL 11+."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('emailsvc', '0009_fewer_write_indexes'),
    ]

    operations = [
        migrations.CreateModel(
            name='DeliveryJournal',
            fields=[
                ('message', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='+', serialize=False, to='emailsvc.message')),
                ('attempt', models.PositiveIntegerField(help_text="The message's attempts when it was claimed for this send")),
                ('outcome', models.JSONField(help_text='Provider message id, sent / failed / deferred recipient ids, reason')),
                ('written_at', models.DateTimeField()),
            ],
        ),
        migrations.CreateModel(
            name='DeliveryProcess',
            fields=[
                ('token', models.CharField(max_length=64, primary_key=True, serialize=False)),
                ('hostname', models.CharField(max_length=255)),
                ('pid', models.PositiveIntegerField()),
                ('started_at', models.DateTimeField()),
                ('beat_at', models.DateTimeField(db_index=True)),
            ],
        ),
        migrations.AddField(
            model_name='message',
            name='claimed_by',
            field=models.CharField(blank=True, default='', help_text='The delivery process holding the claim (DeliveryProcess.token); the sweeper recovers it once that process stops beating', max_length=64),
        ),
    ]
