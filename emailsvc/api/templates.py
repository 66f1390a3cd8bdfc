"""REST API of stored templates (SPEC §4 /templates). Each view: validate → one
service or selector → shape output. `read_only` keys read and render; `full`
keys write."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from emailsvc.api.auth import CanRead, FullAccess
from core.responses import ErrorBodySerializer
from emailsvc.serializers import cursor_page_serializer
from emailsvc.selectors import template_pending_messages
from templates_app.selectors import template_list, template_version_get, template_versions
from emailsvc.api.template_serializers import (
    RenderedOutputSerializer,
    TemplateCreateInputSerializer,
    TemplateOutputSerializer,
    TemplateRenderInputSerializer,
    TemplateSummaryOutputSerializer,
    TemplateUpdateInputSerializer,
    TemplateVersionOutputSerializer,
    TemplateVersionSummaryOutputSerializer,
)
from templates_app.services import template_create, template_delete, template_render, template_update

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


class _ByName(CursorPagination):
    ordering = ("name",)
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500


class _NewestVersionFirst(CursorPagination):
    ordering = ("-version",)
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500


class TemplateListApi(_ByMethod):
    @extend_schema(
        operation_id="list_templates",
        responses={200: cursor_page_serializer(TemplateSummaryOutputSerializer, "TemplatePageOutputSerializer"), **ERRORS},
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
        responses={
            200: cursor_page_serializer(TemplateVersionSummaryOutputSerializer, "TemplateVersionPageOutputSerializer"),
            **ERRORS,
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
