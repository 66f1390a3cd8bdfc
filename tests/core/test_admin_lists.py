"""Admin lists given a NUL in a filter or a parameter name (PostgreSQL text
cannot hold one): an ordinary 400 page, never a 500; every list of the admin,
with a real logged-in operator. The search drops a NUL and answers."""

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.urls import reverse

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client):
    client.force_login(get_user_model().objects.create_superuser("ops", "ops@example.com", "pw"))
    return client


def _filter_parameters(model_admin) -> list[str]:
    """The query parameters of a list's filters, as its filter links write them."""
    names = []
    for entry in model_admin.list_filter:
        if isinstance(entry, str):
            names += [entry, f"{entry}__exact"]
        elif isinstance(entry, tuple):
            names += [f"{entry[0]}__isnull"]
        else:
            names.append(entry.parameter_name)
    return names


LISTS = [
    (model._meta.label, f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist",
     _filter_parameters(model_admin))
    for model, model_admin in admin.site._registry.items()
]


@pytest.mark.parametrize(("label", "url_name", "filters"), LISTS, ids=[label for label, _, _ in LISTS])
def test_a_nul_in_any_filter_of_any_admin_list_is_a_400_page(operator, label, url_name, filters):
    url = reverse(url_name)
    queries = [{name: value} for name in filters for value in ("\x00", "a\x00b")]
    queries += [{"o": "\x00"}, {"p": "\x00"}, {"a\x00": "1"}, {"q\x00": "1"}]
    for query in queries:
        response = operator.get(url, query)

        assert response.status_code == 400, (label, query, response.status_code)
        assert b"Bad Request" in response.content, (label, query)
    assert operator.get(url).status_code == 200, label
    assert operator.get(url, {"q": "a\x00b"}).status_code == 200, label  # the search drops a NUL
    for name in filters:  # the same filters without the NUL still answer
        assert operator.get(url, {name: "x"}).status_code in (200, 302), (label, name)


def test_the_console_pages_refuse_a_nul_too(operator):
    for path in ("/admin/?e=%00", "/admin/address/?q=jane@example.com&x=%00", "/admin/operations/sending/?a%00=1"):
        response = operator.get(path)

        assert response.status_code == 400, path
