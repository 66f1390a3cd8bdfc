"""The admin shows what happened to an email and to an address."""

import html

import pytest
from standardwebhooks import Webhook

from tests.tracking.scenario import drain, event, sent_message
from tests.webhook_receiver import local_receiver
from tracking.webhooks.endpoints import webhook_endpoint_create

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


def test_send_a_test_event_button_posts_a_signed_test_event_and_shows_the_answer(admin_client, settings):
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    with local_receiver() as receiver:
        endpoint, secret = webhook_endpoint_create(url=receiver.url(), event_types=["*"])
        page_url = f"/admin/tracking/webhookendpoint/{endpoint.pk}/change/"
        test_url = f"/admin/tracking/webhookendpoint/{endpoint.pk}/test/"
        receiver.answers.extend([204, 503])

        page = admin_client.get(page_url).content.decode()
        ok = html.unescape(admin_client.post(test_url, follow=True).content.decode())
        failed = html.unescape(admin_client.post(test_url, follow=True).content.decode())
        refused_get = admin_client.get(test_url)

    assert "Send a test event" in page and f'action="{test_url}"' in page
    first, second = receiver.posted
    assert Webhook(secret).verify(first.body, first.headers)["type"] == "webhook.test"
    assert f"Test event {first.headers['webhook-id']} sent: the receiver answered 204 in" in ok
    assert f"Test event {second.headers['webhook-id']} failed after" in failed
    assert "HTTP 503: receiver says no" in failed
    assert refused_get.status_code == 405 and len(receiver.posted) == 2
