"""GET /metrics: Prometheus figures from every process of the service, added up.

The test process is the web side (the Django test client) and the session's
Celery worker is a real process; both write to the session's
PROMETHEUS_MULTIPROC_DIR (tests/conftest.py), and /metrics adds them up.
"""

import json
import re
import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from console import metrics
from emailsvc.sending_control.breaker import sending_pause, sending_resume
from tests.conftest import BASE_DIR, wait_for_status, wait_until
from tracking.drain import drain_report_save

TOKEN = "metrics-test-token-0123456789"


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_PUBLIC = False
    return TOKEN


@pytest.fixture
def fresh(monkeypatch):
    """Scrape-time sources read at every scrape (no figures cached by an earlier test)."""
    monkeypatch.setattr(metrics, "SCRAPE_CACHE_SECONDS", 0.0)


def scrape(client, token=TOKEN) -> dict:
    """{(sample name, frozenset of labels): value} of one authorised scrape."""
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# --- counted where it happens, added up across processes -----------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_send_through_a_real_worker_moves_the_counters(client, api, token, settings, celery_worker, smtp_server):
    settings.EMAIL_PROVIDER = "smtp"  # the worker sends to the session's SMTP server
    before = scrape(client)

    response = api.post(
        "/api/v1/emails",
        json.dumps({"from": "noreply@example.com", "to": ["jane@example.com"], "subject": "Counted", "text": "Hi"}),
        content_type="application/json",
    )
    assert response.status_code == 202, response.content
    assert wait_for_status(response.json()["email_id"]).status == "sent", celery_worker.log()[-3000:]

    def moved() -> dict | None:
        after = scrape(client)
        worker_side = (
            value(after, "emailsvc_delivery_attempts_total") > value(before, "emailsvc_delivery_attempts_total")
            and value(after, "emailsvc_recipient_status_changes_total", status="sent", stream="transactional")
            > value(before, "emailsvc_recipient_status_changes_total", status="sent", stream="transactional")
        )
        return after if worker_side else None

    # The worker counts right after its transaction commits, a moment after the status is visible.
    after = wait_until(moved, timeout=15, interval=0.2)
    assert after, celery_worker.log()[-3000:]
    accepted = ("emailsvc_emails_accepted_total", {"priority": "normal", "endpoint": "single", "stream": "transactional"})
    assert value(after, accepted[0], **accepted[1]) - value(before, accepted[0], **accepted[1]) == 1
    # Only the worker process delivers in this test: its figures reached this process's scrape.
    assert value(after, "emailsvc_delivery_attempts_total") - value(before, "emailsvc_delivery_attempts_total") >= 1
    # Read at scrape time: the broker's queues, per priority.
    for priority in ("high", "normal", "low"):
        assert ("emailsvc_delivery_queue_depth", frozenset({("priority", priority)})) in after
    assert value(after, "emailsvc_metrics_source_up", source="broker") == 1


