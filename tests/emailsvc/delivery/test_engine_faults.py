"""Delivery under faults, on a private copy of the service's processes (tests/stack.py).

Each stack has its own Redis, a gunicorn web process and Celery workers on the
test database. SES errors come from a fault-injecting proxy in front of moto
(tests/sesproxy.py); SMTP goes to a private aiosmtpd server that can hold a
session at RCPT TO. Assertions are on what a user would notice: API answers,
stored rows, and the messages the SMTP server / moto received.
"""

import re
import signal
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from emailsvc.models import Message, Recipient, SendingPause, Status
from tests.conftest import wait_for_status, wait_until
from tests.emailsvc.conftest import batch_send as _batch
from tests.emailsvc.conftest import cancel, moto_copies, send, unique
from tests.emailsvc.conftest import copies as _copies
from tests.invariants import histories_replay

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def status_histories_replay(transactional_db):
    """Whatever a test here broke on the way, at its end every recipient's
    status history replays to its status (tests/invariants.py)."""
    yield
    histories_replay()

# --- SES errors through the fault proxy ------------------------------------------------


@pytest.mark.parametrize("error", ["TooManyRequestsException", "Throttling"])
def test_throttling_heals_and_the_email_is_sent_once(ses_stack, ses_proxy, moto_server, key, error):
    ses_stack.start_worker()
    email_id = unique("throttled")
    ses_proxy.fail(email_id, error=error, times=3)

    assert send(ses_stack, key, email_id=email_id)["status"] == "queued"
    message = wait_for_status(email_id, timeout=60)

    assert message.status == Status.SENT, ses_stack.logs()
    assert message.attempts == 4
    calls = ses_proxy.calls(email_id)
    assert [call["answered"] for call in calls] == [f"error:{error}"] * 3 + ["sent"]
    assert message.provider_message_id == calls[-1]["message_id"]
    assert moto_copies(moto_server, email_id) == 1
    status, detail = ses_stack.get(f"/api/v1/emails/{email_id}", key)
    assert status == 200
    assert (detail["status"], detail["attempts"], detail["last_error"]) == ("sent", 4, "")


def test_rejection_fails_after_one_attempt_with_the_providers_reason(ses_stack, ses_proxy, moto_server, key):
    ses_stack.start_worker()
    email_id = unique("rejected")
    reason = f"Email address is not verified. The following identities failed the check: {email_id}@example.org"
    ses_proxy.fail(email_id, error="MessageRejected", message=reason)

    send(ses_stack, key, email_id=email_id, to=f"{email_id}@example.org")
    message = wait_for_status(email_id, timeout=60)

    assert message.status == Status.FAILED, ses_stack.logs()
    assert message.attempts == 1
    assert "MessageRejected" in message.last_error and reason in message.last_error
    (recipient,) = Recipient.objects.filter(message=message)
    assert recipient.status == Status.FAILED
    assert reason in recipient.failed_reason
    assert [call["answered"] for call in ses_proxy.calls(email_id)] == ["error:MessageRejected"]
    assert moto_copies(moto_server, email_id) == 0
    status, detail = ses_stack.get(f"/api/v1/emails/{email_id}", key)
    assert (status, detail["status"]) == (200, "failed")
    assert reason in detail["recipients"][0]["failed_reason"]


def test_account_pause_makes_the_email_wait_then_it_is_sent(ses_stack, ses_proxy, moto_server, key):
    ses_stack.start_worker(beat=True)  # its probe asks SES (GetAccount) whether the account sends again
    email_id = unique("paused")
    ses_proxy.fail(email_id, error="SendingPausedException", times=2)

    send(ses_stack, key, email_id=email_id)
    seen: set[str] = set()

    def finished():
        message = Message.objects.get(email_id=email_id)
        seen.add(message.status)
        return message if message.status not in (Status.QUEUED, Status.SENDING) else None

    message = wait_until(finished, timeout=60, interval=0.02) or Message.objects.get(email_id=email_id)

    assert message.status == Status.SENT, ses_stack.logs()
    assert Status.FAILED not in seen, seen
    assert [call["answered"] for call in ses_proxy.calls(email_id)] == ["error:SendingPausedException"] * 2 + ["sent"]
    assert moto_copies(moto_server, email_id) == 1


