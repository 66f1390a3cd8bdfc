"""Stored addresses rewritten in the canonical form of core.addresses, which now
removes quotes a local part does not need (`"jane"@example.net` is
`jane@example.net`). Suppressions that turn out to name one mailbox are merged
into one entry: the active one, of the strongest reason, the earliest; it keeps
the longest expiry of the active ones. A recipient is rewritten unless its
email already lists the mailbox in the canonical form (the second copy it was
sent stays as it was recorded)."""

from collections import defaultdict

from django.db import migrations
from django.db.models import Q
from django.utils import timezone

from core.addresses import address_key

# Which entry survives a merge: the lower, the stronger.
_REASON_RANK = {"complaint": 0, "hard_bounce": 1, "unsubscribe": 2, "manual": 3, "soft_bounce_limit": 4}


def _suppressions_merge(apps, schema_editor):
    Suppression = apps.get_model("emailsvc", "Suppression")
    now = timezone.now()
    odd = defaultdict(list)  # canonical form → the rows stored in another form
    for pk, email in Suppression.objects.values_list("pk", "email").iterator(chunk_size=5000):
        if (canonical := address_key(email)) != email:
            odd[canonical].append(pk)

    def active(row):
        return row.expires_at is None or row.expires_at > now

    for canonical, pks in odd.items():
        rows = list(Suppression.objects.filter(Q(pk__in=pks) | Q(email=canonical)))
        keep = min(rows, key=lambda r: (not active(r), _REASON_RANK.get(r.reason, 9), r.created_at, r.pk))
        if active(keep):
            expiries = [r.expires_at for r in rows if active(r)]
            keep.expires_at = None if None in expiries else max(expiries)
        Suppression.objects.filter(pk__in=[r.pk for r in rows if r.pk != keep.pk]).delete()
        keep.email = canonical
        keep.save(update_fields=["email", "expires_at"])


def _lifts_rewrite(apps, schema_editor):
    SesSuppressionLift = apps.get_model("emailsvc", "SesSuppressionLift")
    for row in SesSuppressionLift.objects.filter(email__contains='"').order_by("pk"):
        canonical = address_key(row.email)
        if canonical == row.email:
            continue
        if SesSuppressionLift.objects.filter(email=canonical).exists():
            row.delete()
        else:
            SesSuppressionLift.objects.filter(pk=row.pk).update(email=canonical)


def _recipients_rewrite(apps, schema_editor):
    Recipient = apps.get_model("emailsvc", "Recipient")
    rows = list(Recipient.objects.filter(email__contains='"').values_list("pk", "message_id", "email"))
    for pk, message_id, email in rows:
        canonical = address_key(email)
        if canonical != email and not Recipient.objects.filter(message_id=message_id, email=canonical).exists():
            Recipient.objects.filter(pk=pk).update(email=canonical)


def _rewrite(apps, schema_editor):
    _suppressions_merge(apps, schema_editor)
    _lifts_rewrite(apps, schema_editor)
    _recipients_rewrite(apps, schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ("emailsvc", "0011_ses_suppression_lifts"),
    ]

    operations = [
        migrations.RunPython(_rewrite, migrations.RunPython.noop),
    ]
