"""The one-click unsubscribe settings are checked at start-up (config/unsubscribe_settings.py)."""

import environ
import pytest
from django.core.exceptions import ImproperlyConfigured

from config.unsubscribe_settings import unsubscribe_settings


def read(monkeypatch, **variables: str) -> dict:
    for name in ("PUBLIC_BASE_URL", "UNSUBSCRIBE_BASE_URL", "UNSUBSCRIBE_MAILTO", "UNSUBSCRIBE_TOKEN_DAYS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return unsubscribe_settings(environ.Env(), debug=False, provider="ses")


def test_a_mailto_goes_into_the_header_as_written(monkeypatch):
    found = read(monkeypatch, PUBLIC_BASE_URL="https://mail.example.com", UNSUBSCRIBE_MAILTO=" leave@example.com ")
    assert found["UNSUBSCRIBE_MAILTO"] == "leave@example.com"
    assert found["UNSUBSCRIBE_BASE_URL"] == "https://mail.example.com"


@pytest.mark.parametrize("mailto", ["désabonner@example.com", "leave me@example.com"])
def test_a_mailto_a_header_cannot_carry_stops_the_start(monkeypatch, mailto):
    with pytest.raises(ImproperlyConfigured, match="UNSUBSCRIBE_MAILTO"):
        read(monkeypatch, PUBLIC_BASE_URL="https://mail.example.com", UNSUBSCRIBE_MAILTO=mailto)


@pytest.mark.parametrize(
    "variables, words",
    [({"UNSUBSCRIBE_BASE_URL": "http://mail.example.com"}, "https://"), ({"UNSUBSCRIBE_TOKEN_DAYS": "30"}, "at least 60")],
)
def test_an_unsafe_link_setting_stops_the_start(monkeypatch, variables, words):
    with pytest.raises(ImproperlyConfigured, match=words):
        read(monkeypatch, **variables)
