"""REST API of stored templates (SPEC §4 /templates). Each view: validate → one
service or selector → shape output. `read_only` keys read and render; `full`
keys write."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.fields import cursor_page_serializer
from core.pagination import BAD_PAGE_QUERY, CheckedCursorPagination, PageQuerySerializer
from core.responses import ErrorBodySerializer
from emailsvc.api.auth import CanRead, FullAccess
from emailsvc.selectors import template_pending_messages
from templates_app.errors import TemplateNotFound
from templates_app.models import TEMPLATE_NAME_PATTERN
from templates_app.rendering.compile import compiled_part
from templates_app.selectors import template_list, template_version_get, template_versions
from templates_app.services import (
    MAX_SOURCE_CHARS,
    PARTS,
    template_create,
    template_delete,
    template_ref_parse,
    template_render,
    template_update,
)

# Inputs only validate shape; sources (Jinja syntax, MJML, layouts) are checked
# by the services, which answer `template_invalid` with the line.


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


ERRORS = {
    401: OpenApiResponse(ErrorBodySerializer, description="Missing or invalid API key"),
    403: OpenApiResponse(ErrorBodySerializer, description="API key permission too low"),
}
NOT_FOUND = {404: OpenApiResponse(ErrorBodySerializer, description="template_not_found")}
INVALID = {
    400: OpenApiResponse(
        ErrorBodySerializer,
        description="template_invalid (Jinja syntax, MJML, layout: `fields` names the part and the line), "
        "missing_fields, invalid_field, invalid_json",
    )
}


class _ByMethod(APIView):
    """Reads need `read_only`, writes `full` (SPEC §4)."""

    write_methods = frozenset({"POST", "PUT", "PATCH", "DELETE"})

    def get_permissions(self):
        return [FullAccess() if self.request.method in self.write_methods else CanRead()]


def _actor(request) -> str:
    """Who saved a version, as shown in the history."""
    return f"api-key:{request.auth.name} ({request.auth.prefix})"


class _ByName(CheckedCursorPagination):
    ordering = ("name",)
    integer_position = False


class _NewestVersionFirst(CheckedCursorPagination):
    ordering = ("-version",)


class TemplateListApi(_ByMethod):
    @extend_schema(
        operation_id="list_templates",
        parameters=[PageQuerySerializer],
        responses={
            200: cursor_page_serializer(TemplateSummaryOutputSerializer, "TemplatePageOutputSerializer"),
            **ERRORS,
            **BAD_PAGE_QUERY,
        },
        description="Every template, by name, cursor-paginated (`limit` ≤ 500, default 50; follow `next`).",
    )
    def get(self, request):
        paginator = _ByName()
        page = paginator.paginate_queryset(template_list(), request, view=self)
        return paginator.get_paginated_response(TemplateSummaryOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="create_template",
        request=TemplateCreateInputSerializer,
        responses={
            201: TemplateOutputSerializer,
            **INVALID,
            **ERRORS,
            409: OpenApiResponse(ErrorBodySerializer, description="template_exists"),
        },
        description=(
            "Create a template (version 1). `subject` and one of `html`, `text`, `mjml` are required; "
            "every part is Jinja (html autoescaped). MJML is compiled to the html on save."
        ),
    )
    def post(self, request):
        serializer = TemplateCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        version = template_create(name=data.pop("name"), data=data, created_by=_actor(request))
        return Response(TemplateOutputSerializer(version).data, status=status.HTTP_201_CREATED)


class TemplateDetailApi(_ByMethod):
    @extend_schema(
        operation_id="get_template",
        responses={200: TemplateOutputSerializer, **ERRORS, **NOT_FOUND},
        description="The template's latest version, with the variables its parts use.",
    )
    def get(self, request, name: str):
        return Response(TemplateOutputSerializer(template_version_get(name=name)).data)

    @extend_schema(
        operation_id="update_template",
        request=TemplateUpdateInputSerializer,
        responses={200: TemplateOutputSerializer, **INVALID, **ERRORS, **NOT_FOUND},
        description=(
            "Save a new version (older versions never change). Fields left out keep the latest version's "
            "value; giving html or mjml replaces both."
        ),
    )
    def put(self, request, name: str):
        serializer = TemplateUpdateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = template_update(name=name, data=dict(serializer.validated_data), created_by=_actor(request))
        return Response(TemplateOutputSerializer(version).data)

    @extend_schema(
        operation_id="delete_template",
        request=None,
        responses={
            204: None,
            **ERRORS,
            **NOT_FOUND,
            409: OpenApiResponse(
                ErrorBodySerializer,
                description="template_in_use: scheduled or queued emails use it, or it is another template's layout",
            ),
        },
        description="Delete the template and its versions.",
    )
    def delete(self, request, name: str):
        template_delete(name=name, emails_pending=template_pending_messages)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TemplateVersionListApi(_ByMethod):
    @extend_schema(
        operation_id="list_template_versions",
        parameters=[PageQuerySerializer],
        responses={
            200: cursor_page_serializer(TemplateVersionSummaryOutputSerializer, "TemplateVersionPageOutputSerializer"),
            **ERRORS,
            **BAD_PAGE_QUERY,
            **NOT_FOUND,
        },
        description="The version history, newest first, cursor-paginated.",
    )
    def get(self, request, name: str):
        paginator = _NewestVersionFirst()
        page = paginator.paginate_queryset(template_versions(name=name), request, view=self)
        return paginator.get_paginated_response(TemplateVersionSummaryOutputSerializer(page, many=True).data)


class TemplateVersionDetailApi(_ByMethod):
    @extend_schema(
        operation_id="get_template_version",
        responses={200: TemplateVersionOutputSerializer, **ERRORS, **NOT_FOUND},
    )
    def get(self, request, name: str, version: int):
        return Response(TemplateVersionOutputSerializer(template_version_get(name=name, version=version)).data)


class TemplateRenderApi(_ByMethod):
    # Rendering is a read: it stores nothing.
    write_methods = frozenset()

    @extend_schema(
        operation_id="render_template",
        request=TemplateRenderInputSerializer,
        responses={
            200: RenderedOutputSerializer,
            400: OpenApiResponse(
                ErrorBodySerializer,
                description="template_render_error (`fields` names the part and each missing variable), invalid_field",
            ),
            **ERRORS,
            **NOT_FOUND,
        },
        description=(
            "Render a version (the latest unless `version`) with `data` (default: its sample_data) and return "
            "subject, html (CSS inlined, wrapped in its layout) and text (generated from the html if the "
            "template has none), as a send would. Stores nothing."
        ),
    )
    def post(self, request, name: str):
        serializer = TemplateRenderInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = template_version_get(name=name, version=serializer.validated_data.get("version"))
        data = serializer.validated_data.get("data")
        rendered = template_render(version=version, data=version.sample_data if data is None else data)
        return Response(
            RenderedOutputSerializer({"name": name, "version": version.version, **rendered.__dict__}).data
        )
