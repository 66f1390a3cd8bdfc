import django.core.validators
import django.db.models.deletion
import django.db.models.functions.text
from django.db import migrations, models


def streams_seed(apps, schema_editor):
    Stream = apps.get_model("emailsvc", "Stream")
    Stream.objects.get_or_create(
        name="transactional",
        defaults={"description": "Password resets, receipts, alerts: what one person asked for", "unsubscribe": "on_request", "rate_share": 1.0},
    )
    Stream.objects.get_or_create(
        name="broadcast",
        defaults={"description": "Newsletters, digests, product notices", "unsubscribe": "always", "rate_share": 0.5},
    )


class Migration(migrations.Migration):

    dependencies = [
        ('emailsvc', '0016_message_tracking'),
    ]

    operations = [
        migrations.CreateModel(
            name='Stream',
            fields=[
                ('name', models.SlugField(max_length=64, primary_key=True, serialize=False)),
                ('description', models.CharField(blank=True, max_length=200)),
                ('configuration_set', models.CharField(blank=True, help_text='SES configuration set of its emails; empty: SES_CONFIGURATION_SET', max_length=64)),
                ('unsubscribe', models.CharField(choices=[('always', 'always: every email carries List-Unsubscribe (RFC 8058 one-click)'), ('on_request', 'on request: only emails sent with "unsubscribe": true carry it')], default='on_request', max_length=16)),
                ('rate_share', models.FloatField(default=1.0, help_text='The most of SEND_RATE_PER_SECOND its emails may take (0.01–1); the rest stays free for the others', validators=[django.core.validators.MinValueValidator(0.01), django.core.validators.MaxValueValidator(1.0)])),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
            ],
        ),
        migrations.CreateModel(
            name='StreamSuppression',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('email', models.CharField(help_text='Canonical address', max_length=320)),
                ('reason', models.CharField(default='unsubscribe', max_length=24)),
                ('source', models.CharField(blank=True, help_text='The email whose link was used', max_length=255)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('stream', models.ForeignKey(db_column='stream', on_delete=django.db.models.deletion.CASCADE, related_name='+', to='emailsvc.stream')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('email', 'stream'), name='stream_suppression_unique'), models.CheckConstraint(condition=models.Q(('email', django.db.models.functions.text.Lower('email'))), name='stream_suppression_lowercase')],
            },
        ),
        migrations.AddField(
            model_name='message',
            name='stream',
            field=models.CharField(default='transactional', max_length=64),
        ),
        migrations.AddField(
            model_name='message',
            name='unsubscribe',
            field=models.BooleanField(default=False),
        ),
        migrations.AddField(
            model_name='apikey',
            name='streams',
            field=models.JSONField(blank=True, default=list, help_text='Message streams (names) this key may send on; empty: any'),
        ),
        migrations.RunPython(streams_seed, migrations.RunPython.noop),
    ]
