"""Rows stored before addresses lost their unneeded quotes are rewritten in the
canonical form: suppressions naming one mailbox are merged into the strongest,
earliest active entry, and recipients and SES lifts are found under the form a
send, an event or a lookup now uses."""

import importlib
from datetime import timedelta

import pytest
from django.apps import apps
from django.utils import timezone

from emailsvc.models import Recipient, SesSuppressionLift, Suppression
from tests.tracking.scenario import accepted_message

pytestmark = pytest.mark.django_db

migration = importlib.import_module("emailsvc.migrations.0012_addresses_canonical")


def stored(email: str, reason: str, *, days_ago: int, expires_in: int | None = None) -> Suppression:
    row = Suppression.objects.create(
        email=email, reason=reason, expires_at=None if expires_in is None else timezone.now() + timedelta(days=expires_in)
    )
    Suppression.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(days=days_ago))
    return row


def test_suppressions_of_one_mailbox_merge_into_the_strongest_earliest_active_entry():
    stored('"jane"@example.net', "manual", days_ago=30, expires_in=10)
    complaint = stored("jane@example.net", "complaint", days_ago=5, expires_in=3)
    stored('"j\\ane"@example.net', "complaint", days_ago=1)
    stored('"kim"@example.net', "hard_bounce", days_ago=2, expires_in=-1)  # expired: kept as it was, renamed
    stored("lee@example.net", "manual", days_ago=2)

    migration._rewrite(apps, None)

    rows = {s.email: s for s in Suppression.objects.all()}
    assert sorted(rows) == ["jane@example.net", "kim@example.net", "lee@example.net"]
    jane = rows["jane@example.net"]
    assert (jane.pk, jane.reason, jane.expires_at) == (complaint.pk, "complaint", None)  # the longest expiry kept
    assert rows["kim@example.net"].expires_at < timezone.now()


def test_recipients_and_lifts_are_rewritten_unless_the_canonical_form_is_there(api):
    message = accepted_message(api, ["one@example.net", "two@example.net"])
    Recipient.objects.filter(message=message, email="one@example.net").update(email='"one"@example.net')
    both = accepted_message(api, ["three@example.net", "other@example.net"])
    Recipient.objects.filter(message=both, email="other@example.net").update(email='"three"@example.net')
    SesSuppressionLift.objects.create(email='"gone"@example.net', lifted_at=timezone.now())

    migration._rewrite(apps, None)

    assert sorted(message.recipients.values_list("email", flat=True)) == ["one@example.net", "two@example.net"]
    assert sorted(both.recipients.values_list("email", flat=True)) == ['"three"@example.net', "three@example.net"]
    assert list(SesSuppressionLift.objects.values_list("email", flat=True)) == ["gone@example.net"]
