"""GET /api/v1/stats (issue 17): recipient status transitions per hour and day
against a hand count. Emails go through the API, the real delivery engine and
event apply; each phase's StatusChange rows are then placed at a moment of the
past chosen here (the transitions happened then), so every bucket is known."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from core.redisclient import redis_client
from emailsvc import listing as selectors_list
from emailsvc.models import ApiKey, Message, StatusChange
from emailsvc.suppressions.services import suppression_add
from tests.conftest import deliver_now
from tests.tracking.scenario import event
from tracking.apply import events_apply
from tracking.normalize import ses_body_parse

pytestmark = pytest.mark.django_db

STATUSES = [status for status, _ in Message._meta.get_field("status").choices]


@pytest.fixture(autouse=True)
def no_cached_counts():
    """Settled buckets are kept in Redis; a bucket of an earlier test's database must not answer."""
    client = redis_client()
    for key in client.scan_iter(match=selectors_list.STATS_CACHE_PREFIX + "*"):
        client.delete(key)


def send(api, to, **fields) -> Message:
    body = {"to": to, "subject": "Hello", "text": "Hi", **fields}
    response = api.post("/api/v1/emails", json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.content
    return Message.objects.get(email_id=response.json()["email_id"])


def apply(*envelopes) -> None:
    events = [normalized for envelope in envelopes for normalized in ses_body_parse(envelope)]
    assert {applied.outcome for applied in events_apply(events=events, source="sqs")} == {"applied"}


def happened_at(moment: datetime, since_id: int) -> int:
    """The transitions recorded after `since_id` took place at `moment`; the last id."""
    StatusChange.objects.filter(id__gt=since_id).update(at=moment)
    return StatusChange.objects.order_by("-id").values_list("id", flat=True).first() or 0


def counts(**numbers) -> dict:
    return {status: numbers.get(status, 0) for status in STATUSES}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def history(api):
    """Three phases five, three and one hours into the past (BASE = the hour five hours ago):

    A (BASE + 0:10): accepted and delivered — welcome to a and ops (group launch,
       tag welcome), receipt to b (launch), news to c (other, tag welcome);
       one to f, suppressed at the door (launch).      sent 4, suppressed 1
    B (BASE + 2:59): delivery of a, ops and c; b bounces.  delivered 3, bounced 1
    C (BASE + 4:00): a opens, c complains; a scheduled email of launch is cancelled.
                                                       opened 1, complained 1, cancelled 1
    """
    base = timezone.now().astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    suppression_add(email="f@example.com", reason="manual", source="test")
    welcome = send(api, "a@example.com", cc="ops@example.com", group_id="launch", tags=["welcome"])
    receipt = send(api, "b@example.com", group_id="launch")
    news = send(api, "c@example.com", group_id="other", tags=["welcome"])
    send(api, "f@example.com", group_id="launch")
    assert deliver_now() == 3
    last = happened_at(base + timedelta(minutes=10), 0)
    welcome.refresh_from_db(), receipt.refresh_from_db(), news.refresh_from_db()
    apply(
        event(welcome, "Delivery", ["a@example.com", "ops@example.com"]),
        event(receipt, "Bounce", bounce_type="Permanent", bounce_subtype="General"),
        event(news, "Delivery"),
    )
    last = happened_at(base + timedelta(hours=2, minutes=59), last)
    apply(event(welcome, "Open", ["a@example.com"], seconds=20), event(news, "Complaint", seconds=30))
    later = send(api, "l@example.com", group_id="launch", send_at=(timezone.now() + timedelta(days=1)).isoformat())
    assert api.post(f"/api/v1/emails/{later.email_id}/cancel").status_code == 200
    happened_at(base + timedelta(hours=4), last)
    return base


def buckets_of(body: dict) -> list[tuple[str, dict]]:
    return [(bucket["start"], bucket["counts"]) for bucket in body["buckets"]]


def test_hourly_buckets_equal_a_hand_count(make_client, history):
    reader = make_client(ApiKey.Permission.READ_ONLY)
    base = history

    response = reader.get(f"/api/v1/stats?from={iso(base)}&to={iso(base + timedelta(hours=5))}&interval=hour")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["from"], body["to"], body["interval"]) == (iso(base), iso(base + timedelta(hours=5)), "hour")
    assert buckets_of(body) == [
        (iso(base), counts(sent=4, suppressed=1)),
        (iso(base + timedelta(hours=1)), counts()),
        (iso(base + timedelta(hours=2)), counts(delivered=3, bounced=1)),
        (iso(base + timedelta(hours=3)), counts()),
        (iso(base + timedelta(hours=4)), counts(opened=1, complained=1, cancelled=1)),
    ]
    assert body["totals"] == counts(sent=4, suppressed=1, delivered=3, bounced=1, opened=1, complained=1, cancelled=1)