def test_provider_account_stop_pauses_every_email_until_the_probe_sees_it_sending(ses_stack, ses_proxy, moto_server, key):
    """One SendingPausedException pauses the whole account: no other email is even
    tried while SES says sending is disabled; once it says enabled, all go, once each."""
    ses_stack.start_worker(beat=True)
    first, others = unique("stopper"), [unique("waiting") for _ in range(3)]
    ses_proxy.fail(first, error="SendingPausedException", times=1)
    ses_proxy.account_sending_enabled = False

    send(ses_stack, key, email_id=first)
    assert wait_until(lambda: SendingPause.objects.filter(resumed_at__isnull=True, domain="*").exists(), timeout=30)
    for email_id in others:
        send(ses_stack, key, email_id=email_id)
    status, detail = ses_stack.get("/api/v1/sending-status", key)
    assert (status, detail["account"]["paused"], detail["account"]["cause"]) == (200, True, "provider")
    assert wait_until(lambda: ses_proxy.get_account_calls >= 2, timeout=30)  # probed, still disabled
    assert all(ses_proxy.calls(email_id) == [] for email_id in others), "sent while the account was paused"
    assert Message.objects.get(email_id=first).status == Status.QUEUED

    ses_proxy.account_sending_enabled = True
    for email_id in [first, *others]:
        message = wait_for_status(email_id, timeout=60)
        assert message.status == Status.SENT, ses_stack.logs()
        assert moto_copies(moto_server, email_id) == 1
    pause = SendingPause.objects.get(domain="*")
    assert pause.resumed_at is not None and "probe" in pause.resumed_by


def test_account_pause_does_not_use_up_delivery_attempts(ses_stack, ses_proxy, moto_server, key):
    ses_stack.start_worker(beat=True, env={"DELIVERY_MAX_ATTEMPTS": "3"})
    email_id = unique("long-pause")
    ses_proxy.fail(email_id, error="SendingPausedException", times=3)  # the pause outlasts 3 attempts
    ses_proxy.fail(email_id, error="TooManyRequestsException", times=1)  # then one ordinary throttle

    send(ses_stack, key, email_id=email_id)
    message = wait_for_status(email_id, timeout=60)

    assert [call["answered"] for call in ses_proxy.calls(email_id)][:4] == [
        "error:SendingPausedException", "error:SendingPausedException", "error:SendingPausedException",
        "error:TooManyRequestsException",
    ], ses_stack.logs()
    # One counted failure out of three allowed: it must be retried and sent, not "gave up after 4 attempts".
    assert (message.status, message.last_error) == (Status.SENT, "")
    assert moto_copies(moto_server, email_id) == 1


def test_daily_quota_makes_the_email_wait_not_fail(ses_stack, ses_proxy, key):
    ses_stack.start_worker()
    email_id = unique("quota")
    ses_proxy.fail(email_id, error="LimitExceededException", message="Daily message quota exceeded.")

    send(ses_stack, key, email_id=email_id)

    def deferred():
        message = Message.objects.get(email_id=email_id)
        return message if ses_proxy.calls(email_id) and message.status == Status.QUEUED and message.last_error else None

    message = wait_until(deferred, timeout=60) or Message.objects.get(email_id=email_id)
    assert message.status == Status.QUEUED, ses_stack.logs()
    assert "Daily message quota exceeded." in message.last_error
    # Sending waits (account-wide) for the rolling window to free up, not seconds.
    pause = SendingPause.objects.get(resumed_at__isnull=True)
    assert (pause.domain, pause.cause) == ("*", "quota")
    assert pause.until > timezone.now() + timedelta(minutes=30)
    time.sleep(2)
    assert len(ses_proxy.calls(email_id)) == 1

    status, body = cancel(ses_stack, key, email_id)
    assert (status, body["status"]) == (200, "cancelled")
    assert Message.objects.get(email_id=email_id).status == Status.CANCELLED


# --- workers and Redis failing -------------------------------------------------------------


