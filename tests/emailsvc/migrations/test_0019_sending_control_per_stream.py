"""The breaker's rows stored before it counted and paused per message stream:
the hours counted keep no stream ("": their domain's as a whole, as the
breaker judged them before), and a pause covers its whole domain (stream "")."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone


@pytest.mark.django_db(transaction=True)
def test_the_hours_counted_before_streams_are_the_domains_and_old_pauses_cover_the_whole_domain():
    before, after = [("emailsvc", "0018_stream_tracking_defaults")], [("emailsvc", "0019_sending_control_per_stream")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    old.get_model("emailsvc", "SendingCounts").objects.create(sending_domain="a.example", hour=hour, sent=7, bounced=1)
    old.get_model("emailsvc", "SendingPause").objects.create(domain="a.example", cause="operator", paused_at=hour)
    try:
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        new = executor.loader.project_state(after).apps
        counts = new.get_model("emailsvc", "SendingCounts").objects.get()
        pause = new.get_model("emailsvc", "SendingPause").objects.get()
        assert (counts.stream, counts.sent, counts.bounced) == ("", 7, 1)
        assert pause.stream == ""
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