def test_group_and_tag_keep_their_emails_transitions(make_client, history):
    reader = make_client(ApiKey.Permission.READ_ONLY)
    window = f"from={iso(history)}&to={iso(history + timedelta(hours=5))}"

    launch = reader.get(f"/api/v1/stats?{window}&group_id=launch").json()
    welcome = reader.get(f"/api/v1/stats?{window}&tag=welcome").json()
    both = reader.get(f"/api/v1/stats?{window}&tag=welcome&group_id=other").json()
    nothing = reader.get(f"/api/v1/stats?{window}&group_id=nope").json()

    assert launch["totals"] == counts(sent=3, suppressed=1, delivered=2, bounced=1, opened=1, cancelled=1)
    assert welcome["totals"] == counts(sent=3, delivered=3, opened=1, complained=1)
    assert [bucket["counts"] for bucket in welcome["buckets"]][2] == counts(delivered=3)
    assert both["totals"] == counts(sent=1, delivered=1, complained=1)
    assert nothing["totals"] == counts() and len(nothing["buckets"]) == 5


def test_the_split_by_stream_matches_the_stored_transitions_and_the_stream_filter(api, make_client, history):
    reader = make_client(ApiKey.Permission.READ_ONLY)
    base = history
    last = StatusChange.objects.order_by("-id").values_list("id", flat=True).first()
    first = send(api, "n1@example.com", stream="broadcast")
    second = send(api, "n2@example.com", stream="broadcast")
    assert deliver_now() == 2
    first.refresh_from_db(), second.refresh_from_db()
    apply(event(second, "Complaint", ["n2@example.com"], seconds=30))
    happened_at(base + timedelta(hours=1, minutes=5), last)
    window = f"from={iso(base)}&to={iso(base + timedelta(hours=5))}"

    body = reader.get(f"/api/v1/stats?{window}").json()

    stored: dict[str, dict] = {}
    for stream, status in StatusChange.objects.filter(at__gte=base, at__lt=base + timedelta(hours=5)).values_list(
        "message__stream", "to_status"
    ):
        stored.setdefault(stream, counts())[status] += 1
    assert body["streams"] == stored
    assert body["streams"]["broadcast"] == counts(sent=2, complained=1)
    assert body["streams"]["transactional"] == counts(
        sent=4, suppressed=1, delivered=3, bounced=1, opened=1, complained=1, cancelled=1
    )
    assert body["totals"] == counts(sent=6, suppressed=1, delivered=3, bounced=1, opened=1, complained=2, cancelled=1)
    assert body["buckets"][1]["streams"] == {"broadcast": counts(sent=2, complained=1), "transactional": counts()}
    assert body["buckets"][0]["streams"]["transactional"] == counts(sent=4, suppressed=1)
    for bucket in body["buckets"]:  # the split adds up to the bucket
        assert {s: sum(c[s] for c in bucket["streams"].values()) for s in STATUSES} == bucket["counts"]
    # The filter answers as before, its split holding its one stream.
    filtered = reader.get(f"/api/v1/stats?{window}&stream=broadcast").json()
    assert filtered["totals"] == body["streams"]["broadcast"]
    assert filtered["streams"] == {"broadcast": body["streams"]["broadcast"]}
    # A stream created later shows once it has transitions; an idle window still lists the built-in ones.
    empty = reader.get(f"/api/v1/stats?from={iso(base - timedelta(days=2))}&to={iso(base - timedelta(days=1))}").json()
    assert empty["streams"] == {"broadcast": counts(), "transactional": counts()}


