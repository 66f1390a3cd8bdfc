"""Events stored for a quoted spelling of a mailbox are rewritten in its canonical form."""

import importlib

import pytest
from django.apps import apps

from tests.tracking.scenario import event, sent_message
from tracking.apply import event_apply
from tracking.models import EngagementEvent
from tracking.normalize import ses_body_parse

pytestmark = pytest.mark.django_db

migration = importlib.import_module("tracking.migrations.0004_event_addresses_canonical")


def test_an_event_stored_for_a_quoted_spelling_is_found_under_the_canonical_one(api):
    message = sent_message(api, ["jane@example.net"])
    for envelope in (event(message, "Delivery"), event(message, "Open", seconds=20)):
        for normalized in ses_body_parse(envelope):
            event_apply(event=normalized, source="sqs")
    delivery, _ = EngagementEvent.objects.order_by("occurred_at")
    EngagementEvent.objects.filter(pk=delivery.pk).update(recipient_email='"jane"@example.net')

    migration._events_rewrite(apps, None)

    assert set(EngagementEvent.objects.values_list("recipient_email", flat=True)) == {"jane@example.net"}