@pytest.mark.django_db(transaction=True)
def test_a_batch_is_counted_by_priority(client, api, token):
    # Scheduled a day ahead: accepted now, and no worker of the session touches them meanwhile.
    later = {"send_at": (timezone.now() + timedelta(days=1)).isoformat(), "subject": "s", "text": "x"}
    before = scrape(client)
    response = api.post(
        "/api/v1/emails/batch",
        json.dumps(
            {
                "emails": [
                    {**later, "to": "a@example.com", "priority": "high"},
                    {**later, "to": "b@example.com", "priority": "low"},
                    {**later, "to": "c@example.com", "priority": "low"},
                    {**later, "to": "not an address"},
                ]
            }
        ),
        content_type="application/json",
    )
    assert response.status_code == 200 and len(response.json()["errors"]) == 1, response.content
    after = scrape(client)

    def delta(priority: str) -> float:
        name = "emailsvc_emails_accepted_total"
        labels = {"priority": priority, "endpoint": "batch", "stream": "transactional"}
        return value(after, name, **labels) - value(before, name, **labels)

    assert (delta("high"), delta("normal"), delta("low")) == (1, 0, 2)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_accepted_emails_and_status_changes_are_counted_by_stream(client, api, token, settings, celery_worker, smtp_server):
    settings.EMAIL_PROVIDER = "smtp"
    later = {"send_at": (timezone.now() + timedelta(days=1)).isoformat(), "subject": "s", "text": "x"}
    before = scrape(client)
    batch = api.post(
        "/api/v1/emails/batch",
        json.dumps({"emails": [
            {**later, "to": "a@example.com", "stream": "broadcast"},
            {**later, "to": "b@example.com", "stream": "broadcast"},
            {**later, "to": "c@example.com"},
        ]}),
        content_type="application/json",
    )
    assert batch.status_code == 200 and not batch.json()["errors"], batch.content
    cancelled = api.post(f"/api/v1/emails/{batch.json()['data'][0]['email_id']}/cancel")
    assert cancelled.status_code == 200, cancelled.content
    now = api.post(
        "/api/v1/emails",
        json.dumps({"to": "d@example.com", "subject": "Now", "text": "x", "stream": "broadcast"}),
        content_type="application/json",
    )
    assert now.status_code == 202, now.content
    assert wait_for_status(now.json()["email_id"]).status == "sent", celery_worker.log()[-3000:]

    def delta(samples: dict, name: str, **labels) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    changes = "emailsvc_recipient_status_changes_total"
    after = wait_until(
        lambda: (lambda s: s if delta(s, changes, status="sent", stream="broadcast") >= 1 else None)(scrape(client)),
        timeout=15, interval=0.2,
    )
    assert after, celery_worker.log()[-3000:]
    accepted = "emailsvc_emails_accepted_total"
    # broadcast's default priority is low (emailsvc.streams)
    assert delta(after, accepted, priority="low", endpoint="batch", stream="broadcast") == 2
    assert delta(after, accepted, priority="normal", endpoint="batch", stream="transactional") == 1
    assert delta(after, accepted, priority="low", endpoint="single", stream="broadcast") == 1
    assert delta(after, accepted, priority="low", endpoint="single", stream="transactional") == 0
    assert delta(after, changes, status="sent", stream="broadcast") == 1
    assert delta(after, changes, status="sent", stream="transactional") == 0
    assert delta(after, changes, status="cancelled", stream="broadcast") == 1
    assert delta(after, changes, status="cancelled", stream="transactional") == 0
    # Every install's streams are shown from the start, at 0 until something happens.
    assert (changes, frozenset({("status", "complained"), ("stream", "broadcast")})) in after


# --- read at scrape time ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_paused_domains_and_the_drain_report_are_read_at_scrape_time(client, token, fresh):
    sending_pause(domain="bounces.example", cause="operator", reason="metrics test")
    sending_pause(domain="news.example", stream="broadcast", cause="breaker", reason="metrics test")
    drain_report_save({"at": time.time() - 3, "waiting": 7, "in_flight": 2, "lag_seconds": 42.5, "received": 10})
    try:
        samples = scrape(client)
    finally:
        sending_resume(domain="bounces.example", by="metrics test")
        sending_resume(domain="news.example", by="metrics test")

    assert value(samples, "emailsvc_sending_paused", domain="bounces.example", stream="") == 1
    assert value(samples, "emailsvc_sending_paused", domain="news.example", stream="broadcast") == 1
    assert ("emailsvc_sending_paused", frozenset({("domain", "news.example"), ("stream", "")})) not in samples
    assert value(samples, "emailsvc_drain_lag_seconds") == 42.5
    assert value(samples, "emailsvc_drain_waiting_events") == 7
    assert value(samples, "emailsvc_drain_in_flight_events") == 2
    assert value(samples, "emailsvc_drain_last_run_age_seconds") >= 3
    assert {value(samples, "emailsvc_metrics_source_up", source=s) for s in ("broker", "drain", "breaker")} == {1}

    resumed = scrape(client)
    assert not [key for key in resumed if key[0] == "emailsvc_sending_paused"]


