"""GET /api/v1/emails (issue 17): filters and per-status counts against a hand
count of emails sent through the API and moved by the real delivery engine and
event apply; cursor pages that stay put while emails arrive; every bad
parameter named in a 400; permissions; the one URL's two operations."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from emailsvc import listing as selectors_list
from emailsvc.models import ApiKey, Message
from emailsvc.suppressions.services import suppression_add
from templates_app.services import template_create
from tests.conftest import deliver_now
from tests.tracking.scenario import event
from tracking.apply import events_apply
from tracking.normalize import ses_body_parse

pytestmark = pytest.mark.django_db

STATUSES = list(Message._meta.get_field("status").choices)


def send(api, to, **fields) -> str:
    body = {"to": to, "subject": "Hello", "text": "Hi", **fields}
    if "template" in fields:
        body.pop("subject"), body.pop("text")
    response = api.post("/api/v1/emails", json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.content
    return response.json()["email_id"]


def apply(*envelopes) -> None:
    events = [normalized for envelope in envelopes for normalized in ses_body_parse(envelope)]
    assert {applied.outcome for applied in events_apply(events=events, source="sqs")} == {"applied"}


# Each email's status once the scenario has run: the hand count every expectation below comes from.
FINAL = {
    "welcome": "opened",  # a opened, ops delivered
    "receipt": "bounced",
    "zoe": "delivered",
    "suppressed": "suppressed",
    "scheduled": "scheduled",
    "plain": "sent",
}
ORDER = ["welcome", "receipt", "zoe", "suppressed", "scheduled", "plain"]  # as accepted


@pytest.fixture
def sent(api):
    """Six emails of every kind, accepted in ORDER, delivered by the engine, with
    provider events applied; `mid` is a moment between the second and the third."""
    template_create(name="receipt", data={"subject": "Receipt {{ number }}", "text": "Thanks, {{ number }}"}, created_by="tests")
    suppression_add(email="f@example.com", reason="manual", source="test")
    ids = {
        "welcome": send(
            api, "a@example.com", cc="ops@example.com", group_id="launch", tags=["welcome", "onboarding"],
            metadata={"user": "7", "plan": "pro"},
        ),
        "receipt": send(
            api, "b@example.com", group_id="launch", tags=["receipt"], metadata={"user": 7},
            template="receipt", template_data={"number": 42},
        ),
    }
    mid = timezone.now()
    ids["zoe"] = send(api, "Zoë <zoe@bücher.example>", group_id="other", tags=["welcome"], metadata={"user": "8"})
    ids["suppressed"] = send(api, "f@example.com", group_id="launch")
    ids["scheduled"] = send(api, "s@example.com", send_at=(timezone.now() + timedelta(days=1)).isoformat())
    ids["plain"] = send(api, "c@example.com")
    assert deliver_now() == 4
    message = {name: Message.objects.get(email_id=email_id) for name, email_id in ids.items()}
    apply(
        event(message["welcome"], "Delivery", ["a@example.com", "ops@example.com"], seconds=1),
        event(message["welcome"], "Open", ["a@example.com"], seconds=2),
        event(message["receipt"], "Bounce", bounce_type="Permanent", bounce_subtype="General"),
        event(message["zoe"], "Delivery", seconds=1),
    )
    assert {name: Message.objects.get(email_id=email_id).status for name, email_id in ids.items()} == FINAL
    ids["mid"] = mid.isoformat()
    return ids


# (query, the emails it must list, newest first)
CASES = [
    ("", ["plain", "scheduled", "suppressed", "zoe", "receipt", "welcome"]),
    ("status=opened", ["welcome"]),
    ("status=bounced,delivered", ["zoe", "receipt"]),
    ("status=bounced&status=sent", ["plain", "receipt"]),
    ("status=sent,bounced&status=opened", ["plain", "receipt", "welcome"]),
    ("group_id=launch", ["suppressed", "receipt", "welcome"]),
    ("group_id=nope", []),
    ("to=ops@example.com", ["welcome"]),  # a cc
    ("to=OPS@Example.COM", ["welcome"]),
    ("to=zoe@bücher.example", ["zoe"]),
    ("to=zoe@xn--bcher-kva.example", ["zoe"]),
    ("to=nobody@example.com", []),
    ("tag=welcome", ["zoe", "welcome"]),
    ("tag=onboarding", ["welcome"]),
    ("tag=wel", []),
    ("template=receipt", ["receipt"]),
    ("template=welcome", []),
    ("metadata[user]=7", ["welcome"]),  # the string "7", not receipt's number 7
    ("metadata[user]=7&metadata[plan]=pro", ["welcome"]),
    ("metadata[plan]=free", []),
    ("metadata[user]=8&tag=welcome", ["zoe"]),
    ("created_before=MID", ["receipt", "welcome"]),
    ("created_after=MID", ["plain", "scheduled", "suppressed", "zoe"]),
    ("created_after=MID&group_id=launch", ["suppressed"]),
    ("group_id=launch&tag=welcome&status=opened,bounced", ["welcome"]),
]


def test_every_filter_lists_and_counts_what_a_hand_count_says(make_client, sent):
    reader = make_client(ApiKey.Permission.READ_ONLY)
    wrong = []
    for query, expected in CASES:
        url = "/api/v1/emails?" + query.replace("MID", sent["mid"].replace("+", "%2B")) + "&stats=true"
        response = reader.get(url)
        assert response.status_code == 200, (query, response.json())
        body = response.json()
        listed = [record["email_id"] for record in body["results"]]
        counts = {status: 0 for status, _ in STATUSES}
        for name in expected:
            counts[FINAL[name]] += 1
        if listed != [sent[name] for name in expected] or body["stats"] != counts or body["stats_exact"] is not True:
            wrong.append((query, listed, body["stats"], body["stats_exact"]))
    assert wrong == []


def test_records_are_the_summary_shape_with_recipients(make_client, sent):
    reader = make_client(ApiKey.Permission.READ_ONLY)

    (record,) = reader.get("/api/v1/emails?to=ops@example.com").json()["results"]

    assert record["email_id"] == sent["welcome"] and record["group_id"] == "launch"
    assert record["tags"] == ["welcome", "onboarding"] and record["metadata"] == {"user": "7", "plan": "pro"}
    assert [(r["email"], r["role"], r["status"]) for r in record["recipients"]] == [
        ("a@example.com", "to", "opened"), ("ops@example.com", "cc", "delivered"),
    ]
    assert "html" not in record and "events" not in record
    assert "stats" not in reader.get("/api/v1/emails").json()


def test_pages_stay_put_while_new_emails_arrive(api, make_client):
    reader = make_client(ApiKey.Permission.READ_ONLY)
    first = [send(api, f"user{n}@example.com", group_id="wave") for n in range(25)]
    newest_first = first[::-1]

    page1 = reader.get("/api/v1/emails?group_id=wave&limit=10").json()
    arrived = [send(api, f"late{n}@example.com", group_id="wave") for n in range(10)]
    page2 = reader.get(page1["next"]).json()
    page3 = reader.get(page2["next"]).json()

    listed = [r["email_id"] for page in (page1, page2, page3) for r in page["results"]]
    assert listed == newest_first  # no repeat, no gap, none of the late ones
    assert page3["next"] is None
    back = reader.get(page3["previous"]).json()
    assert [r["email_id"] for r in back["results"]] == newest_first[10:20]
    fresh = reader.get("/api/v1/emails?group_id=wave&limit=10").json()
    assert [r["email_id"] for r in fresh["results"]] == arrived[::-1]


def test_a_page_of_a_sparse_filter_skips_what_does_not_match(api, make_client, settings, monkeypatch):
    """A filter no index orders by id, matching one email in many: the page is
    gathered through its index, complete and in order, on every page."""
    monkeypatch.setattr(selectors_list, "PROBE_ROWS", 5)
    reader = make_client(ApiKey.Permission.READ_ONLY)
    tagged = []
    for n in range(30):
        tags = ["rare"] if n % 7 == 0 else ["common"]
        email_id = send(api, f"user{n}@example.com", tags=tags)
        if tags == ["rare"]:
            tagged.append(email_id)

    listed, url = [], "/api/v1/emails?tag=rare&limit=2"
    while url:
        page = reader.get(url).json()
        listed += [r["email_id"] for r in page["results"]]
        url = page["next"]
    backwards, url = [], page["previous"]
    while url:
        page = reader.get(url).json()
        backwards = [r["email_id"] for r in page["results"]] + backwards
        url = page["previous"]
    dense = reader.get("/api/v1/emails?tag=common&status=queued,sent&limit=3").json()
    dense_next = reader.get(dense["next"]).json()

    assert listed == tagged[::-1]
    assert len(listed) == 5 and backwards == listed[:4]  # back from the last page (of one) to the first
    common = [r["email_id"] for r in dense["results"] + dense_next["results"]]
    assert len(common) == 6 and common == sorted(common, key=lambda e: Message.objects.get(email_id=e).pk, reverse=True)


def test_created_windows_over_days_are_exact(api, make_client):
    """Messages accepted over ten days (their ids follow acceptance): every window
    lists exactly the ones created in it, whatever the id bounds narrowed."""
    reader = make_client(ApiKey.Permission.READ_ONLY)
    ids = [send(api, f"user{n}@example.com", group_id="days") for n in range(10)]
    start = timezone.now() - timedelta(days=10)
    for day, email_id in enumerate(ids):
        Message.objects.filter(email_id=email_id).update(created_at=start + timedelta(days=day, minutes=day))
    moments = [start + timedelta(days=day, hours=12) for day in range(10)]

    def window(after=None, before=None):
        query = "group_id=days&stats=true"
        if after is not None:
            query += "&created_after=" + moments[after].isoformat().replace("+", "%2B")
        if before is not None:
            query += "&created_before=" + moments[before].isoformat().replace("+", "%2B")
        body = reader.get(f"/api/v1/emails?{query}").json()
        return [r["email_id"] for r in body["results"]], sum(body["stats"].values())

    assert window(before=3) == (ids[3::-1], 4)
    assert window(after=6) == (ids[:6:-1], 3)
    assert window(after=2, before=5) == (ids[5:2:-1], 3)
    assert window(after=5, before=5) == ([], 0)


def test_stats_past_the_exact_limit_are_an_estimate_and_say_so(api, make_client, monkeypatch):
    reader = make_client(ApiKey.Permission.READ_ONLY)
    for n in range(60):
        send(api, f"user{n}@example.com", tags=["bulk"], **({"send_at": (timezone.now() + timedelta(days=1)).isoformat()} if n % 3 == 0 else {}))
    monkeypatch.setattr(selectors_list, "STATS_EXACT_LIMIT", 10)
    monkeypatch.setattr(selectors_list, "STATS_EXACT_TRY", 10)
    monkeypatch.setattr(selectors_list, "STATS_SAMPLE_RUNS", 6)
    monkeypatch.setattr(selectors_list, "STATS_SAMPLE_RUN", 5)

    body = reader.get("/api/v1/emails?tag=bulk&stats=true").json()
    small = reader.get("/api/v1/emails?tag=bulk&status=scheduled&limit=1&stats=true").json()

    from django.db import connection

    if connection.vendor == "postgresql":
        assert body["stats_exact"] is False
        # 30 of the 60 ids sampled, in six runs of five: each run holds 1 or 2 scheduled.
        assert 36 <= body["stats"]["queued"] <= 48 and 12 <= body["stats"]["scheduled"] <= 24
        assert body["stats"]["queued"] + body["stats"]["scheduled"] == 60
    else:  # SQLite counts everything, always
        assert body["stats_exact"] is True and (body["stats"]["queued"], body["stats"]["scheduled"]) == (40, 20)
    assert len(body["results"]) == 50
    assert small["stats_exact"] is (connection.vendor != "postgresql")
    assert small["stats"]["scheduled"] == 20 or not small["stats_exact"]


def test_an_exact_count_that_takes_too_long_is_given_up_and_the_request_goes_on(api, monkeypatch):
    """On a big table a filter's matches can lie scattered: reading them to count
    them exactly is stopped after STATS_EXACT_MILLISECONDS, the caller's
    transaction stays usable and keeps no lowered timeout (the API then
    estimates)."""
    from django.db import connection, transaction

    if connection.vendor != "postgresql":
        pytest.skip("SQLite counts every match; only PostgreSQL stops a statement that runs too long")
    for n in range(3):
        send(api, f"user{n}@example.com")
    monkeypatch.setattr(selectors_list, "STATS_EXACT_MILLISECONDS", 50)
    slow = Message.objects.extra(where=["pg_sleep(0.2) IS NOT NULL"])  # 0.2 s a row

    with transaction.atomic():
        assert selectors_list.statuses_read(slow) is None
        # The transaction goes on (given time enough, on a loaded machine too).
        monkeypatch.setattr(selectors_list, "STATS_EXACT_MILLISECONDS", 5_000)
        assert selectors_list.statuses_read(Message.objects.all()) == ["queued"] * 3
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('statement_timeout')")
            assert cursor.fetchone()[0] == "0"


BAD = [
    ("status=nope", "status"),
    ("status=sent,", "status"),
    ("status=", "status"),
    ("limit=0", "limit"),
    ("limit=501", "limit"),
    ("limit=ten", "limit"),
    ("cursor=garbage", "cursor"),
    ("cursor=cD1hYmM%3D", "cursor"),  # a well-formed cursor whose position is not an id
    ("created_after=yesterday", "created_after"),
    ("created_before=2026-13-01T00:00:00Z", "created_before"),
    ("created_after=0001-01-01T00:00:00%2B05:00", "created_after"),
    ("group_id=", "group_id"),
    ("group_id=a&group_id=b", "group_id"),
    ("tag=a%00b", "tag"),
    ("template=" + "x" * 201, "template"),
    ("to=" + "x" * 321, "to"),
    ("stats=maybe", "stats"),
    ("metadata=x", "metadata"),
    ("metadata[]=x", "metadata[]"),
    ("metadata[k]=a%0Ab", "metadata[k]"),
    ("&".join(f"metadata[k{n}]=v" for n in range(11)), "metadata"),
    ("page=2", "page"),
    ("offset=10", "offset"),
]


@pytest.mark.parametrize(("query", "field"), BAD)
def test_a_bad_parameter_is_a_400_naming_it(make_client, query, field):
    reader = make_client(ApiKey.Permission.READ_ONLY)

    response = reader.get(f"/api/v1/emails?{query}")

    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == ("invalid_cursor" if field == "cursor" else "invalid_field"), body
    assert field in body["fields"], body


def test_one_url_two_operations_each_with_its_permission(client, make_client):
    reader = make_client(ApiKey.Permission.READ_ONLY)
    sender = make_client(ApiKey.Permission.SENDING)
    body = json.dumps({"to": "a@example.com", "subject": "s", "text": "t"})

    assert client.get("/api/v1/emails").status_code == 401
    assert reader.get("/api/v1/emails").status_code == 200
    refused = reader.post("/api/v1/emails", body, content_type="application/json")
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert sender.post("/api/v1/emails", body, content_type="application/json").status_code == 202
    assert sender.get("/api/v1/emails").json()["results"][0]["recipients"][0]["email"] == "a@example.com"
    assert reader.put("/api/v1/emails", body, content_type="application/json").status_code == 405

    schema = client.get("/api/schema/?format=json").json()
    operations = schema["paths"]["/api/v1/emails"]
    assert (operations["get"]["operationId"], operations["post"]["operationId"]) == ("list_emails", "send_email")
    assert "read_only" in operations["get"]["description"] and "sending" in operations["post"]["description"]
    listed = operations["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert listed.endswith("/EmailListPageOutput")
    assert "202" in operations["post"]["responses"] and "requestBody" not in operations["get"]
    names = {parameter["name"] for parameter in operations["get"]["parameters"]}
    assert names == {"status", "group_id", "to", "tag", "template", "created_after", "created_before", "metadata",
                     "stats", "cursor", "limit"}
