"""Helpers for template tests: templates saved through the services, and API
clients per permission."""

import pytest

from emailsvc.models import ApiKey
from templates_app.models import TemplateVersion
from templates_app.services import template_create


@pytest.fixture
def make_template(db):
    """Save a template (version 1) through the service; returns its TemplateVersion."""

    def make(name: str = "welcome", **fields) -> TemplateVersion:
        fields.setdefault("subject", "Hello")
        if not any(fields.get(part) for part in ("html", "text", "mjml")):
            fields["html"] = "<p>Hi {{ name }}</p>"
        return template_create(name=name, data=fields, created_by="tests")

    return make


@pytest.fixture
def full_api(make_client):
    return make_client(ApiKey.Permission.FULL)


@pytest.fixture
def read_api(make_client):
    return make_client(ApiKey.Permission.READ_ONLY)