def test_the_tracking_hits_buffer_is_read_at_scrape_time(client, token, fresh):
    from core.redisclient import redis_client
    from tracking.hits import DEAD_HITS_STREAM, HITS_STREAM

    redis = redis_client()
    redis.delete(HITS_STREAM, DEAD_HITS_STREAM)
    empty = scrape(client)
    assert value(empty, "emailsvc_tracking_hits_waiting") == 0 and value(empty, "emailsvc_tracking_hits_dead") == 0
    assert not [key for key in empty if key[0] == "emailsvc_tracking_hits_oldest_age_seconds"]  # none waits: no age

    ten_seconds_ago = int((time.time() - 10) * 1000)
    try:
        for index in range(3):  # as tracking.hits.hit_record buffers them, at a chosen time
            redis.xadd(HITS_STREAM, {"k": "o", "m": "1", "r": "1", "id": f"h{index}"}, id=f"{ten_seconds_ago}-{index}")
        redis.xadd(DEAD_HITS_STREAM, {"k": "o", "m": "1", "r": "1", "id": "dead"})
        samples = scrape(client)
    finally:
        redis.delete(HITS_STREAM, DEAD_HITS_STREAM)
    assert value(samples, "emailsvc_tracking_hits_waiting") == 3
    assert value(samples, "emailsvc_tracking_hits_dead") == 1
    assert 10 <= value(samples, "emailsvc_tracking_hits_oldest_age_seconds") < 60
    assert value(samples, "emailsvc_metrics_source_up", source="hits") == 1


def test_a_source_that_does_not_answer_never_holds_the_scrape(monkeypatch):
    release = threading.Event()
    reads = []

    def stuck():
        reads.append(1)
        release.wait(10)
        return {"high": 1, "normal": 2, "low": 3}

    source = metrics.ScrapeSource("broker", stuck)
    monkeypatch.setattr(metrics, "SOURCES", (source,))
    monkeypatch.setattr(metrics, "SCRAPE_READ_TIMEOUT_SECONDS", 0.2)
    collector = metrics.ScrapeTimeCollector()

    def collect() -> dict:
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in collector.collect()
            for sample in family.samples
        }

    started = time.monotonic()
    first = collect()
    second = collect()  # the first read is still under way: no second one beside it
    assert time.monotonic() - started < 1.5
    assert value(first, "emailsvc_metrics_source_up", source="broker") == 0
    assert value(second, "emailsvc_metrics_source_up", source="broker") == 0
    assert not any(name == "emailsvc_delivery_queue_depth" for name, _ in first)
    assert len(reads) == 1

    release.set()
    assert wait_until(lambda: source.pending is None, timeout=5)
    answered = collect()  # cached: answers at once, without reading again
    assert value(answered, "emailsvc_metrics_source_up", source="broker") == 1
    assert value(answered, "emailsvc_delivery_queue_depth", priority="low") == 3
    assert len(reads) == 1


# --- who may scrape ----------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_refuses_a_request_without_the_token(client, token):
    missing = client.get("/metrics")
    wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer not-the-metrics-token-at-all")
    basic = client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}")
    right = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    for refused in (missing, wrong, basic):
        assert refused.status_code == 401
        assert refused["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert b"emailsvc_" not in refused.content
    assert right.status_code == 200 and b"# HELP emailsvc_emails_accepted_total" in right.content


@pytest.mark.django_db
def test_metrics_are_off_without_a_token_unless_public(client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_PUBLIC = False
    off = client.get("/metrics")
    assert off.status_code == 403 and b"METRICS_TOKEN" in off.content

    settings.METRICS_PUBLIC = True
    assert client.get("/metrics").status_code == 200


def test_metrics_answers_get_only(client, token):
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


@pytest.mark.django_db
def test_a_scraper_that_asks_for_openmetrics_gets_it(client, token):
    response = client.get(
        "/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0"
    )

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.endswith(b"# EOF\n") and response.content.count(b"# EOF") == 1


# --- the example dashboard -----------------------------------------------------------------


@pytest.mark.django_db
def test_the_grafana_dashboard_graphs_metrics_that_exist(client, token):
    dashboard = json.loads((BASE_DIR / "deploy" / "grafana-dashboard.json").read_text())
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    exposed = set()
    for family in text_string_to_metric_families(response.content.decode()):  # with or without samples now
        exposed |= {family.name, *(sample.name for sample in family.samples)}

    assert [source["name"] for source in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    expressions = []
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            expressions.append(target["expr"])
    graphed = set(re.findall(r"\bemailsvc_[a-z_]+", " ".join(expressions)))
    assert graphed and graphed <= exposed, graphed - exposed
    for shown in ("status=\"sent\"", "emailsvc_delivery_errors_total", "bounced", "complained",
                  "emailsvc_delivery_queue_depth", "emailsvc_drain_lag_seconds", "emailsvc_rate_limit_wait_seconds",
                  "emailsvc_sending_paused"):
        assert any(shown in expression for expression in expressions), shown
