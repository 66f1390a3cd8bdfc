"""/api/v1/suppressions: list, add, read, lift, import and export suppressed addresses (SPEC §4)."""

from django.conf import settings
from django.core.validators import RegexValidator
from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import parsers, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.addresses import InvalidAddress, address_canonical
from core.errors import NotFound, PayloadTooLarge, ValidationFailed
from core.fields import TextField, cursor_page_serializer
from core.pagination import NewestFirstPagination, query_parameters_check
from core.responses import ErrorBodySerializer, error_body
from emailsvc.api.auth import CanRead, FullAccess
from emailsvc.api.responses import ERRORS
from emailsvc.models import Suppression
from emailsvc.selectors import suppression_get, suppressions_list
from emailsvc.suppressions.csv_rows import csv_text, suppression_rows_read, suppressions_csv
from emailsvc.suppressions.services import ImportHasErrors, suppression_ensure, suppression_lift, suppressions_import

# A note may run over lines; other control characters (NUL above all) are refused.
_NOTE_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*\Z"
MAX_SUPPRESSION_NOTE = 2000


class SuppressionAddressField(TextField):
    """One bare address (no display name), in its canonical form."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 320)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        try:
            return address_canonical(value)
        except InvalidAddress as error:
            raise serializers.ValidationError(str(error), code="invalid_address") from None


class FutureDateTimeField(serializers.DateTimeField):
    def to_internal_value(self, value):
        moment = super().to_internal_value(value)
        if moment <= timezone.now():
            raise serializers.ValidationError("must be in the future.", code="invalid_field")
        return moment


class SuppressionAddInputSerializer(serializers.Serializer):
    email = SuppressionAddressField(help_text="The address; any case, an internationalised domain in either form")
    reason = serializers.ChoiceField(choices=Suppression.Reason.choices, default=Suppression.Reason.MANUAL)
    note = TextField(
        required=False, allow_blank=True, default="", max_length=MAX_SUPPRESSION_NOTE,
        validators=[RegexValidator(_NOTE_PATTERN, message="note may not contain control characters.", code="invalid_field")],
    )
    expires_at = FutureDateTimeField(required=False, allow_null=True, default=None, help_text="Lifted by itself then; null: never")


class SuppressionOutputSerializer(serializers.Serializer):
    email = serializers.CharField()
    reason = serializers.ChoiceField(choices=Suppression.Reason.choices)
    source = serializers.CharField(help_text="Who or what added it: an API key, an import, an event id, ses-account-list")
    note = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    active = serializers.SerializerMethodField(help_text="False once expires_at has passed (sends are no longer refused)")
    stream = serializers.SerializerMethodField(
        help_text="null: every message stream; a stream's name: that stream only (a one-click unsubscribe, docs/streams.md)"
    )

    @extend_schema_field(serializers.BooleanField())
    def get_active(self, suppression) -> bool:
        return suppression.expires_at is None or suppression.expires_at > timezone.now()

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_stream(self, suppression) -> str | None:
        return getattr(suppression, "stream_id", None)


class SuppressionListInputSerializer(serializers.Serializer):
    """The query of GET /suppressions (also what the schema states)."""

    reason = serializers.ChoiceField(choices=Suppression.Reason.choices, required=False)
    created_after = serializers.DateTimeField(required=False, help_text="Added at or after this moment")
    created_before = serializers.DateTimeField(required=False, help_text="Added before this moment")
    search = TextField(required=False, allow_blank=True, single_line=True, max_length=320, help_text="A part of the address (any case)")
    prefix = TextField(
        required=False, allow_blank=True, single_line=True, max_length=320,
        help_text="The start of the address (any case); an index lookup, fast on any list size",
    )
    active = serializers.BooleanField(required=False, help_text="true: leave out expired entries; false: only them")
    cursor = serializers.CharField(required=False, allow_blank=True, help_text="From `next` or `previous` of a page")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=500, help_text="Entries a page (default 50)")


class SuppressionListQuerySerializer(SuppressionListInputSerializer):
    """GET /suppressions: the filters, and `stream`."""

    stream = TextField(
        required=False, single_line=True, max_length=64, refuse_blank=True,
        help_text="The suppressions of this message stream only (one-click unsubscribes); left out: those of every stream",
    )


SuppressionPageOutputSerializer = cursor_page_serializer(SuppressionOutputSerializer, "SuppressionPageOutputSerializer")


class SuppressionImportInputSerializer(serializers.Serializer):
    """The query of POST /suppressions/import."""

    partial = serializers.BooleanField(
        default=False, help_text="true: import the valid rows and report the bad ones; false (default): any bad row imports nothing"
    )
    reason = serializers.ChoiceField(
        choices=Suppression.Reason.choices, default=Suppression.Reason.MANUAL, help_text="For rows whose reason cell is empty"
    )


class SuppressionImportUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="The CSV file: header row `email[,reason,note,expires_at]`, UTF-8")


class SuppressionImportRowErrorSerializer(serializers.Serializer):
    line = serializers.IntegerField(help_text="Line in the file; the header is line 1")
    error = serializers.CharField(help_text="invalid_address, missing_fields, invalid_reason, invalid_expires_at, invalid_field")
    detail = serializers.CharField()


class SuppressionImportOutputSerializer(serializers.Serializer):
    rows = serializers.IntegerField(help_text="Data rows read (blank lines and the header not counted)")
    imported = serializers.IntegerField(help_text="Addresses suppressed by this import")
    existing = serializers.IntegerField(help_text="Addresses already suppressed, left as they were")
    duplicates = serializers.IntegerField(help_text="Rows repeating an address of an earlier row")
    error_count = serializers.IntegerField(help_text="Bad rows, not imported")
    errors = SuppressionImportRowErrorSerializer(many=True, help_text="The bad rows (the first 1,000)")


class SuppressionImportErrorOutputSerializer(ErrorBodySerializer):
    """The error body; for import_has_errors also every bad row (nothing was imported)."""

    rows = serializers.IntegerField(required=False, help_text="import_has_errors: data rows read")
    error_count = serializers.IntegerField(required=False, help_text="import_has_errors: bad rows")
    errors = SuppressionImportRowErrorSerializer(
        many=True, required=False, help_text="import_has_errors: the bad rows (the first 1,000)"
    )


# The bad rows an import answer lists; error_count says how many there were.
MAX_REPORTED_ROW_ERRORS = 1000
# Multipart framing around an uploaded file, on top of SUPPRESSION_IMPORT_MAX_BYTES.
_MULTIPART_OVERHEAD_BYTES = 64 * 1024
NOT_FOUND = {404: OpenApiResponse(ErrorBodySerializer, description="not_found")}
EMAIL_PATH = OpenApiParameter(
    "email", str, OpenApiParameter.PATH,
    description="The address, in any case; an internationalised domain in either form (bücher.example or xn--bcher-kva.example)",
)


class _ReadsAndWrites(APIView):
    """Reads need `read_only`, writes `full` (SPEC §4)."""

    def get_permissions(self):
        return [CanRead() if self.request.method in ("GET", "HEAD", "OPTIONS") else FullAccess()]


def _validated(serializer_class, data) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _actor(request) -> str:
    """Who added a suppression, as its `source` shows."""
    return f"api-key:{request.auth.name} ({request.auth.prefix})"[:255]


class SuppressionListApi(_ReadsAndWrites):
    @extend_schema(
        operation_id="list_suppressions",
        parameters=[SuppressionListQuerySerializer],
        responses={200: SuppressionPageOutputSerializer, **ERRORS},
        description=(
            "Suppressed addresses, newest first, cursor-paginated (`limit` ≤ 500, default 50; follow `next`). "
            "Pages stay stable while entries are added. Filters: `reason`, `created_after`/`created_before`, "
            "`search` (a part of the address), `prefix` (its start; an index lookup), `active`. Without `stream`: "
            "the suppressions of every stream (`stream` null); `stream=<name>`: those of that stream only."
        ),
    )
    def get(self, request):
        query = _validated(SuppressionListQuerySerializer, request.query_params.dict())
        filters = {name: value for name, value in query.items() if name not in ("cursor", "limit")}
        paginator = NewestFirstPagination(filters=SuppressionListQuerySerializer._declared_fields)
        page = paginator.paginate_queryset(suppressions_list(**filters), request, view=self)
        return paginator.get_paginated_response(SuppressionOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="add_suppression",
        request=SuppressionAddInputSerializer,
        responses={
            200: OpenApiResponse(SuppressionOutputSerializer, description="Already suppressed: the entry, unchanged"),
            201: OpenApiResponse(SuppressionOutputSerializer, description="Suppressed now (or an expired entry renewed)"),
            **ERRORS,
        },
        description=(
            "Suppress an address. Idempotent: an address already suppressed answers 200 with its entry as it is "
            "(reason, note and expiry unchanged; lift it first to change them); a new one, or one whose entry "
            "expired, 201. Error codes: invalid_address, missing_fields, invalid_field, invalid_json."
        ),
    )
    def post(self, request):
        data = _validated(SuppressionAddInputSerializer, request.data)
        suppression, created = suppression_ensure(**data, source=_actor(request))
        return Response(SuppressionOutputSerializer(suppression).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class SuppressionDetailApi(_ReadsAndWrites):
    @extend_schema(
        operation_id="get_suppression",
        parameters=[EMAIL_PATH],
        responses={200: SuppressionOutputSerializer, **ERRORS, **NOT_FOUND},
        description="The suppression of an address, given in any case and either form of an internationalised domain.",
    )
    def get(self, request, email: str):
        return Response(SuppressionOutputSerializer(suppression_get(email=email)).data)

    @extend_schema(
        operation_id="lift_suppression",
        parameters=[EMAIL_PATH],
        responses={204: None, **ERRORS, **NOT_FOUND},
        description=(
            "Lift a suppression: the address may be sent to again. With SES_SUPPRESSION_SYNC it is also taken off "
            "SES's account-level suppression list."
        ),
    )
    def delete(self, request, email: str):
        if not suppression_lift(email=email):
            raise NotFound("That address is not suppressed.")
        return Response(status=status.HTTP_204_NO_CONTENT)


class CsvParser(parsers.BaseParser):
    """A text/csv body, read as bytes up to SUPPRESSION_IMPORT_MAX_BYTES (413 past it)."""

    media_type = "text/csv"

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.SUPPRESSION_IMPORT_MAX_BYTES
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(f"The CSV file is larger than {limit:,} bytes; split it.")
        return data


class SuppressionImportApi(APIView):
    permission_classes = [FullAccess]
    parser_classes = [CsvParser, parsers.MultiPartParser]

    @extend_schema(
        operation_id="import_suppressions",
        parameters=[SuppressionImportInputSerializer],
        request={"text/csv": OpenApiTypes.STR, "multipart/form-data": SuppressionImportUploadSerializer},
        responses={
            200: SuppressionImportOutputSerializer,
            400: OpenApiResponse(
                SuppressionImportErrorOutputSerializer,
                description="import_has_errors (with `errors`: every bad row by line; nothing imported), invalid_csv, "
                "missing_fields, invalid_field",
            ),
            401: ERRORS[401],
            403: ERRORS[403],
            413: OpenApiResponse(ErrorBodySerializer, description="payload_too_large, too_many_rows"),
            415: OpenApiResponse(ErrorBodySerializer, description="unsupported_media_type: send text/csv or multipart"),
        },
        description=(
            "Suppress the addresses of a CSV file, sent as the body (`Content-Type: text/csv`) or as the multipart "
            "file field `file`. UTF-8; a header row, then one address a row: `email[,reason,note,expires_at]` "
            "(reason: empty means the `reason` parameter, default manual; expires_at: ISO-8601, in the future). "
            "Every row is validated. All or nothing by default: if any row is bad, nothing is imported and the "
            "answer is 400 import_has_errors listing every bad row by line (the header is line 1). With "
            "`partial=true` the valid rows are imported and the bad ones reported (200). Addresses already "
            "suppressed are left as they are (`existing`). At most SUPPRESSION_IMPORT_MAX_ROWS rows (100,000) "
            "and SUPPRESSION_IMPORT_MAX_BYTES (10 MB)."
        ),
    )
    def post(self, request):
        query = _validated(SuppressionImportInputSerializer, request.query_params.dict())
        limit = settings.SUPPRESSION_IMPORT_MAX_BYTES
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limit + _MULTIPART_OVERHEAD_BYTES:  # refused before a byte of it is read
            raise PayloadTooLarge(f"The CSV file is larger than {limit:,} bytes; split it.")
        if isinstance(request.data, bytes):
            content = request.data
        elif CsvParser.media_type in request.content_type:
            content = b""  # an empty body: DRF calls no parser for it
        elif (upload := request.FILES.get("file")) is not None:
            if upload.size > limit:
                raise PayloadTooLarge(f"The CSV file is larger than {limit:,} bytes; split it.")
            content = upload.read()
        else:
            raise ValidationFailed(
                "Send the CSV file as the body (Content-Type: text/csv) or as the multipart file field 'file'.",
                code="missing_fields",
            )
        rows = suppression_rows_read(
            csv_text(content), max_rows=settings.SUPPRESSION_IMPORT_MAX_ROWS, default_reason=query["reason"]
        )
        reported = [vars(error) for error in rows.errors[:MAX_REPORTED_ROW_ERRORS]]
        try:
            result = suppressions_import(rows=rows, partial=query["partial"], source=_actor(request))
        except ImportHasErrors as error:
            body = {**error_body(error), "rows": rows.read, "error_count": len(rows.errors), "errors": reported}
            return Response(body, status=error.http_status)
        return Response(
            {
                "rows": result.read,
                "imported": result.imported,
                "existing": result.existing,
                "duplicates": result.duplicates,
                "error_count": len(result.errors),
                "errors": reported,
            }
        )


class SuppressionExportInputSerializer(SuppressionListInputSerializer):
    """The query of GET /suppressions/export: the list's filters, without paging."""

    cursor = None
    limit = None


