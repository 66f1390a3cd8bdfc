"""Template actions: save a new version, delete, resolve a reference, render.

The send pipeline calls three functions here (and nothing else):

    name, version = template_ref_parse("welcome@3")          # ("welcome", 3); "welcome" → ("welcome", None)
    template = template_resolve(name=name, version=version)   # TemplateVersion, or TemplateNotFound (400)
    rendered = template_render(version=template, data=data)   # RenderedTemplate, or TemplateRenderError (400)

Reuse one resolved TemplateVersion for every item of a batch that names the
same reference: its layout chain is cached on it, and its compiled parts are
cached per process by (version pk, part), so a batch of 500 parses it once.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import F
from jinja2.exceptions import TemplateSyntaxError
from markupsafe import Markup

from core.errors import NotFound
from templates_app.errors import TemplateExists, TemplateInUse, TemplateInvalid, TemplateNotFound, TemplateRenderError
from templates_app.models import TEMPLATE_NAME_PATTERN, Template, TemplateVersion
from templates_app.rendering.compile import CompiledPart, compiled_part, syntax_problem
from templates_app.rendering.limits import RenderLimits
from templates_app.rendering.mjml import compile_mjml
from templates_app.rendering.postprocess import html_to_text, inline_css
from templates_app.rendering.render import Render, single_line
from templates_app.selectors import templates_using_layout

# A layout may itself have a layout; deeper chains are refused as likely mistakes.
MAX_LAYOUT_DEPTH = 5
MAX_SOURCE_CHARS = 1_000_000
MAX_SAMPLE_DATA_BYTES = 256 * 1024

_NAME = re.compile(TEMPLATE_NAME_PATTERN)
_REF = re.compile(r"^(?P<name>[^@]+)(?:@(?P<version>[0-9]+))?$")

# The parts of a version, by model field, with the name the API uses for each
# and whether it renders as HTML (autoescaped).
PARTS = (
    ("subject", "subject", False),
    ("html", "html", True),
    ("text", "text", False),
    ("from_email", "from", False),
    ("from_name", "from_name", False),
    ("reply_to", "reply_to", False),
)
CONTENT_FIELDS = ("subject", "html", "text", "mjml", "from_email", "from_name", "reply_to", "layout", "sample_data")
API_NAMES = {"from_email": "from"}


@dataclass(frozen=True)
class RenderedTemplate:
    """A version rendered with data. Empty strings mean "the template has no default"."""

    subject: str
    html: str
    text: str
    from_email: str
    from_name: str
    reply_to: str


# --- References -------------------------------------------------------------


def template_ref_parse(ref: str) -> tuple[str, int | None]:
    """`"welcome@3"` → `("welcome", 3)`; `"welcome"` → `("welcome", None)` (the latest).

    Raises TemplateNotFound for anything that cannot name a template.
    """
    match = _REF.match(ref.strip()) if isinstance(ref, str) else None
    if not match or not _NAME.match(match["name"]) or (match["version"] is not None and int(match["version"]) < 1):
        raise TemplateNotFound(
            f"'{ref}' does not name a template: use a template name, or name@version to pin a version."
        )
    return match["name"], int(match["version"]) if match["version"] is not None else None


def template_resolve(*, name: str, version: int | None = None) -> TemplateVersion:
    """The version a send uses: `version`, or the latest when None.

    Raises TemplateNotFound (400 `template_not_found`) when the template or the
    version does not exist.
    """
    versions = TemplateVersion.objects.select_related("template").filter(template__name=name)
    found = versions.filter(version=F("template__latest_version") if version is None else version).first()
    if found is None:
        if version is not None and Template.objects.filter(name=name).exists():
            raise TemplateNotFound(f"Template '{name}' has no version {version}.")
        raise TemplateNotFound(f"There is no template '{name}'.")
    return found


# --- Rendering --------------------------------------------------------------


def _compiled(version: TemplateVersion, field: str, *, html: bool, part: str, render_error: bool = True) -> CompiledPart:
    source = getattr(version, field)
    try:
        # Unsaved versions (previews of a form) are compiled without caching.
        return compiled_part(source, html=html, key=(version.pk, field) if version.pk else None)
    except (TemplateSyntaxError, RecursionError) as error:
        # Stored sources were checked on save; this is an engine change or a preview.
        message = f"line {error.lineno}: {error.message}" if isinstance(error, TemplateSyntaxError) else str(error)
        raise TemplateRenderError(f"{part}: {message}", fields={part: [message]}) from None


def _layout_chain(version: TemplateVersion, *, error=TemplateRenderError, field: str = "html") -> list[TemplateVersion]:
    """The layouts wrapping `version`, innermost first. A missing layout, a cycle
    or a chain deeper than MAX_LAYOUT_DEPTH raises `error`."""
    chain: list[TemplateVersion] = []
    seen = [version.template.name]
    ref = version.layout
    while ref:
        try:
            name, pinned = template_ref_parse(ref)
        except TemplateNotFound as problem:
            raise error(f"layout: {problem.detail}", fields={"layout": [problem.detail]}) from None
        if name in seen:
            message = f"Layout cycle: {' → '.join(seen + [name])}."
            raise error(message, fields={"layout": [message]})
        try:
            layout = template_resolve(name=name, version=pinned)
        except TemplateNotFound as problem:
            message = f"Layout '{ref}': {problem.detail}"
            raise error(message, fields={"layout": [message]}) from None
        if not layout.html:
            message = f"Layout '{ref}' has no html to wrap the content in."
            raise error(message, fields={"layout": [message]})
        chain.append(layout)
        seen.append(name)
        if len(chain) > MAX_LAYOUT_DEPTH:
            message = f"Layouts nested more than {MAX_LAYOUT_DEPTH} deep."
            raise error(message, fields={"layout": [message]})
        ref = layout.layout
    return chain


def template_render(*, version: TemplateVersion, data: dict) -> RenderedTemplate:
    """Render every part of `version` with `data` (the caller's template_data).

    HTML is autoescaped, then wrapped in the version's layouts, then has its
    CSS inlined; without a text part, one is generated from the HTML. Subject
    and from_name come back as one line. Variables come only from `data`.

    Raises TemplateRenderError (400 `template_render_error`): every missing
    variable at once (in `variables`, and per part in `fields`), a refused
    operation, or a size / time / iteration limit.
    """
    if not isinstance(data, dict):
        message = "template_data must be a JSON object."
        raise TemplateRenderError(message, fields={"template_data": [message]})
    chain = getattr(version, "_layout_chain", None)
    if chain is None:
        chain = version._layout_chain = _layout_chain(version)
    limits = RenderLimits.from_settings()
    render = Render(data, limits=limits)
    out = {}
    for field, part, html in PARTS:
        source = getattr(version, field)
        out[field] = render.part(part, _compiled(version, field, html=html, part=part), data) if source else ""
    html, text = out["html"], out["text"]
    for layout in chain:
        label = f"layout '{layout.template.name}'"
        # By source, not output: a part that failed on a missing variable is
        # still wrapped, so the layout's own missing variables are found too.
        if version.html:
            compiled = _compiled(layout, "html", html=True, part="html")
            if "content" not in compiled.variables:
                message = f"The {label} html has no {{{{ content }}}} to put the template's html in."
                raise TemplateRenderError(message, fields={"layout": [message]})
            html = render.part("html", compiled, {**data, "content": Markup(html)}, label=label)
        if version.text and layout.text:
            compiled = _compiled(layout, "text", html=False, part="text")
            if "content" in compiled.variables:  # a layout text without {{ content }} leaves the text alone
                text = render.part("text", compiled, {**data, "content": text}, label=label)
    render.finish()
    if html:
        html = inline_css(html)
        if len(html) > limits.max_bytes:
            message = f"The html is larger than {limits.max_bytes} characters once CSS is inlined."
            raise TemplateRenderError(message, fields={"html": [message]})
        if not text:
            text = html_to_text(html)
    return RenderedTemplate(
        subject=single_line(out["subject"]),
        html=html,
        text=text,
        from_email=out["from_email"].strip(),
        from_name=single_line(out["from_name"]),
        reply_to=out["reply_to"].strip(),
    )


# --- Saving -----------------------------------------------------------------


def _invalid(field: str, message: str) -> TemplateInvalid:
    name = API_NAMES.get(field, field)
    return TemplateInvalid(f"{name}: {message}", fields={name: [message]})


def template_content_check(*, name: str, data: dict) -> dict:
    """Validate a version's content and prepare it for storing.

    `data` has the model's content fields (subject, html, text, mjml,
    from_email, from_name, reply_to, layout, sample_data); missing ones are
    empty. Checks Jinja syntax of every part (with its line), compiles MJML to
    html, refuses a missing layout or a layout cycle. Returns the fields to
    store. Raises TemplateInvalid (400 `template_invalid`); its `fields` use the
    API's names ("from" for from_email). Writes nothing.
    """
    content = {field: data.get(field) or "" for field in CONTENT_FIELDS}
    content["sample_data"] = data.get("sample_data") or {}
    if not _NAME.match(name or ""):
        raise _invalid("name", "A template name is 1-100 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit.")
    if not content["subject"].strip():
        raise _invalid("subject", "A subject is required.")
    if not (content["html"].strip() or content["text"].strip() or content["mjml"].strip()):
        raise TemplateInvalid(
            "Give html, text or mjml.", fields={part: ["Give html, text or mjml."] for part in ("html", "text", "mjml")}
        )
    if content["html"].strip() and content["mjml"].strip():
        raise _invalid("mjml", "Give html or mjml, not both: the html is compiled from the mjml.")
    for field in ("subject", "html", "text", "mjml"):
        if len(content[field]) > MAX_SOURCE_CHARS:
            raise _invalid(field, f"At most {MAX_SOURCE_CHARS} characters.")
    if not isinstance(content["sample_data"], dict):
        raise _invalid("sample_data", "sample_data must be a JSON object.")
    if len(json.dumps(content["sample_data"])) > MAX_SAMPLE_DATA_BYTES:
        raise _invalid("sample_data", f"sample_data may be at most {MAX_SAMPLE_DATA_BYTES} bytes of JSON.")

    if content["mjml"].strip():
        # Jinja first, on the MJML source, so its line numbers are the author's.
        if problem := syntax_problem(content["mjml"], html=True):
            raise _invalid("mjml", problem)
        content["html"] = compile_mjml(content["mjml"])
        if problem := syntax_problem(content["html"], html=True):
            raise _invalid("mjml", f"after MJML compilation, {problem}")
    for field, _part, html in PARTS:
        if content[field] and (problem := syntax_problem(content[field], html=html)):
            raise _invalid(field, problem)
    for field in ("from_email", "reply_to"):
        value = content[field].strip()
        if value and "{" not in value:  # no variables: it can be checked now
            try:
                validate_email(value)
            except DjangoValidationError:
                raise _invalid(field, f"'{value}' is not a valid email address.") from None
    if content["layout"]:
        content["layout"] = content["layout"].strip()
        unsaved = TemplateVersion(layout=content["layout"], template=Template(name=name))
        for layout in _layout_chain(unsaved, error=TemplateInvalid):
            if "content" not in compiled_part(layout.html, html=True, key=(layout.pk, "html")).variables:
                raise _invalid("layout", f"Layout '{layout.template.name}' has no {{{{ content }}}} in its html.")
    return content


def template_create(*, name: str, data: dict, created_by: str = "") -> TemplateVersion:
    """Create a template with its first version (see template_content_check for
    `data`). Raises TemplateInvalid, TemplateExists (409 `template_exists`)."""
    content = template_content_check(name=name, data=data)
    if Template.objects.filter(name=name).exists():
        raise TemplateExists(f"A template named '{name}' already exists; PUT /templates/{name} saves a new version.")
    try:
        with transaction.atomic():
            template = Template.objects.create(name=name, latest_version=1)
            version = TemplateVersion.objects.create(template=template, version=1, created_by=created_by[:300], **content)
    except IntegrityError:
        raise TemplateExists(f"A template named '{name}' already exists.") from None
    return version


def template_update(*, name: str, data: dict, created_by: str = "") -> TemplateVersion:
    """Save a new version of `name`; older versions are never changed.

    Fields left out of `data` keep their value from the latest version; giving
    html (or mjml) replaces both html and mjml. Raises NotFound (404
    `template_not_found`), TemplateInvalid.
    """
    with transaction.atomic():
        # The row lock orders concurrent saves: each gets the next number.
        template = Template.objects.select_for_update().filter(name=name).first()
        if template is None:
            raise NotFound(f"There is no template '{name}'.", code="template_not_found")
        latest = TemplateVersion.objects.get(template=template, version=template.latest_version)
        merged = {field: getattr(latest, field) for field in CONTENT_FIELDS}
        if "html" in data or "mjml" in data:
            merged["html"], merged["mjml"] = data.get("html") or "", data.get("mjml") or ""
        elif merged["mjml"]:
            merged["html"] = ""  # compiled again from the mjml
        merged.update({field: value for field, value in data.items() if field in CONTENT_FIELDS and field not in ("html", "mjml")})
        content = template_content_check(name=name, data=merged)
        version = TemplateVersion.objects.create(
            template=template, version=template.latest_version + 1, created_by=created_by[:300], **content
        )
        template.latest_version = version.version
        template.save(update_fields=["latest_version", "updated_at"])
    return version


def template_delete(*, name: str, emails_pending: Callable[..., int]) -> None:
    """Delete a template and all its versions.

    Refused with TemplateInUse (409 `template_in_use`) while scheduled or queued
    emails were submitted with it (`emails_pending(name=name)` counts them: the
    emails are the sending app's, emailsvc.selectors.template_pending_messages), or while another template uses it as its
    layout. Raises NotFound (404 `template_not_found`).
    """
    with transaction.atomic():
        template = Template.objects.select_for_update().filter(name=name).first()
        if template is None:
            raise NotFound(f"There is no template '{name}'.", code="template_not_found")
        pending = emails_pending(name=name)
        if pending:
            raise TemplateInUse(
                f"{pending} scheduled or queued email{'s' if pending > 1 else ''} use template '{name}'; "
                "delete it once they are sent or cancelled."
            )
        wrapped = templates_using_layout(name=name)
        if wrapped:
            raise TemplateInUse(f"Template '{name}' is the layout of: {', '.join(wrapped)}.")
        template.delete()


# --- Shipped examples -------------------------------------------------------

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# Layouts first: a template's layout must exist when it is saved.
EXAMPLE_NAMES = ("base-layout", "welcome", "password-reset", "invite")
_EXAMPLE_FILES = {"body.html": "html", "body.txt": "text", "body.mjml": "mjml"}


def template_examples_load(*, directory: Path = EXAMPLES_DIR) -> dict[str, bool]:
    """Create the shipped example templates that do not exist yet.

    Idempotent: a template of that name, edited or not, is left alone. Returns
    {name: created}. Raises TemplateInvalid if an example is broken.
    """
    results = {}
    for name in EXAMPLE_NAMES:
        if Template.objects.filter(name=name).exists():
            results[name] = False
            continue
        folder = directory / name
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        data = {
            "subject": meta["subject"],
            "from_email": meta.get("from", ""),
            "from_name": meta.get("from_name", ""),
            "reply_to": meta.get("reply_to", ""),
            "layout": meta.get("layout", ""),
            "sample_data": meta.get("sample_data", {}),
        }
        for filename, field in _EXAMPLE_FILES.items():
            if (folder / filename).exists():
                data[field] = (folder / filename).read_text(encoding="utf-8")
        try:
            template_create(name=name, data=data, created_by="load_example_templates")
            results[name] = True
        except TemplateExists:  # created meanwhile by another process
            results[name] = False
    return results
