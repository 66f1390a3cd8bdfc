"""Input and output shapes of the templates API (SPEC §4 /templates).

Inputs only validate shape; sources (Jinja syntax, MJML, layouts) are checked
by the services, which answer `template_invalid` with the line.
"""

from rest_framework import serializers

from templates_app.errors import TemplateNotFound
from templates_app.models import TEMPLATE_NAME_PATTERN
from templates_app.rendering.compile import compiled_part
from templates_app.services import MAX_SOURCE_CHARS, PARTS, template_ref_parse


def _from_renamed(fields: dict) -> dict:
    """The sender field is "from" in the API, like the send API ("from" is a
    Python keyword: the serializer attribute is from_email, its source too)."""
    return {("from" if name == "from_email" else name): field for name, field in fields.items()}


class _StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, like the send API."""

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["The body must be a JSON object."]})
        errors, value = {}, None
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as error:
            errors = dict(error.detail)
        for name in sorted(set(data) - set(self.fields)):
            errors[name] = [serializers.ErrorDetail("Unknown field.", code="invalid")]
        if errors:
            raise serializers.ValidationError(errors)
        return value


def _source(max_length: int = MAX_SOURCE_CHARS, **kwargs):
    return serializers.CharField(required=False, allow_blank=True, trim_whitespace=False, max_length=max_length, **kwargs)


class _ContentFields(_StrictSerializer):
    subject = serializers.CharField(max_length=2000, trim_whitespace=False, help_text="Jinja; not escaped")
    html = _source(help_text="Jinja; autoescaped. Leave out when giving mjml")
    text = _source(help_text="Jinja; not escaped. Leave out to generate it from the html")
    mjml = _source(help_text="MJML with Jinja inside; compiled to the html on save")
    from_email = _source(500, source="from_email", help_text="Default sender address; may contain variables")
    from_name = _source(500, help_text="Default sender name; may contain variables")
    reply_to = _source(500, help_text="Default reply-to address; may contain variables")
    layout = _source(120, help_text="A template to wrap the html in: 'name' (its latest version) or 'name@3'")
    sample_data = serializers.DictField(required=False, help_text="Data for previews and test emails")

    def get_fields(self):
        return _from_renamed(super().get_fields())

    def validate_layout(self, value):
        if value.strip():
            try:
                template_ref_parse(value)
            except TemplateNotFound as error:
                raise serializers.ValidationError(error.detail) from None
        return value


class TemplateCreateInputSerializer(_ContentFields):
    name = serializers.RegexField(
        TEMPLATE_NAME_PATTERN,
        max_length=100,
        error_messages={"invalid": "1-100 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit."},
    )


class TemplateUpdateInputSerializer(_ContentFields):
    """PUT: a new version. Fields left out keep the latest version's value."""

    def get_fields(self):
        fields = super().get_fields()
        fields["subject"].required = False
        return fields


class TemplateRenderInputSerializer(_StrictSerializer):
    data = serializers.DictField(required=False, help_text="template_data; defaults to the version's sample_data")
    version = serializers.IntegerField(required=False, min_value=1, help_text="Defaults to the latest version")


def version_variables(version) -> list[str]:
    """The top-level variables a version's parts use (what template_data should give)."""
    names: set[str] = set()
    for field, _part, html in PARTS:
        source = getattr(version, field)
        if source:
            names |= compiled_part(source, html=html, key=(version.pk, field)).variables
    return sorted(names)


class TemplateVersionOutputSerializer(serializers.Serializer):
    name = serializers.CharField(source="template.name")
    version = serializers.IntegerField()
    subject = serializers.CharField()
    html = serializers.CharField()
    text = serializers.CharField()
    mjml = serializers.CharField()
    from_email = serializers.CharField(source="from_email")
    from_name = serializers.CharField()
    reply_to = serializers.CharField()
    layout = serializers.CharField()
    sample_data = serializers.DictField()
    variables = serializers.SerializerMethodField(help_text="Top-level variables the parts use")
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField()

    def get_fields(self):
        return _from_renamed(super().get_fields())

    def get_variables(self, version) -> list[str]:
        return version_variables(version)


class TemplateOutputSerializer(TemplateVersionOutputSerializer):
    """A template: its latest version and when the template was created / updated."""

    template_created_at = serializers.DateTimeField(source="template.created_at")
    updated_at = serializers.DateTimeField(source="template.updated_at")


class TemplateSummaryOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.IntegerField(source="latest_version")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class TemplateVersionSummaryOutputSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    subject = serializers.CharField()
    layout = serializers.CharField()
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField()


class RenderedOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.IntegerField()
    subject = serializers.CharField()
    html = serializers.CharField(allow_blank=True)
    text = serializers.CharField(allow_blank=True)
    from_email = serializers.CharField(source="from_email", allow_blank=True)
    from_name = serializers.CharField(allow_blank=True)
    reply_to = serializers.CharField(allow_blank=True)

    def get_fields(self):
        return _from_renamed(super().get_fields())