def test_worker_killed_while_sending_is_delivered_once(smtp_stack, mail, key):
    mail.stall()
    worker_a = smtp_stack.start_worker()  # no beat: nothing may recover the message while A holds it
    email_id = unique("killed")
    send(smtp_stack, key, email_id=email_id)

    assert mail.wait_stalled(1, timeout=30), smtp_stack.logs()
    claimed = Message.objects.get(email_id=email_id)
    assert (claimed.status, claimed.attempts) == (Status.SENDING, 1)
    smtp_stack.kill_worker(worker_a)
    smtp_stack.workers.remove(worker_a)
    mail.unstall()
    # The killed worker's session never got past RCPT TO: no DATA, nothing received.
    assert wait_until(lambda: mail.stalled_now == 0, timeout=10)
    assert mail.data_commands == 0 and mail.matching(email_id) == []
    assert Message.objects.get(email_id=email_id).status == Status.SENDING

    smtp_stack.start_worker(beat=True)  # its sweeper recovers `sending` after SWEEP_SENDING_AFTER_SECONDS
    message = wait_for_status(email_id, timeout=60)

    assert message.status == Status.SENT, smtp_stack.logs()
    assert message.attempts == 2
    assert len(mail.wait_for(email_id)) == 1
    time.sleep(2)  # a few more sweeps: still one copy
    assert len(mail.matching(email_id)) == 1
    assert mail.stalled_total == 1


def test_worker_killed_mid_chunk_loses_nothing_and_resends_at_most_its_sends_in_flight(smtp_stack, mail, key):
    """SIGKILL while a chunk is half sent: what the provider accepted and the send slot
    journaled is recorded, not sent again; only the sends in flight at the kill
    (at most DELIVERY_SEND_CONCURRENCY) can reach the server twice."""
    in_flight = 4
    mail.data_delay = 0.05
    run = unique("mid-chunk")
    email_ids = _batch(smtp_stack, key, run, 80)
    worker = smtp_stack.start_worker(concurrency=1, env={"DELIVERY_SEND_CONCURRENCY": str(in_flight)})
    assert wait_until(lambda: len(mail.matching(run)) >= 30, timeout=60), smtp_stack.logs()
    smtp_stack.kill_worker(worker)
    smtp_stack.workers.remove(worker)
    received_before = len(mail.matching(run))
    assert received_before < 80, "the chunk finished before the kill: nothing was tested"
    assert Message.objects.filter(email_id__in=email_ids, state="sending").count() > 0

    smtp_stack.start_worker(beat=True)  # its sweeper recovers the dead worker's claims
    for email_id in email_ids:
        assert wait_for_status(email_id, timeout=90).status == Status.SENT, smtp_stack.logs()
    copies = _copies(mail, email_ids)
    assert min(copies.values()) == 1, "an email was lost"  # every email reached the server
    duplicates = sum(copies.values()) - len(email_ids)
    print(f"\nkilled after {received_before} of 80 were accepted; {duplicates} sent twice")
    assert duplicates <= in_flight, copies
    # The journal spared every email accepted before the kill but the ones in flight.
    assert Message.objects.filter(email_id__in=email_ids, attempts=1).count() >= received_before - in_flight


def test_warm_shutdown_records_every_chunk_it_sent(smtp_stack, mail, key):
    """SIGTERM (a deploy): the worker finishes the chunk it is sending, and its
    recorder records every chunk before the process exits — nothing it sent is
    left `sending` for the sweeper; what it did not claim waits, queued."""
    mail.data_delay = 0.02
    run = unique("warm-stop")
    email_ids = _batch(smtp_stack, key, run, 400)
    worker = smtp_stack.start_worker(
        concurrency=1, env={"DELIVERY_CHUNK_SIZE": "40", "DELIVERY_SEND_CONCURRENCY": "4"}
    )
    assert wait_until(lambda: len(mail.matching(run)) >= 60, timeout=60), smtp_stack.logs()
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=60) == 0, smtp_stack.logs()
    smtp_stack.workers.remove(worker)

    copies = _copies(mail, email_ids)
    received = {email_id for email_id, count in copies.items() if count}
    assert 60 <= len(received) < 400, "the backlog was sent before the stop: nothing was tested"
    assert set(copies.values()) <= {0, 1}
    rows = {email_id: (state, status) for email_id, state, status in
            Message.objects.filter(email_id__in=email_ids).values_list("email_id", "state", "status")}
    assert {rows[email_id] for email_id in received} == {("done", Status.SENT)}, smtp_stack.logs()
    assert {rows[email_id] for email_id in set(email_ids) - received} == {("queued", Status.QUEUED)}