def test_daily_buckets_and_a_window_widened_to_whole_buckets(make_client, history):
    reader = make_client(ApiKey.Permission.READ_ONLY)
    moments = {  # when each phase happened, and what it counted
        history + timedelta(minutes=10): counts(sent=4, suppressed=1),
        history + timedelta(hours=2, minutes=59): counts(delivered=3, bounced=1),
        history + timedelta(hours=4): counts(opened=1, complained=1, cancelled=1),
    }
    expected: dict[str, dict] = {}
    for moment, numbers in moments.items():
        day = iso(moment.replace(hour=0, minute=0))
        expected[day] = {status: expected.get(day, counts())[status] + numbers[status] for status in STATUSES}

    body = reader.get(f"/api/v1/stats?from={iso(history + timedelta(minutes=5))}&interval=day").json()

    assert body["from"] == iso(history.replace(hour=0))  # rounded down to the day
    assert body["to"] == iso((timezone.now().astimezone(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0))
    listed = dict(buckets_of(body))
    assert {day: listed[day] for day in expected} == expected
    assert all(numbers == counts() for day, numbers in listed.items() if day not in expected)
    assert sum(body["totals"].values()) == 12


def test_the_default_window_is_the_last_24_hours_by_hour(make_client, history):
    reader = make_client(ApiKey.Permission.READ_ONLY)
    now = timezone.now().astimezone(UTC)

    body = reader.get("/api/v1/stats").json()

    starts = [datetime.fromisoformat(bucket["start"]) for bucket in body["buckets"]]
    assert len(starts) == 25 and body["interval"] == "hour"
    assert starts[0] == (now - timedelta(hours=24)).replace(minute=0, second=0, microsecond=0)
    assert starts[-1] == now.replace(minute=0, second=0, microsecond=0)
    assert all(b - a == timedelta(hours=1) for a, b in zip(starts, starts[1:]))
    assert body["totals"] == counts(sent=4, suppressed=1, delivered=3, bounced=1, opened=1, complained=1, cancelled=1)


def test_a_settled_bucket_is_counted_once_and_the_current_one_every_time(api, make_client, history):
    reader = make_client(ApiKey.Permission.READ_ONLY)
    window = f"from={iso(history)}&interval=hour"
    first = reader.get(f"/api/v1/stats?{window}").json()

    # The past can no longer change; a late row there (which the service never
    # writes: transitions are recorded as they happen) is not counted again...
    StatusChange.objects.filter(to_status="sent").update(at=history + timedelta(hours=1, minutes=30))
    # ...while what happens now is.
    send(api, "now@example.com")
    deliver_now()
    second = reader.get(f"/api/v1/stats?{window}").json()

    assert buckets_of(second)[:5] == buckets_of(first)[:5]
    assert second["totals"]["sent"] == first["totals"]["sent"] + 1


BAD = [
    ("from=yesterday", "from"),
    ("to=2026-02-30T00:00:00Z", "to"),
    ("interval=week", "interval"),
    ("interval=", "interval"),
    ("from=2026-12-01T10:00:00Z&to=2026-12-01T09:00:00Z", "from"),
    ("from=2026-11-01T00:00:00Z&to=2026-11-08T01:00:01Z&interval=hour", "from"),  # 170 hours
    ("from=2026-01-01T00:00:00Z&to=2026-04-02T00:00:01Z&interval=day", "from"),  # 92 days
    ("to=9999-12-31T23:59:59-05:00", "to"),
    ("group_id=", "group_id"),
    ("tag=a%00b", "tag"),
    ("from=2026-12-01T00:00:00Z&from=2026-12-01T01:00:00Z", "from"),
    ("status=sent", "status"),
]


@pytest.mark.parametrize(("query", "field"), BAD)
def test_a_bad_parameter_is_a_400_naming_it(make_client, query, field):
    reader = make_client(ApiKey.Permission.READ_ONLY)

    response = reader.get(f"/api/v1/stats?{query}")

    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "invalid_field" and field in body["fields"], body


def test_the_longest_windows_are_accepted(make_client):
    reader = make_client(ApiKey.Permission.READ_ONLY)

    hours = reader.get("/api/v1/stats?from=2026-11-01T00:30:00Z&to=2026-11-08T00:30:00Z").json()
    days = reader.get("/api/v1/stats?from=2026-01-01T12:00:00Z&to=2026-04-01T12:00:00Z&interval=day").json()

    assert len(hours["buckets"]) == 7 * 24 + 1 and hours["from"] == "2026-11-01T00:00:00Z"
    assert len(days["buckets"]) == 91 and days["to"] == "2026-04-02T00:00:00Z"


def test_stats_need_a_key_and_reading_is_enough(client, make_client):
    assert client.get("/api/v1/stats").status_code == 401
    assert make_client(ApiKey.Permission.READ_ONLY).get("/api/v1/stats").status_code == 200
    assert make_client(ApiKey.Permission.READ_ONLY).post("/api/v1/stats").status_code == 405
