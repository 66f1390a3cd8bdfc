"""Lifts still to be taken off SES's account-level suppression list, kept in the
database with the lift itself: a task lost with the broker no longer loses one."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('emailsvc', '0010_delivery_journal_and_leases'),
    ]

    operations = [
        migrations.CreateModel(
            name='SesSuppressionLift',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('email', models.CharField(max_length=320, unique=True)),
                ('lifted_at', models.DateTimeField()),
            ],
        ),
    ]
