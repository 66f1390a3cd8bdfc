"""Every list of the API answers a bad `cursor`, a bad `limit` and an unknown
query parameter with a 400 naming it, never with a page the caller did not ask for."""

from base64 import b64encode

import pytest

from emailsvc.models import ApiKey


def _cursor(text: str) -> str:
    return b64encode(text.encode()).decode()


@pytest.fixture
def lists(make_client, make_template, settings) -> tuple:
    """A full key and the path of every list, each list holding a row."""
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    settings.WEBHOOK_ALLOW_HTTP = True
    client = make_client(ApiKey.Permission.FULL)
    make_template(name="welcome")
    webhook = client.post("/api/v1/webhooks", {"url": "http://127.0.0.1:9/hooks", "event_types": ["*"]}, format="json")
    assert webhook.status_code == 201, webhook.content
    added = client.post("/api/v1/suppressions", {"email": "jane@example.com"}, format="json")
    assert added.status_code == 201, added.content
    sent = client.post(
        "/api/v1/emails", {"to": "joe@example.com", "subject": "s", "text": "t", "group_id": "launch"}, format="json"
    )
    assert sent.status_code == 202, sent.content
    paths = [
        "/api/v1/emails",
        "/api/v1/groups/launch/emails",
        "/api/v1/suppressions",
        "/api/v1/templates",
        "/api/v1/templates/welcome/versions",
        "/api/v1/webhooks",
        f"/api/v1/webhooks/{webhook.json()['id']}/deliveries",
    ]
    return client, paths


BAD_CURSORS = [
    "garbage",
    "",  # DRF reads an empty cursor as the first page
    "!!!!",
    "cD0x===",  # "p=1" with extra padding
    _cursor("x=1"),  # a key DRF never writes
    _cursor("p=1&o=1"),  # DRF writes o before p
    _cursor("o=5000&p=1"),  # an offset past DRF's cutoff (DRF would cut it to 1000)
    _cursor("o=-1&p=1"),
    _cursor("r=2&p=1"),
    _cursor("p=1&p=2"),
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_a_cursor_the_list_did_not_give_is_400_invalid_cursor(lists, cursor):
    client, paths = lists
    for path in paths:
        response = client.get(path, {"cursor": cursor})

        assert response.status_code == 400, (path, response.content)
        body = response.json()
        assert (body["error"], list(body["fields"])) == ("invalid_cursor", ["cursor"]), (path, body)


def test_a_cursor_given_twice_is_400_naming_it(lists):
    client, paths = lists
    for path in paths:
        response = client.get(f"{path}?cursor={_cursor('p=1')}&cursor={_cursor('p=2')}")

        assert response.status_code == 400, path
        assert "cursor" in response.json()["fields"], path


def test_the_cursors_a_list_gives_are_followed(lists, make_template):
    client, paths = lists
    make_template(name="second")
    for path in ("/api/v1/templates", "/api/v1/suppressions"):
        if path == "/api/v1/suppressions":
            client.post(path, {"email": "joe@example.com"}, format="json")
        first = client.get(path, {"limit": 1}).json()
        second = client.get(first["next"])

        assert second.status_code == 200, second.content
        back = client.get(second.json()["previous"])
        assert back.status_code == 200 and back.json()["results"] == first["results"], path


@pytest.mark.parametrize("limit", ["0", "-1", "501", "100000", "ten", "1.5", "", " ", "0x10", "٣"])
def test_a_limit_that_is_not_1_to_500_is_400_naming_it(lists, limit):
    client, paths = lists
    for path in paths:
        response = client.get(path, {"limit": limit})

        assert response.status_code == 400, (path, response.content)
        body = response.json()
        assert body["error"] == "invalid_field" and "limit" in body["fields"], (path, body)


def test_a_limit_in_range_is_a_page_of_that_size(lists):
    client, paths = lists
    for path in paths:
        response = client.get(path, {"limit": "500"})

        assert response.status_code == 200, (path, response.content)


def test_unknown_parameters_are_400_naming_each_of_them(lists):
    client, paths = lists
    for path in paths:
        response = client.get(path, {"page": "2", "bogus": "1"})

        assert response.status_code == 400, (path, response.content)
        body = response.json()
        assert body["error"] == "invalid_field", (path, body)
        assert {"page", "bogus"} <= set(body["fields"]), (path, body)
        assert "page" in body["detail"], (path, body)
