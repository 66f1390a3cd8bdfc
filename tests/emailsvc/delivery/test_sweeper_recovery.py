"""Recovery after the faults production sees, counted at the SMTP server (SPEC §5.4, §9).

Each test runs the service's processes privately (tests/stack.py), breaks
something while emails are being delivered, and then checks what a user
would: every accepted email reached the server, none more often than the
bound docs/sending.md states (the sends in flight of each killed process), none is
left `sending`, every recipient recorded `sent` really reached the server, and
each recipient's status history replays to its status (tests/invariants.py).
"""

import time

import pytest

from emailsvc.models import Message, Recipient, Status
from tests.conftest import wait_until
from tests.emailsvc.conftest import batch_send, copies, unique
from tests.invariants import received_by_email, sent_but_never_received, status_history_problems
from tests.stack import SmtpServer, Stack

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

IN_FLIGHT = 4  # send slots of the worker that is killed: the duplicate bound per killed process


def all_done(email_ids: list[str], *, timeout: float) -> bool:
    """Wait until no email of `email_ids` is waiting or being sent."""
    return wait_until(
        lambda: not Message.objects.filter(email_id__in=email_ids).exclude(state="done").exists(),
        timeout=timeout, interval=0.2,
    )


def facts_hold(mail: SmtpServer, email_ids: list[str], stack: Stack) -> None:
    problems = sent_but_never_received(mail.arrivals, email_ids=email_ids)
    problems += status_history_problems(email_ids=email_ids)
    assert not problems, "\n".join(problems[:20]) + "\n" + stack.logs()


class RefusingSmtpServer(SmtpServer):
    """Answers RCPT TO with a given reply for chosen addresses, a given number of
    times; and can drop the session of chosen messages after taking their DATA,
    before answering it (as a server that crashes or a network that breaks then)."""

    def __init__(self):
        super().__init__()
        self.refusals: dict[str, list[str]] = {}
        self.drop_after_data: set[str] = set()  # needles: a matching message is taken, then the session dropped
        self.dropped = 0

    def refuse_recipient(self, address: str, reply: str, *, times: int = 1) -> None:
        with self._lock:
            self.refusals.setdefault(address.lower(), []).extend([reply] * times)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.refusals.clear()
            self.drop_after_data.clear()
            self.dropped = 0

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        with self._lock:
            needle = next((n for n in self.drop_after_data if n.encode() in envelope.original_content), None)
            if needle is not None:
                self.drop_after_data.discard(needle)
                self.dropped += 1
        if needle is not None:
            server.transport.abort()  # the message is stored; its 250 never leaves
        return reply

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self._lock:
            pending = self.refusals.get(address.lower())
            reply = pending.pop(0) if pending else None
        if reply is not None:
            return reply
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


@pytest.fixture(scope="module")
def mail():
    server = RefusingSmtpServer().start()
    yield server
    server.stop()


