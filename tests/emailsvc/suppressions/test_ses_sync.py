"""Keeping SES's account-level suppression list and ours in step (issue 16).

moto 5.2.5 — the AWS emulator of the tests and the sandbox, and the newest
release — does not implement SES v2's suppression list: ListSuppressedDestinations,
PutSuppressedDestination and DeleteSuppressedDestination are answered 404 by its
server. So against moto, over real HTTP, these tests show that the sync says so
plainly, changes nothing and keeps its place; what a page of SES's list does to
ours is shown by applying pages shaped exactly as botocore returns them (as the
tracking tests post raw SES events). `test_moto_still_lacks_the_suppression_list`
fails on the day moto implements it: then the pull, the push and the lift's
delete can be shown end to end against it.
"""

import io
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from django.core.management import CommandError, call_command
from django.utils import timezone

from core.redisclient import redis_client
from emailsvc.models import SesSuppressionLift, Suppression
from emailsvc.selectors import suppressions_to_push
from emailsvc.suppressions.services import (
    PUSH_SETTLE_SECONDS,
    PUSH_WATERMARK_KEY,
    SES_SOURCE,
    SesSyncFailed,
    ses_lifts_forward,
    ses_suppressions_apply,
    ses_suppressions_pull,
    ses_suppressions_push,
    suppression_add,
    suppression_lift,
)
from emailsvc.tasks import ses_suppression_delete_task, ses_suppressions_sync_task

pytestmark = pytest.mark.django_db
BASE_DIR = Path(__file__).resolve().parents[3]
SINCE = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


@pytest.fixture
def ses(moto_server, settings):
    """SES (moto over HTTP) as the service's AWS endpoint; the push starts from the beginning."""
    settings.AWS_ENDPOINT_URL = moto_server.url
    redis_client().delete(PUSH_WATERMARK_KEY)
    yield moto_server
    redis_client().delete(PUSH_WATERMARK_KEY)


def settled(suppression: Suppression) -> Suppression:
    """The entry as if added before PUSH_SETTLE_SECONDS ago (the push leaves younger ones for later)."""
    Suppression.objects.filter(pk=suppression.pk).update(created_at=timezone.now() - timedelta(seconds=PUSH_SETTLE_SECONDS + 1))
    return suppression


# --- what moto does -----------------------------------------------------------------


def test_moto_still_lacks_the_suppression_list(ses):
    client = ses.client("sesv2")
    for call in (
        lambda: client.list_suppressed_destinations(),
        lambda: client.put_suppressed_destination(EmailAddress="a@example.com", Reason="BOUNCE"),
        lambda: client.delete_suppressed_destination(EmailAddress="a@example.com"),
    ):
        with pytest.raises(ClientError) as raised:
            call()
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_pull_against_moto_says_it_is_not_implemented_and_changes_nothing(ses):
    suppression_add(email="kept@example.com", reason="manual")
    with pytest.raises(SesSyncFailed) as failed:
        ses_suppressions_pull()
    assert "does not implement ListSuppressedDestinations" in str(failed.value)
    assert failed.value.result.listed == 0
    assert list(Suppression.objects.values_list("email", flat=True)) == ["kept@example.com"]


def test_push_against_moto_stops_at_the_first_failure_and_starts_there_next_time(ses):
    first = settled(suppression_add(email="bounced@example.com", reason="hard_bounce"))
    settled(suppression_add(email="complained@example.com", reason="complaint"))
    with pytest.raises(SesSyncFailed) as failed:
        ses_suppressions_push()
    assert "does not implement PutSuppressedDestination" in str(failed.value)
    assert failed.value.result.pushed == 0
    assert int(redis_client().get(PUSH_WATERMARK_KEY)) < first.pk  # nothing is skipped next time


def test_sync_command_prints_what_happened_and_fails(ses):
    stdout = io.StringIO()
    with pytest.raises(CommandError, match="does not implement ListSuppressedDestinations"):
        call_command("sync_ses_suppressions", stdout=stdout)
    assert "pull: 0 on SES's list" in stdout.getvalue()

    settled(suppression_add(email="bounced@example.com", reason="hard_bounce"))
    with pytest.raises(CommandError, match="PutSuppressedDestination"):
        call_command("sync_ses_suppressions", "--push", "--no-pull", stdout=stdout)
    assert "push: 0 put on SES's list" in stdout.getvalue()


