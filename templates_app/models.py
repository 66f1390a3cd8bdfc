"""Stored templates and their immutable versions (SPEC §3 Template, issue 15).

A Template is a name and a pointer to its latest version number. Every save
writes a new TemplateVersion; versions are never updated, so a message that
records (template_name, template_version) can always be traced to the exact
sources it was rendered from. Writes go through templates_app.services.
"""

from django.core.validators import RegexValidator
from django.db import models

# No "@": "welcome@3" is the pinned-version syntax of a template reference.
TEMPLATE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,99}$"
template_name_validator = RegexValidator(
    TEMPLATE_NAME_PATTERN,
    "A template name is 1-100 characters of lower-case letters, digits and . _ - (starting with a letter or digit).",
)


class Template(models.Model):
    name = models.CharField(max_length=100, unique=True, validators=[template_name_validator])
    latest_version = models.PositiveIntegerField(default=0, help_text="Number of the newest version")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TemplateVersion(models.Model):
    """One saved state of a template. Immutable once written."""

    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    subject = models.TextField(help_text="Jinja source; not HTML-escaped")
    html = models.TextField(blank=True, help_text="Jinja source, autoescaped; the compiled output when mjml is set")
    text = models.TextField(blank=True, help_text="Jinja source; empty means: generated from the rendered HTML")
    mjml = models.TextField(blank=True, help_text="MJML source the html was compiled from, if any")
    from_email = models.CharField(max_length=500, blank=True, help_text="Default sender; may contain variables")
    from_name = models.CharField(max_length=500, blank=True, help_text="Default sender name; may contain variables")
    reply_to = models.CharField(max_length=500, blank=True, help_text="Default reply-to; may contain variables")
    layout = models.CharField(
        max_length=120, blank=True,
        help_text="Template wrapping the html ('base-layout' follows its latest version, 'base-layout@2' pins one)",
    )
    sample_data = models.JSONField(default=dict, blank=True, help_text="Data for previews and test emails")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=300, blank=True, help_text="API key or admin user that saved it")

    class Meta:
        ordering = ["template_id", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["template", "version"], name="template_version_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.template.name}@{self.version}"
