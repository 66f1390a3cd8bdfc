"""Errors of stored templates, in the project's one hierarchy (core.errors).

They leave the API through `core.responses.api_exception_handler` like every
other error, so a send naming a bad template answers 400 with a stable code.
"""

from core.errors import Conflict, ValidationFailed


class TemplateNotFound(ValidationFailed):
    """A send names a template (or a version of it) that does not exist.

    A ValidationFailed, not a NotFound: on `POST /emails` it is a fault of the
    request body (400), not of the URL. The templates API answers 404 instead.
    """

    code = "template_not_found"
    default_detail = "The template does not exist."


class TemplateInvalid(ValidationFailed):
    """A template source refused on save: Jinja syntax, MJML, a bad layout."""

    code = "template_invalid"
    default_detail = "The template is invalid."


class TemplateRenderError(ValidationFailed):
    """Rendering failed: a missing variable, a refused operation, a limit.

    `fields` maps each template part (subject, html, text, from, from_name,
    reply_to) to its problems; `variables` lists every missing variable.
    """

    code = "template_render_error"
    default_detail = "The template could not be rendered."

    def __init__(self, detail: str | None = None, *, fields: dict[str, list[str]] | None = None, variables=()):
        super().__init__(detail, fields=fields)
        self.variables: list[str] = list(variables)


class TemplateExists(Conflict):
    code = "template_exists"
    default_detail = "A template with this name already exists."


class TemplateInUse(Conflict):
    code = "template_in_use"
    default_detail = "Scheduled or queued emails still use this template."