@pytest.mark.django_db(transaction=True)  # the task closes an outdated connection, as in a worker
def test_sync_task_logs_a_failed_step_and_reports_it(ses, settings, caplog):
    settings.SES_SUPPRESSION_SYNC = True
    settings.SES_SUPPRESSION_PUSH = True
    with caplog.at_level(logging.WARNING, logger="emailsvc.suppressions.services"):
        report = ses_suppressions_sync_task()
    assert "does not implement ListSuppressedDestinations" in report["pull"]["error"]
    assert report["push"] == {"pushed": 0, "refused": []}  # nothing old enough to push
    assert any("SES suppression list pull failed" in r.getMessage() for r in caplog.records)


def test_lift_takes_the_address_off_ses_after_commit_when_sync_is_on(ses, settings, django_capture_on_commit_callbacks, caplog):
    settings.SES_SUPPRESSION_SYNC = False
    suppression_add(email="a@example.com", reason="hard_bounce")
    with django_capture_on_commit_callbacks() as callbacks:
        suppression_lift(email="a@example.com")
    assert callbacks == []

    settings.SES_SUPPRESSION_SYNC = True
    suppression_add(email="User@Bücher.example", reason="hard_bounce")
    with django_capture_on_commit_callbacks() as callbacks:
        assert suppression_lift(email="USER@bücher.example") is True
        assert suppression_lift(email="nobody@example.com") is False
    assert len(callbacks) == 1
    # The task, run here against moto: a 404 is no reason to retry; it is logged.
    with caplog.at_level(logging.WARNING, logger="emailsvc.tasks"):
        result = ses_suppression_delete_task.apply(kwargs={"email": "user@xn--bcher-kva.example"})
    assert result.get() is False
    assert any("DeleteSuppressedDestination" in r.getMessage() for r in caplog.records)


def test_a_lift_is_kept_pending_in_its_transaction_and_the_pull_does_not_bring_it_back(settings):
    """The task that takes a lifted address off SES's list can be lost with the broker:
    the lift is stored with the deletion, and until it reaches SES a pull that still
    lists the address does not suppress it again."""
    settings.SES_SUPPRESSION_SYNC = True
    suppression_add(email="lifted@example.com", reason="hard_bounce")
    assert suppression_lift(email="Lifted@Example.com") is True
    assert list(SesSuppressionLift.objects.values_list("email", flat=True)) == ["lifted@example.com"]

    result = ses_suppressions_apply(summaries=[
        {"EmailAddress": "lifted@example.com", "Reason": "BOUNCE", "LastUpdateTime": SINCE},
        {"EmailAddress": "other@example.com", "Reason": "BOUNCE", "LastUpdateTime": SINCE},
    ])

    assert (result.added, result.skipped) == (1, 1)
    assert list(Suppression.objects.values_list("email", flat=True)) == ["other@example.com"]


def test_pending_lifts_wait_while_ses_is_unreachable_and_go_once_it_answers(ses, settings):
    settings.SES_SUPPRESSION_SYNC = True
    for address in ("one@example.com", "two@example.com"):
        suppression_add(email=address, reason="complaint")
        suppression_lift(email=address)
    settings.AWS_ENDPOINT_URL = "http://127.0.0.1:9"  # nothing listens: SES cannot be asked

    assert ses_lifts_forward() == {"forwarded": 0, "refused": 0, "pending": 2}

    settings.AWS_ENDPOINT_URL = ses.url  # moto answers (404: it keeps no such list, so nothing is left to take off)
    result = ses_lifts_forward()
    assert result["pending"] == 0 and result["forwarded"] + result["refused"] == 2
    assert not SesSuppressionLift.objects.exists()


# --- what a page of SES's list does to ours --------------------------------------------------


def test_a_page_of_ses_list_suppresses_its_addresses_keeping_entries_already_here():
    vip = suppression_add(email="vip@example.com", reason="manual", note="support said so")
    suppression_add(email="back@example.com", reason="manual", expires_at=timezone.now() - timedelta(days=1))
    page = [  # SuppressedDestinationSummaries, as botocore parses them
        {"EmailAddress": "Bounced@Example.com", "Reason": "BOUNCE", "LastUpdateTime": SINCE},
        {"EmailAddress": "complained@example.com", "Reason": "COMPLAINT", "LastUpdateTime": SINCE},
        {"EmailAddress": "vip@example.com", "Reason": "COMPLAINT", "LastUpdateTime": SINCE},
        {"EmailAddress": "back@example.com", "Reason": "BOUNCE", "LastUpdateTime": SINCE},
        {"EmailAddress": "odd@example.com", "Reason": "SOMETHING_NEW", "LastUpdateTime": SINCE},
        {"EmailAddress": "nul\x00@example.com", "Reason": "BOUNCE", "LastUpdateTime": SINCE},
        {"EmailAddress": f"{'x' * 330}@example.com", "Reason": "BOUNCE", "LastUpdateTime": SINCE},
    ]

    result = ses_suppressions_apply(summaries=page)

    assert vars(result) == {"listed": 7, "added": 3, "existing": 1, "skipped": 3}
    entries = {s.email: s for s in Suppression.objects.all()}
    assert sorted(entries) == ["back@example.com", "bounced@example.com", "complained@example.com", "vip@example.com"]
    assert (entries["bounced@example.com"].reason, entries["bounced@example.com"].source) == ("hard_bounce", SES_SOURCE)
    assert entries["bounced@example.com"].note == "On SES's account-level suppression list (BOUNCE) since 2026-11-02 09:30 UTC."
    assert entries["complained@example.com"].reason == "complaint"
    assert (entries["vip@example.com"].pk, entries["vip@example.com"].reason) == (vip.pk, "manual")
    assert (entries["back@example.com"].reason, entries["back@example.com"].expires_at) == ("hard_bounce", None)

    again = ses_suppressions_apply(summaries=page)
    assert (again.added, again.existing) == (0, 4)


