"""Tracking tokens: what the service signs reads back; nothing else does."""

from core.tracking_tokens import CLICK, OPEN, TrackingToken, token_read, token_sign


def test_a_signed_token_reads_back_as_what_was_signed():
    click = TrackingToken(CLICK, 12, 34, 5)
    opened = TrackingToken(OPEN, 12, 34)
    assert token_read(token_sign(click), kind=CLICK) == click
    assert token_read(token_sign(opened), kind=OPEN) == opened


def test_a_token_is_url_safe_and_unlike_its_neighbours():
    tokens = {token_sign(TrackingToken(CLICK, 1, 1, index)) for index in range(50)}
    assert len({token.split("~")[1] for token in tokens}) == 50
    assert all(all(c.isalnum() or c in "-_.~" for c in token) for token in tokens)


def test_edited_foreign_and_other_kind_tokens_are_refused(settings):
    token = token_sign(TrackingToken(CLICK, 12, 34, 5))
    payload, signature = token.split("~")
    assert token_read(f"c.12.34.6~{signature}", kind=CLICK) is None
    assert token_read(f"{payload}~{signature[:-2]}", kind=CLICK) is None
    assert token_read(token, kind=OPEN) is None
    assert token_read("c.12.34.5", kind=CLICK) is None
    assert token_read("x" * 500, kind=CLICK) is None
    settings.SECRET_KEY = "another-deployment-secret"
    assert token_read(token, kind=CLICK) is None
