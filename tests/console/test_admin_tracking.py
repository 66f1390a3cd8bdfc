"""The admin shows what happened to an email and to an address."""

import pytest

from tests.tracking.scenario import drain, event, sent_message

pytestmark = pytest.mark.django_db


def test_message_page_shows_its_event_timeline(admin_client, api, events_queue):
    message = sent_message(api, ["timeline@example.com"])
    events_queue.put(event(message, "Delivery", seconds=1), event(message, "Bounce", seconds=2, bounce_type="Transient"))
    drain()

    page = admin_client.get(f"/admin/emailsvc/message/{message.pk}/change/").content.decode()

    assert "timeline@example.com" in page
    assert "delivery" in page and "bounce" in page and "Transient" in page


def test_event_list_finds_an_address_history(admin_client, api, events_queue):
    first = sent_message(api, ["history@example.com"])
    second = sent_message(api, ["history@example.com", "other@example.com"])
    events_queue.put(event(first, "Delivery"), event(second, "Delivery", ["history@example.com"]), event(second, "Delivery", ["other@example.com"]))
    drain()

    page = admin_client.get("/admin/tracking/engagementevent/", {"q": "history@example.com"}).content.decode()

    assert page.count("history@example.com") >= 2
    assert "other@example.com" not in page
    assert admin_client.get("/admin/tracking/engagementevent/", {"event_type__exact": "delivery"}).status_code == 200
