"""Figure 5: SES events applied per second by the SQS drain, and the cost of a replay.

Realistic SNS-wrapped SES events (tests/tracking/sesevents.py builds them as
SES and SNS document them) for emails that were sent are put on an SQS queue
of the local AWS emulator (moto); then `tracking.drain.events_drain` runs in
this process until the queue is empty. The same messages (same SNS MessageIds)
are then put on the queue again: a replay must apply nothing.

moto's ReceiveMessage costs about 1 ms per message *on the queue* (it scans
them all), so a deep queue would measure moto, not the drain: the events go on
the queue one apply batch at a time (SES_EVENTS_APPLY_BATCH, what a drain
gathers from a backlog), each slice drained before the next is put (real SQS
answers in about the same time whatever the depth). The time the drain spends
waiting for moto's SQS is also measured (botocore call events) and reported, so
the drain's own rate can be read without it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from benchmarks.context import Bench
from benchmarks.report import Row, fmt


def _slice() -> int:
    """Events on the queue at once: one full apply batch, as a backlog gives a drain."""
    from django.conf import settings

    return settings.SES_EVENTS_APPLY_BATCH


class SqsClock:
    """Wall time spent inside SQS API calls of clients made from boto3's default
    session (the drain's `sqs_client()` is one), via botocore's call events."""

    def __init__(self):
        import boto3

        self.seconds = 0.0
        self.calls = 0
        events = boto3._get_default_session().events  # noqa: SLF001 - the session every boto3.client() uses
        # From the call's first event (its parameters, before botocore builds,
        # signs and sends the request) to its last (the answer parsed).
        events.register("provide-client-params.sqs", self._before, unique_id="bench-sqs-before")
        events.register("after-call.sqs", self._after, unique_id="bench-sqs-after")
        try:
            from core.sqs import sqs_clients_forget
        except ImportError:  # before clients were kept
            return
        sqs_clients_forget()  # a kept client copied the session's handlers before these

    def _before(self, context=None, **_):
        if context is not None:
            context["bench_started"] = time.perf_counter()

    def _after(self, context=None, **_):
        if context is not None and "bench_started" in context:
            self.seconds += time.perf_counter() - context.pop("bench_started")
            self.calls += 1


def _mark_sent(group: str) -> list[tuple[str, str, str]]:
    """Record the group's emails as handed to SES, as a worker would have (setup
    only, not measured); (provider message id, email id, recipient) of each."""
    from django.db import transaction
    from django.utils import timezone

    from emailsvc.models import Message, Recipient, Status

    now = timezone.now()
    messages = list(Message.objects.filter(group_id=group).order_by("pk"))
    recipients = {r.message_id: r for r in Recipient.objects.filter(message__group_id=group)}
    for message in messages:
        message.status, message.sent_at, message.attempts = Status.SENT, now, 1
        message.state = "done"  # nothing left for the engine to send
        # Shaped like an SES message id.
        message.provider_message_id = f"0100018{uuid.uuid4().hex[:9]}-{uuid.uuid4()}-000000"
    with transaction.atomic():
        Message.objects.bulk_update(messages, ["status", "state", "sent_at", "attempts", "provider_message_id"],
                                    batch_size=500)
        Recipient.objects.filter(message__group_id=group).update(status=Status.SENT, sent_at=now)
    return [(m.provider_message_id, m.email_id, recipients[m.pk].email) for m in messages]


def _bodies(sent: list[tuple[str, str, str]], count: int, group: str) -> tuple[list[str], dict[str, int]]:
    """`count` SQS message bodies: each email gets a Delivery, then an Open (70 %)
    or a Bounce (15 % transient, 15 % permanent — those suppress the address)."""
    from tests.tracking.sesevents import ses_event, sns_envelope

    bodies, mix = [], {"Delivery": 0, "Open": 0, "Bounce": 0}
    for index, (provider_id, email_id, address) in enumerate(sent):
        headers = {"X-Emailsvc-Tracking-ID": f"{group}/{email_id}"}  # as the service sets it
        second = index % 20
        events = [ses_event("Delivery", message_id=provider_id, recipients=[address], headers=headers)]
        if second < 14:
            events.append(ses_event("Open", message_id=provider_id, recipients=[address], headers=headers))
        else:
            kind = "Transient" if second < 17 else "Permanent"
            events.append(ses_event("Bounce", message_id=provider_id, recipients=[address], headers=headers,
                                    bounce_type=kind))
        for event in events:
            if len(bodies) < count:
                bodies.append(json.dumps(sns_envelope(event)))
                mix[event["eventType"]] += 1
    return bodies, mix


@dataclass
class Prepared:
    sqs: object
    queue_url: str
    bodies: list[str]
    mix: dict[str, int]
    emails: int


def prepare(bench: Bench, count: int) -> Prepared:
    """Sent emails, the SQS bodies of `count` events about them, and an empty
    queue on moto that the drain (in this process) is pointed at."""
    import boto3
    from django.conf import settings

    moto_url = bench.stack.start_moto()
    group = f"bench-drain-{int(time.time())}"
    bench.submit((count + 1) // 2, group=group, provider="ses")  # two events per email
    bench.stack.flush_tasks()  # nobody delivers these: they are marked sent directly
    sent = _mark_sent(group)
    bodies, mix = _bodies(sent, count, group)
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
    queue_url = sqs.create_queue(QueueName=f"bench-ses-events-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    settings.AWS_ENDPOINT_URL = moto_url
    settings.SES_EVENTS_QUEUE_URL = queue_url
    settings.SES_EVENTS_WAIT_SECONDS = 0  # no long poll on the last, empty receive
    return Prepared(sqs=sqs, queue_url=queue_url, bodies=bodies, mix=mix, emails=len(sent))


def put(prepared: Prepared, bodies: list[str]) -> None:
    """SendMessageBatch, ten at a time, as SNS would have filled the queue."""
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies[start:start + 10])]
        response = prepared.sqs.send_message_batch(QueueUrl=prepared.queue_url, Entries=entries)
        if response.get("Failed"):
            raise RuntimeError(f"send_message_batch failed: {response['Failed'][:3]}")


def drain_all(prepared: Prepared, clock: SqsClock | None = None, *, profiler=None):
    """Put the events on the queue a slice at a time and run the drain until it
    has received each slice. Returns (totals, seconds draining, seconds in SQS calls);
    the time spent putting events on the queue is not counted."""
    try:
        from tracking.drain import DrainResult, events_drain
    except ImportError:  # before the drain had a module of its own
        from tracking.services import DrainResult, events_drain

    total, seconds, sqs_seconds = DrainResult(), 0.0, 0.0
    deadline = time.monotonic() + 900
    size = _slice()
    for start in range(0, len(prepared.bodies), size):
        expected = len(prepared.bodies[start:start + size])
        put(prepared, prepared.bodies[start:start + size])
        received = 0
        sqs_before = clock.seconds if clock else 0.0
        started = time.perf_counter()
        if profiler is not None:
            profiler.start()
        while received < expected and time.monotonic() < deadline:
            result = events_drain(max_seconds=300)
            received += result.received
            for name in ("received", "deleted", "applied", "duplicates", "unmatched", "malformed", "failed", "receives"):
                setattr(total, name, getattr(total, name) + getattr(result, name))
            total.errors += result.errors
            if result.skipped or (result.received == 0 and result.errors):
                raise RuntimeError(f"drain did not run: {result.skipped or result.errors[:3]}")
        if profiler is not None:
            profiler.stop()
        seconds += time.perf_counter() - started
        sqs_seconds += (clock.seconds - sqs_before) if clock else 0.0
    return total, seconds, sqs_seconds


def run(bench: Bench) -> None:
    prepared = prepare(bench, bench.params.drain_events)
    bodies, mix = prepared.bodies, prepared.mix
    clock = SqsClock()
    setup = (f"`events_drain` in this process (as the drain task runs it); moto SQS on loopback, "
             f"{_slice()} events on the queue at a time (SES_EVENTS_APPLY_BATCH); {len(bodies)} SNS-wrapped events "
             f"({', '.join(f'{v} {k}' for k, v in mix.items())}) for {prepared.emails} sent emails")

    first, seconds, sqs = drain_all(prepared, clock)
    own = seconds - sqs
    bench.rows.append(Row(
        figure="5 event drain",
        setup=setup,
        result=(f"{fmt(first.applied / seconds)} events applied/s ({first.applied} in {seconds:.1f} s); "
                f"{fmt(first.applied / own if own > 0 else None)}/s without the time waiting for moto"),
        values={"events": len(bodies), "mix": mix, "seconds": round(seconds, 3), "sqs_seconds": round(sqs, 3),
                "applied": first.applied, "duplicates": first.duplicates, "unmatched": first.unmatched,
                "failed": first.failed, "deleted": first.deleted, "receives": first.receives,
                "errors": first.errors[:5]},
        notes=(f"{sqs:.1f} s of it inside SQS calls ({first.receives} receives, their deletes)"
               + (f"; unmatched {first.unmatched}, failed {first.failed}" if first.unmatched or first.failed else "")),
    ))
    print(f"  drain: {bench.rows[-1].result}", flush=True)

    replay, seconds, sqs = drain_all(prepared, clock)
    own = seconds - sqs
    bench.rows.append(Row(
        figure="5 event drain, replay",
        setup=f"the same {len(bodies)} SQS messages (same SNS MessageIds) again",
        result=(f"{fmt(replay.received / seconds)} events/s, {fmt(replay.received / own if own > 0 else None)}/s "
                f"without moto; applied = {replay.applied}, duplicates = {replay.duplicates}"),
        values={"events": len(bodies), "seconds": round(seconds, 3), "sqs_seconds": round(sqs, 3),
                "applied": replay.applied, "duplicates": replay.duplicates, "unmatched": replay.unmatched,
                "failed": replay.failed},
        notes=(f"{seconds:.1f} s, {sqs:.1f} s of it inside SQS calls; a replay must apply nothing"
               + ("" if replay.applied == 0 else " — IT APPLIED SOME")),
    ))
    print(f"  drain replay: {bench.rows[-1].result}", flush=True)

    received, seconds = moto_floor(prepared)
    bench.rows.append(Row(
        figure="5 event drain, moto's floor",
        setup=(f"the same {len(bodies)} SQS messages again, {_slice()} on the queue at a time, received (10 per "
               "ReceiveMessage) and deleted (DeleteMessageBatch per 10) by a bare boto3 loop: no service code"),
        result=f"{fmt(received / seconds)} messages/s ({received} in {seconds:.1f} s)",
        values={"messages": received, "seconds": round(seconds, 3)},
        notes="the most the end-to-end drain rows above could reach on this emulator: its time is the emulator's",
    ))
    print(f"  moto floor: {bench.rows[-1].result}", flush=True)


def moto_floor(prepared: Prepared) -> tuple[int, float]:
    """Receive and delete the bodies slice by slice with nothing else: (messages, seconds)."""
    size, received, seconds = _slice(), 0, 0.0
    for start in range(0, len(prepared.bodies), size):
        expected = len(prepared.bodies[start:start + size])
        put(prepared, prepared.bodies[start:start + size])
        started, got = time.perf_counter(), 0
        while got < expected:
            messages = prepared.sqs.receive_message(
                QueueUrl=prepared.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=60,
            ).get("Messages", [])
            if not messages:
                break
            got += len(messages)
            prepared.sqs.delete_message_batch(QueueUrl=prepared.queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ])
        seconds += time.perf_counter() - started
        received += got
    return received, seconds
