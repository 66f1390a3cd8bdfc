"""Reads of stored templates (the templates API and admin).

Lookups here answer 404 (`NotFound`, code template_not_found): they serve URLs.
The send path resolves templates with `services.template_resolve`, which
answers 400 instead.
"""

from django.db.models import F, Q, QuerySet

from core.errors import NotFound
from templates_app.models import Template, TemplateVersion


def _not_found(name: str, version: int | None = None) -> NotFound:
    what = f"Template '{name}' has no version {version}." if version is not None else f"There is no template '{name}'."
    return NotFound(what, code="template_not_found")


def template_list() -> QuerySet[Template]:
    return Template.objects.all()


def template_get(*, name: str) -> Template:
    template = Template.objects.filter(name=name).first()
    if template is None:
        raise _not_found(name)
    return template


def template_version_get(*, name: str, version: int | None = None) -> TemplateVersion:
    """A version of a template (the latest when `version` is None)."""
    versions = TemplateVersion.objects.select_related("template").filter(template__name=name)
    if version is None:
        found = versions.filter(version=F("template__latest_version")).first()
    else:
        found = versions.filter(version=version).first()
    if found is None:
        raise _not_found(name, version)
    return found


def template_versions(*, name: str) -> QuerySet[TemplateVersion]:
    """Every version of a template, newest first (404 if there is no such template)."""
    template = template_get(name=name)
    return TemplateVersion.objects.filter(template=template).select_related("template").order_by("-version")


def templates_using_layout(*, name: str) -> list[str]:
    """Names of the other templates whose latest version wraps itself in `name`."""
    return list(
        TemplateVersion.objects.filter(version=F("template__latest_version"))
        .filter(Q(layout=name) | Q(layout__startswith=f"{name}@"))
        .exclude(template__name=name)
        .order_by("template__name")
        .values_list("template__name", flat=True)
    )