def test_redis_restart_mid_chunk_loses_nothing_and_sends_nothing_twice(smtp_stack, mail, key):
    mail.data_delay = 0.03
    run = unique("redis-mid-chunk")
    email_ids = _batch(smtp_stack, key, run, 60)
    smtp_stack.start_worker(beat=True, concurrency=1)
    assert wait_until(lambda: len(mail.matching(run)) >= 15, timeout=60), smtp_stack.logs()

    smtp_stack.restart_redis()  # the journal, the limiter and the broker's tasks are gone

    for email_id in email_ids:
        assert wait_for_status(email_id, timeout=90).status == Status.SENT, smtp_stack.logs()
    time.sleep(2)  # a few more sweeps
    assert set(_copies(mail, email_ids).values()) == {1}, smtp_stack.logs()


def test_smtp_server_down_for_a_while_delays_but_loses_and_duplicates_nothing(smtp_stack, mail, key):
    run = unique("smtp-down")
    mail.go_down()
    try:
        email_ids = _batch(smtp_stack, key, run, 20)
        smtp_stack.start_worker(beat=True, env={"DELIVERY_MAX_ATTEMPTS": "30"})
        assert wait_until(
            lambda: Message.objects.filter(email_id__in=email_ids, attempts__gte=2).count() == 20, timeout=30
        ), smtp_stack.logs()
        # Retried, not failed: each is waiting for its next attempt or being tried.
        assert Message.objects.filter(email_id__in=email_ids, status__in=[Status.QUEUED, Status.SENDING]).count() == 20
        time.sleep(8)  # down for about 10 s in all
    finally:
        mail.come_back()
    for email_id in email_ids:
        assert wait_for_status(email_id, timeout=60).status == Status.SENT, smtp_stack.logs()
    time.sleep(1.5)
    assert set(_copies(mail, email_ids).values()) == {1}


def test_delivery_task_enqueued_twice_sends_once(smtp_stack, mail, key):
    email_id = unique("twice")
    send(smtp_stack, key, email_id=email_id)  # no worker yet: the task waits in Redis
    pk = Message.objects.get(email_id=email_id).pk
    smtp_stack.publish("emailsvc.deliver", args=[pk], queue="emails.normal")
    assert smtp_stack.queue_lengths()["emails.normal"] == 2

    smtp_stack.start_worker(concurrency=2)
    message = wait_for_status(email_id, timeout=60)
    # Both tasks ran and were acknowledged.
    assert wait_until(lambda: smtp_stack.queue_lengths()["emails.normal"] == 0 and smtp_stack.unacked() == 0, timeout=30)

    assert message.status == Status.SENT, smtp_stack.logs()
    assert Message.objects.get(email_id=email_id).attempts == 1
    assert len(mail.matching(email_id)) == 1


def test_redis_restart_between_accept_and_delivery(smtp_stack, mail, key):
    before = unique("before-restart")
    send(smtp_stack, key, email_id=before)
    assert smtp_stack.queue_lengths()["emails.normal"] == 1

    smtp_stack.restart_redis()
    assert sum(smtp_stack.queue_lengths().values()) == 0  # the task is gone with Redis' memory

    # The web process keeps accepting on the new Redis.
    after = unique("after-restart")
    assert send(smtp_stack, key, email_id=after)["status"] == "queued"

    smtp_stack.start_worker(beat=True)  # its sweeper re-enqueues what Redis lost
    for email_id in (before, after):
        message = wait_for_status(email_id, timeout=60)
        assert message.status == Status.SENT, (email_id, smtp_stack.logs())
        assert len(mail.wait_for(email_id)) == 1
    time.sleep(1.5)
    assert [len(mail.matching(email_id)) for email_id in (before, after)] == [1, 1]


# --- rate limit, priorities, scheduling --------------------------------------------------------