class SuppressionExportApi(APIView):
    permission_classes = [CanRead]

    def perform_content_negotiation(self, request, force=False):
        # The file is CSV whatever Accept asks for; an error answer is the JSON error body.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        operation_id="export_suppressions",
        parameters=[SuppressionExportInputSerializer],
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="`email,reason,note,expires_at`"),
            **ERRORS,
        },
        description=(
            "The suppressed addresses as a CSV file (`email,reason,note,expires_at`, UTF-8, newest first), streamed, "
            "that POST /suppressions/import reads back unchanged. The filters of GET /suppressions: `reason`, "
            "`created_after`/`created_before`, `search`, `prefix`, `active` (`active=true` leaves out expired entries, "
            "which an import refuses). A cell that a spreadsheet would run as a formula (starting with `=`, `+`, `-` "
            "or `@`) is written behind a `'`; the import drops it. An unknown parameter (`cursor` and `limit` among "
            "them: the file is never paged) is 400 invalid_field."
        ),
    )
    def get(self, request):
        filters = _validated(SuppressionExportInputSerializer, request.query_params.dict())
        query_parameters_check(request.query_params, SuppressionExportInputSerializer._declared_fields)
        rows = suppressions_csv(suppressions_list(**filters))
        response = StreamingHttpResponse(rows, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="suppressions-{timezone.now():%Y-%m-%d}.csv"'
        return response