def test_worker_killed_while_retries_of_partly_sent_emails_are_claimed_sends_each_recipient_once(smtp_stack, mail, key):
    """The server takes the first recipient of each email and answers 451 to the second;
    the worker is killed while the retries are claimed (held at RCPT, before DATA). The
    second recipients were never sent by that attempt: they are sent again, once, and
    no recipient is recorded `sent` on the first attempt's answer."""
    run, count = unique("partial"), 40
    emails = [
        {"to": [f"first{i}@example.org", f"second{i}@example.org"], "subject": f"{run} #{i}", "text": "Hello.",
         "email_id": f"{run}-{i:03d}"}
        for i in range(count)
    ]
    for i in range(count):
        mail.refuse_recipient(f"second{i}@example.org", "451 4.3.0 Mailbox busy, try later")
    status, answer = smtp_stack.post("/api/v1/emails/batch", {"emails": emails}, key)
    assert status == 200 and not answer["errors"], answer
    email_ids = [email["email_id"] for email in emails]
    # Retries wait a second or two: long enough to hold them all at RCPT.
    slow_retries = {"DELIVERY_RETRY_BASE_SECONDS": "1", "DELIVERY_RETRY_MAX_SECONDS": "2"}
    worker = smtp_stack.start_worker(concurrency=1, env={"DELIVERY_SEND_CONCURRENCY": str(IN_FLIGHT), **slow_retries})
    assert wait_until(lambda: len(mail.matching(run)) >= count, timeout=60), smtp_stack.logs()
    assert wait_until(lambda: Recipient.objects.filter(email__startswith="first", message__email_id__in=email_ids,
                                                       status="sent").count() == count, timeout=30), smtp_stack.logs()
    mail.stall()  # every retry now waits at RCPT TO, before DATA
    assert mail.wait_stalled(1, timeout=30), smtp_stack.logs()
    smtp_stack.kill_worker(worker)
    smtp_stack.workers.remove(worker)
    mail.unstall()
    retried = Message.objects.filter(email_id__in=email_ids, state="sending", attempts=2).count()
    assert retried >= 1, "no retry was claimed when the worker died: nothing was tested"

    smtp_stack.start_worker(beat=True, env=slow_retries)  # its sweeper recovers the dead worker's claims
    assert all_done(email_ids, timeout=120), smtp_stack.logs()

    received = received_by_email(mail.arrivals, email_ids)
    for i, email_id in enumerate(email_ids):
        assert received[email_id][f"first{i}@example.org"] == 1, (email_id, received[email_id])
        assert received[email_id][f"second{i}@example.org"] == 1, (email_id, received[email_id])
    statuses = set(Recipient.objects.filter(message__email_id__in=email_ids).values_list("status", flat=True))
    assert statuses == {Status.SENT}, smtp_stack.logs()
    facts_hold(mail, email_ids, smtp_stack)
    print(f"\n{retried} retries were claimed when the worker died; each recipient reached the server once")


def test_redis_restarted_empty_then_the_worker_killed_resends_at_most_its_sends_in_flight(smtp_stack, mail, key):
    """The delivery journal is in the database: a Redis that comes back empty
    forgets the tasks, not which sends the provider answered."""
    mail.data_delay = 0.05
    run = unique("empty-redis")
    email_ids = batch_send(smtp_stack, key, run, 80)
    worker = smtp_stack.start_worker(concurrency=1, env={"DELIVERY_SEND_CONCURRENCY": str(IN_FLIGHT)})
    assert wait_until(lambda: len(mail.matching(run)) >= 30, timeout=60), smtp_stack.logs()

    smtp_stack.restart_redis()  # empty: no tasks, no rate-limit bucket
    smtp_stack.kill_worker(worker)
    smtp_stack.workers.remove(worker)
    received_before = len(mail.matching(run))
    assert received_before < 80, "the chunk finished before the kill: nothing was tested"

    smtp_stack.start_worker(beat=True)
    assert all_done(email_ids, timeout=90), smtp_stack.logs()
    sent = copies(mail, email_ids)
    assert min(sent.values()) == 1, "an email was lost"
    duplicates = sum(sent.values()) - len(email_ids)
    print(f"\nkilled after {received_before} of 80 were accepted; {duplicates} sent twice")
    assert duplicates <= IN_FLIGHT, sent
    assert set(Message.objects.filter(email_id__in=email_ids).values_list("status", flat=True)) == {Status.SENT}
    facts_hold(mail, email_ids, smtp_stack)