def test_the_push_takes_permanent_bounces_and_complaints_not_from_ses_once_settled():
    now = timezone.now()
    wanted = [
        settled(suppression_add(email="bounced@example.com", reason="hard_bounce")),
        settled(suppression_add(email="complained@example.com", reason="complaint")),
    ]
    settled(suppression_add(email="manual@example.com", reason="manual"))
    settled(suppression_add(email="soft@example.com", reason="soft_bounce_limit"))
    settled(suppression_add(email="for-a-week@example.com", reason="hard_bounce", expires_at=now + timedelta(days=7)))
    settled(suppression_add(email="from-ses@example.com", reason="hard_bounce", source=SES_SOURCE))
    young = suppression_add(email="just-now@example.com", reason="hard_bounce")

    def to_push(after_id=0):
        return suppressions_to_push(
            after_id=after_id, reasons=["hard_bounce", "complaint"], exclude_source=SES_SOURCE,
            created_before=timezone.now() - timedelta(seconds=PUSH_SETTLE_SECONDS),
        )

    assert to_push() == wanted
    assert to_push(after_id=wanted[0].pk) == wanted[1:]
    assert young not in to_push()


def test_push_with_nothing_to_push_needs_no_ses():
    assert vars(ses_suppressions_push(client=object())) == {"pushed": 0, "refused": []}


# --- the beat entry ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "scheduled"),
    [
        ({"EMAIL_PROVIDER": "ses"}, True),
        ({"EMAIL_PROVIDER": "sandbox", "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}, True),
        ({"EMAIL_PROVIDER": "smtp"}, False),
        ({"EMAIL_PROVIDER": "smtp", "SES_SUPPRESSION_PUSH": "true"}, True),
        ({"EMAIL_PROVIDER": "ses", "SES_SUPPRESSION_SYNC": "false"}, False),
        ({"EMAIL_PROVIDER": "ses", "SES_SUPPRESSION_SYNC_INTERVAL_SECONDS": "600"}, True),
    ],
)
def test_beat_runs_the_sync_when_ses_sends_or_a_push_is_asked_for(env, scheduled):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("SES_SUPPRESSION", "EMAIL_PROVIDER"))}
    environment.update(SECRET_KEY="x", **env)
    code = (
        "import config.settings as s; e = s.CELERY_BEAT_SCHEDULE.get('sync-ses-suppressions');"
        "print(e and (e['task'], e['schedule']))"
    )
    answer = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=environment, capture_output=True, text=True)
    assert answer.returncode == 0, answer.stderr
    interval = float(env.get("SES_SUPPRESSION_SYNC_INTERVAL_SECONDS", 3600))
    expected = str(("emailsvc.ses_suppressions_sync", interval)) if scheduled else "None"
    assert answer.stdout.strip() == expected


def test_ses_list_entries_in_other_spellings_of_one_mailbox_are_one_suppression():
    suppression_add(email='"Vip"@example.com', reason="manual")
    page = [
        {"EmailAddress": '"jane"@Bücher.example', "Reason": "COMPLAINT", "LastUpdateTime": SINCE},
        {"EmailAddress": "JANE@xn--bcher-kva.example", "Reason": "BOUNCE", "LastUpdateTime": SINCE},
        {"EmailAddress": "vip@EXAMPLE.com", "Reason": "BOUNCE", "LastUpdateTime": SINCE},
    ]

    result = ses_suppressions_apply(summaries=page)

    assert (result.added, result.existing) == (1, 1)
    assert sorted(Suppression.objects.values_list("email", "reason")) == [
        ("jane@xn--bcher-kva.example", "complaint"), ("vip@example.com", "manual"),
    ]