def test_rate_limit_holds_across_worker_processes(smtp_stack, mail, key):
    rate = {"SEND_RATE_PER_SECOND": "5", "SEND_RATE_BURST": "1"}
    # One task slot each: a worker busy with a chunk cannot also hold the next.
    workers = [smtp_stack.start_worker(env=rate, concurrency=1), smtp_stack.start_worker(env=rate, concurrency=1)]
    run = unique("rate")
    emails = [
        {"to": f"reader{i}@example.org", "subject": f"{run} #{i}", "text": "Hello.", "email_id": f"{run}-{i:02d}"}
        for i in range(20)
    ]
    status, answer = smtp_stack.post("/api/v1/emails/batch", {"emails": emails}, key)
    assert status == 200 and len(answer["data"]) == 20 and answer["errors"] == [], answer
    # This stack's web runs without the limiter, so it published one task for
    # the batch (a chunk of 100); a second puts two chunks in flight, one per
    # worker, each chain going on with its own follow-up: both processes send
    # at once and must share the limit.
    smtp_stack.publish("emailsvc.deliver", args=["normal"], queue="emails.normal")

    arrivals = mail.wait_for(run, count=20, timeout=60)
    assert len(arrivals) == 20, smtp_stack.logs()
    assert all(wait_for_status(email["email_id"], timeout=30).status == Status.SENT for email in emails)

    times = sorted(arrival.at for arrival in arrivals)
    busiest = max(sum(1 for t in times if start <= t < start + 1) for start in times)
    gaps = [round(b - a, 3) for a, b in zip(times, times[1:])]
    assert busiest <= 5 + 1, gaps
    # Both processes sent: the limit is shared, not per process.
    delivered = [sum(int(n) for n in re.findall(r"delivery chunk .*? sent=(\d+)", worker.log())) for worker in workers]
    assert sum(delivered) == 20 and all(delivered), delivered


@pytest.mark.timing  # how many low emails go out meanwhile depends on how fast the machine is then
def test_high_priority_overtakes_a_deep_low_backlog(console_stack, key):
    started = time.monotonic()
    for batch in range(20):
        emails = [{"to": "bulk@example.org", "subject": "Newsletter", "text": "x", "priority": "low"} for _ in range(500)]
        status, answer = console_stack.post("/api/v1/emails/batch", {"emails": emails}, key)
        assert status == 200 and len(answer["data"]) == 500, (batch, answer if status != 200 else answer["errors"][:3])
    accepted = time.monotonic()
    # One delivery task per chunk of 250 (the limiter is off in these stacks), not one per email.
    assert console_stack.queue_lengths()["emails.low"] == 20 * 2
    urgent = unique("urgent")
    send(console_stack, key, email_id=urgent, priority="high", subject="Your login code")

    console_stack.start_worker(concurrency=2)
    message = wait_for_status(urgent, timeout=120)
    low_queued = Message.objects.filter(priority="low", status=Status.QUEUED).count()
    print(f"\naccepting 10,000 low emails took {accepted - started:.1f}s; urgent sent with {low_queued} low still queued")

    assert message.status == Status.SENT, console_stack.logs()
    assert low_queued >= 9_000
    console_stack.kill_workers()  # then the fixture drops the backlog's tasks


def test_scheduled_send_is_released_on_time_and_cancellable_until_then(smtp_stack, mail, key):
    smtp_stack.start_worker(beat=True)  # releases scheduled emails every second
    send_at = datetime.now(UTC) + timedelta(seconds=3)
    on_time, called_off = unique("scheduled"), unique("called-off")
    for email_id in (on_time, called_off):
        assert send(smtp_stack, key, email_id=email_id, send_at=send_at.isoformat())["status"] == "scheduled"

    status, body = cancel(smtp_stack, key, called_off)
    assert (status, body["status"]) == (200, "cancelled")

    message = wait_for_status(on_time, timeout=30)
    assert message.status == Status.SENT, smtp_stack.logs()
    assert timedelta(0) <= message.sent_at - send_at <= timedelta(seconds=5), (send_at, message.sent_at)
    assert len(mail.wait_for(on_time)) == 1

    status, body = cancel(smtp_stack, key, on_time)
    assert (status, body["error"]) == (409, "not_cancellable")

    time.sleep(max(0.0, (send_at + timedelta(seconds=3) - datetime.now(UTC)).total_seconds()))
    assert mail.matching(called_off) == []
    status, detail = smtp_stack.get(f"/api/v1/emails/{called_off}", key)
    assert (status, detail["status"], detail["sent_at"]) == (200, "cancelled", None)