def test_a_killed_workers_claims_are_recovered_within_about_a_minute_with_default_settings(smtp_stack, mail, key):
    """SWEEP_SENDING_AFTER_SECONDS and SWEEPER_INTERVAL_SECONDS at their defaults:
    the emails a killed worker held, sent or not, are recorded or sent again about
    a minute after it died, not ten."""
    defaults = {"SWEEP_SENDING_AFTER_SECONDS": "60", "SWEEPER_INTERVAL_SECONDS": "15", "DELIVERY_HEARTBEAT_SECONDS": "10"}
    mail.data_delay = 0.05
    run = unique("default-lease")
    email_ids = batch_send(smtp_stack, key, run, 80)
    worker = smtp_stack.start_worker(concurrency=1, env={"DELIVERY_SEND_CONCURRENCY": str(IN_FLIGHT), **defaults})
    assert wait_until(lambda: len(mail.matching(run)) >= 30, timeout=60), smtp_stack.logs()
    smtp_stack.kill_worker(worker)
    killed_at = time.monotonic()
    smtp_stack.workers.remove(worker)
    held = Message.objects.filter(email_id__in=email_ids, state="sending").count()
    assert held > 0, "nothing was held when the worker died: nothing was tested"

    smtp_stack.start_worker(beat=True, env=defaults)
    assert all_done(email_ids, timeout=150), smtp_stack.logs()
    recovered_after = time.monotonic() - killed_at
    print(f"\n{held} emails held by the killed worker; all recorded or sent {recovered_after:.0f}s after the kill")
    assert recovered_after < 100, recovered_after
    sent = copies(mail, email_ids)
    assert min(sent.values()) == 1 and sum(sent.values()) - len(email_ids) <= IN_FLIGHT, sent
    facts_hold(mail, email_ids, smtp_stack)


def test_a_session_dropped_after_data_is_sent_again_and_that_is_the_only_duplicate(smtp_stack, mail, key):
    """SMTP cannot tell a message taken just before the connection broke from one
    that was not (RFC 1047): the client never got the 250, so the send is retried.
    Each such drop is one duplicate at most, and nothing else is sent twice."""
    run = unique("dropped")
    email_ids = batch_send(smtp_stack, key, run, 30)
    dropped_ids = email_ids[3:30:6]
    mail.drop_after_data.update(dropped_ids)
    smtp_stack.start_worker(concurrency=1, env={"DELIVERY_SEND_CONCURRENCY": str(IN_FLIGHT)})
    assert all_done(email_ids, timeout=60), smtp_stack.logs()

    sent = copies(mail, email_ids)
    assert mail.dropped == len(dropped_ids)
    assert {email_id: sent[email_id] for email_id in dropped_ids} == dict.fromkeys(dropped_ids, 2)
    assert {email_id: n for email_id, n in sent.items() if email_id not in dropped_ids} == dict.fromkeys(
        [e for e in email_ids if e not in dropped_ids], 1
    )
    assert set(Message.objects.filter(email_id__in=email_ids).values_list("status", flat=True)) == {Status.SENT}
    facts_hold(mail, email_ids, smtp_stack)


def test_a_worker_outlives_a_redis_outage_in_the_middle_of_a_chunk_and_delivers_afterwards(smtp_stack, mail, key):
    """Redis goes away for 15 s while a worker is sending a chunk (its task
    unacknowledged) and comes back empty. The worker process stays up (kombu
    5.7.0's Redis transport made it exit with "Unrecoverable error";
    config/kombu_redis.py), reconnects, and delivers what is accepted after;
    every email is sent once."""
    mail.data_delay = 0.2
    run = unique("redis-gone")
    email_ids = batch_send(smtp_stack, key, run, 60)
    # Two pool processes: one runs the chunk, the other leaves the consumer waiting
    # on Redis for more (a BRPOP in flight), the case kombu 5.7.0 did not survive.
    worker = smtp_stack.start_worker(concurrency=2, env={"DELIVERY_SEND_CONCURRENCY": "2"})
    assert wait_until(lambda: len(mail.matching(run)) >= 4, timeout=60), smtp_stack.logs()

    smtp_stack.stop_redis()
    time.sleep(15)
    assert worker.process.poll() is None, worker.log()[-3000:]
    smtp_stack.start_redis()  # empty: the chunk's task and every other are gone

    later = unique("after-redis")
    later_ids = batch_send(smtp_stack, key, later, 5)
    assert all_done(later_ids, timeout=60), worker.log()[-3000:]
    assert worker.process.poll() is None and "Unrecoverable error" not in worker.log(), worker.log()[-3000:]
    smtp_stack.start_worker(beat=True)  # its sweeper publishes for what lost its task with Redis
    assert all_done(email_ids, timeout=90), smtp_stack.logs()
    assert set(copies(mail, email_ids + later_ids).values()) == {1}
    facts_hold(mail, email_ids + later_ids, smtp_stack)
