"""The pixel and link rewriting of emailsvc's own tracking, and SES's way: the
configuration set (the outbound email as built for each provider)."""

import re
from types import SimpleNamespace

from core.tracking_tokens import CLICK, OPEN, TrackingToken, token_read
from emailsvc.delivery.chunks import OutgoingRecipient
from emailsvc.providers import CONFIGURATION_SET_HEADER, build_email
from emailsvc.providers.ses import _AnymailBackend
from emailsvc.providers.tracking_links import html_tracked, track_requested, tracked_links

HTML = (
    "<html><BODY><A HREF=https://a.example/x?q=1&amp;r=2#f>a</A>"
    "<a title='x' href=\"http://b.example/\" >b</a>"
    '<a href="MAILTO:x@example.com">m</a><a href="tel:+1">t</a><a href="#top">#</a><a href="/relative">r</a>'
    '<a href="https://u.example/unsub">u</a><a data-emailsvc-notrack href="https://n.example/">n</a>'
    "<a name=anchor>no href</a></BODY></html>"
)
HEADERS = {"list-unsubscribe": "<mailto:u@example.com>, <https://u.example/unsub>"}


def test_only_web_links_that_are_neither_unsubscribe_nor_marked_are_tracked(settings):
    assert tracked_links(HTML, headers=HEADERS) == ["https://a.example/x?q=1&r=2#f", "http://b.example/"]
    settings.TRACKING_DOMAIN = "t.example.com"  # a bare host: https
    rewritten = html_tracked(HTML, message_id=7, recipient_id=9, headers=HEADERS, opens=True, clicks=True)
    hrefs = re.findall(r"""href=["']?([^"' >]+)""", rewritten, re.IGNORECASE)
    assert all(h.startswith("https://t.example.com/t/c/") for h in hrefs[:2])
    assert [token_read(h.rsplit("/", 1)[1], kind=CLICK).link_index for h in hrefs[:2]] == [0, 1]
    assert hrefs[2:] == ["MAILTO:x@example.com", "tel:+1", "#top", "/relative", "https://u.example/unsub", "https://n.example/"]
    assert "<a title='x' href=\"https://t.example.com/t/c/" in rewritten  # the rest of the tag as it was
    (pixel,) = re.findall(r'<img src="https://t\.example\.com/t/o/([^"]+)"', rewritten)
    assert token_read(pixel, kind=OPEN).recipient_id == 9
    assert rewritten.index("<img") < rewritten.index("</BODY>")


def test_opens_alone_add_the_pixel_and_leave_links_and_html_without_body_gets_it_at_the_end():
    rewritten = html_tracked("<p><a href='https://a.example/'>a</a></p>", message_id=1, recipient_id=1, headers={}, opens=True, clicks=False)
    assert rewritten.startswith("<p><a href='https://a.example/'>a</a></p><img src=")


def test_the_default_is_no_tracking():
    assert track_requested(None) == {"opens": False, "clicks": False}
    assert track_requested({"clicks": True}) == {"opens": False, "clicks": True}


def _message(provider: str, tracking: dict):
    return SimpleNamespace(
        pk=5, email_id="e-1", group_id=None, from_email="noreply@example.com", from_name="", subject="Hi",
        text="Hello", html=HTML, headers={}, tags=[], metadata={}, reply_to=[], provider=provider, tracking=tracking,
    )


def test_ses_tracks_through_its_tracking_configuration_set_and_keeps_the_html(settings):
    settings.SES_CONFIGURATION_SET = "plain"
    settings.SES_TRACKING_CONFIGURATION_SET = "tracked"
    recipients = [OutgoingRecipient(3, "jane@example.com", "", "to")]
    tracked = build_email(_message("ses", {"opens": True, "clicks": True}), recipients, [])
    assert tracked.extra_headers[CONFIGURATION_SET_HEADER] == "tracked"
    assert tracked.alternatives[0][0] == HTML
    payload = _AnymailBackend(fail_silently=False).build_message_payload(tracked, {})
    assert payload.params["ConfigurationSetName"] == "tracked"

    plain = build_email(_message("ses", {"opens": False, "clicks": False}), recipients, [])
    assert plain.extra_headers[CONFIGURATION_SET_HEADER] == "plain"
    # Untracked: the configuration set of every send (ANYMAIL's, from SES_CONFIGURATION_SET at start-up).
    assert "ConfigurationSetName" not in _AnymailBackend(fail_silently=False).build_message_payload(plain, {}).params


def test_other_providers_get_the_pixel_and_links_naming_the_first_recipient():
    recipients = [OutgoingRecipient(3, "jane@example.com", "", "to"), OutgoingRecipient(4, "kim@example.com", "", "cc")]
    email = build_email(_message("smtp", {"opens": True, "clicks": True}), recipients, [])
    html = email.alternatives[0][0]
    (pixel,) = re.findall(r'/t/o/([^"]+)"', html)
    assert token_read(pixel, kind=OPEN) == TrackingToken(OPEN, 5, 3, 0)
    assert email.body == "Hello"  # the text part is never touched
    assert build_email(_message("console", {}), recipients, []).alternatives[0][0] == HTML
