"""Applying buffered hits (tracking.hits.hits_apply) on the real database and
Redis: one email is one copy for all its recipients, a hit applied twice
counts once, hits of unknown emails are kept, machine opens count only when
TRACKING_COUNT_MACHINE_OPENS says so."""

import json
import time
import uuid

import pytest

from core.redisclient import redis_client
from emailsvc.models import Message
from tracking.hits import HITS_STREAM, hits_apply
from tracking.models import EngagementEvent

HUMAN = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"


@pytest.fixture
def stream(db):
    client = redis_client()
    client.delete(HITS_STREAM)
    yield client
    client.delete(HITS_STREAM)


def sent(api, **fields) -> Message:
    body = {"to": "jane@example.com", "cc": "kim@example.com", "subject": "Hi", "html": "<p>Hi</p>",
            "track": {"opens": True, "clicks": True}, **fields}
    response = api.post("/api/v1/emails", json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.json()
    return Message.objects.get(email_id=response.json()["email_id"])


def put(stream, message_id: int, *, kind: str = "o", user_agent: str = HUMAN, url: str = "") -> dict:
    hit = {"k": kind, "m": message_id, "r": 1, "l": 0, "id": uuid.uuid4().hex, "at": f"{time.time():.3f}",
           "ua": user_agent, "ip": "198.51.100.7", "u": url}
    stream.xadd(HITS_STREAM, hit)
    return hit


def facts(message: Message) -> dict[str, tuple[str, int, int]]:
    return {r.email: (r.status, r.open_count, r.click_count) for r in message.recipients.all()}


def test_a_hit_counts_for_every_recipient_of_the_email_and_a_replay_counts_once(api, stream):
    message = sent(api)
    opened = put(stream, message.pk)
    put(stream, message.pk, kind="c", url="https://a.example/?q=1#f")
    result = hits_apply()
    assert (result.read, result.applied, result.duplicates) == (2, 4, 0)
    assert stream.xlen(HITS_STREAM) == 0
    assert facts(message) == {"jane@example.com": ("clicked", 1, 1), "kim@example.com": ("clicked", 1, 1)}
    click = EngagementEvent.objects.get(event_type="click", recipient_email="jane@example.com")
    assert click.detail["url"] == "https://a.example/?q=1#f" and click.source == "tracking"

    stream.xadd(HITS_STREAM, opened)  # the same hit again: an applier that died before its delete
    assert hits_apply().duplicates == 2
    assert facts(message) == {"jane@example.com": ("clicked", 1, 1), "kim@example.com": ("clicked", 1, 1)}


def test_hits_of_an_unknown_email_are_kept_as_unmatched(stream, db):
    put(stream, 987654321)
    assert hits_apply().unmatched == 1
    assert EngagementEvent.objects.filter(message__isnull=True, event_type="open", source="tracking").count() == 1


def test_machine_opens_count_when_the_setting_says_so(api, stream, settings):
    message = sent(api, cc=[])
    put(stream, message.pk, user_agent="Mozilla/5.0")
    hits_apply()
    assert facts(message) == {"jane@example.com": ("queued", 0, 0)}
    settings.TRACKING_COUNT_MACHINE_OPENS = True
    put(stream, message.pk, user_agent="YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html")
    hits_apply()
    assert facts(message) == {"jane@example.com": ("opened", 2, 0)}
