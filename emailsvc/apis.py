"""REST API of the sending side. Each view: validate → one service → shape output."""

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import parsers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core import metrics
from emailsvc.api.auth import CanRead, CanSend, FullAccess
from core.pagination import NewestFirstPagination
from core.errors import EmailsvcError, ValidationFailed
from core.responses import ErrorBodySerializer, error_body
from emailsvc.selectors import message_get, message_list_queryset
from emailsvc.serializers import (
    BatchInputSerializer,
    BatchOutputSerializer,
    CancelOutputSerializer,
    EmailDetailOutputSerializer,
    SendEmailInputSerializer,
    SendEmailOutputSerializer,
    SendingResumeInputSerializer,
    SendingResumeOutputSerializer,
    SendingStatusOutputSerializer,
    send_request_validate,
)
from emailsvc.sending_control.breaker import sending_resume, sending_status
from emailsvc.submission.idempotency import idempotency_request_hash, idempotent_call
from emailsvc.delivery.scheduling import message_cancel
from emailsvc.submission.submit import message_submit, message_submit_batch
from emailsvc.suppressions.services import ImportHasErrors, suppression_ensure, suppression_lift, suppressions_import
from core.errors import NotFound, PayloadTooLarge
from emailsvc.selectors import suppression_get, suppressions_list
from emailsvc.serializers import (
    SuppressionAddInputSerializer,
    SuppressionImportErrorOutputSerializer,
    SuppressionImportInputSerializer,
    SuppressionImportOutputSerializer,
    SuppressionImportUploadSerializer,
    SuppressionListInputSerializer,
    SuppressionOutputSerializer,
    SuppressionPageOutputSerializer,
)
from emailsvc.suppressions.csv_rows import csv_text, suppression_rows_read
from django.db import transaction

from core.sql import index_lookups
from emailsvc.listing import (
    BY_ID,
    GATHERED,
    EmailFilters,
    created_id_bounds,
    message_status_counts,
    messages_among,
    messages_filtered,
    page_window,
    planner_settings,
    transition_counts,
)
from emailsvc.serializers import (
    EmailListPageOutputSerializer,
    EmailListInputSerializer,
    EmailSummaryOutputSerializer,
    StatsInputSerializer,
    StatsOutputSerializer,
    email_list_query_validate,
    stats_query_validate,
)

ERRORS = {
    400: OpenApiResponse(ErrorBodySerializer, description="Validation error (code in `error`)"),
    401: OpenApiResponse(ErrorBodySerializer, description="Missing or invalid API key"),
    403: OpenApiResponse(ErrorBodySerializer, description="API key permission too low"),
}


IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Repeat a request safely: the same key and body return the first answer; another body is 409.",
)


EMAIL_LIST_METADATA = OpenApiParameter(
    "metadata",
    {"type": "object", "additionalProperties": {"type": "string", "maxLength": 1000}, "maxProperties": 10},
    OpenApiParameter.QUERY,
    required=False,
    style="deepObject",
    explode=True,
    description="`metadata[key]=value`: emails whose metadata holds the string `value` at the top-level `key` (up to 10 keys)",
)


def _send_output(message) -> dict:
    return {
        "email_id": message.email_id,
        "group_id": message.group_id,
        "status": message.status,
        "recipients": [{"email": r.email, "status": r.status} for r in message.recipients_list],
    }


def _idempotent(request, call) -> Response:
    key = request.headers.get("Idempotency-Key")
    status_code, body = idempotent_call(
        api_key=request.auth,
        key=key,
        # Hashing the body costs a JSON dump of it: only when a key asks for it.
        request_hash=idempotency_request_hash(method=request.method, path=request.path, data=request.data) if key else "",
        call=call,
    )
    return Response(body, status=status_code)


class EmailsApi(APIView):
    """/emails: GET lists (read_only), POST sends (sending)."""

    def get_permissions(self):
        # Any other method needs no more than reading to learn it is not allowed (405).
        return [CanSend() if self.request.method == "POST" else CanRead()]

    @extend_schema(
        operation_id="list_emails",
        parameters=[EmailListInputSerializer, EMAIL_LIST_METADATA],
        responses={200: EmailListPageOutputSerializer, **ERRORS},
        description=(
            "Needs `read_only`. Emails newest first, cursor-paginated (`limit` ≤ 500, default 50; follow `next`); "
            "pages stay stable while new emails arrive. Filters, all of which must hold: `status` (repeat it or "
            "separate with commas: any of them), `group_id`, `to` (any recipient), `tag`, `template` (a name), "
            "`created_after` (included) / `created_before` (excluded), `metadata[key]=value` (the metadata's "
            "top-level key holds that string; up to 10). `stats=true` adds `stats`, the count per status of every "
            "email the filter matches (not only this page): exact (`stats_exact: true`) up to 10,000 matching emails, "
            "past that on PostgreSQL an estimate from a sample of 10,000 of the ids the filter can reach. Any other "
            "parameter, or a bad value, "
            "is a 400 invalid_field naming it in `fields`."
        ),
    )
    def get(self, request):
        query = email_list_query_validate(request.query_params)
        filters = EmailFilters(
            statuses=tuple(dict.fromkeys(query.get("status", ()))),
            group_id=query.get("group_id"),
            to=query.get("to"),
            tag=query.get("tag"),
            template=query.get("template"),
            created_after=query.get("created_after"),
            created_before=query.get("created_before"),
            metadata=tuple(query["metadata"]),
        )
        paginator = NewestFirstPagination()
        cursor = paginator.decode_cursor(request)
        with transaction.atomic():  # the page, its recipients and the counts: one snapshot, bounded lookups by key
            index_lookups()
            bounds = created_id_bounds(created_after=filters.created_after, created_before=filters.created_before)
            rows = messages_filtered(filters=filters, bounds=bounds)
            ids = self._page_ids(paginator, rows, filters=filters, bounds=bounds, cursor=cursor)
            page = message_list_queryset().filter(id__in=ids).order_by("-id")
            data = EmailSummaryOutputSerializer(page, many=True).data
            counts = message_status_counts(rows=rows, filters=filters, bounds=bounds) if query["stats"] else None
        response = paginator.get_paginated_response(data)
        if counts is not None:
            response.data["stats"] = counts.counts
            response.data["stats_exact"] = counts.exact
        return response

    def _page_ids(self, paginator, rows, *, filters, bounds, cursor) -> list[int]:
        """The ids of the page (see emailsvc.listing.page_window)."""
        reverse = bool(cursor and cursor.reverse)
        window = page_window(
            filters=filters, bounds=bounds, reverse=reverse,
            position=int(cursor.position) if cursor and cursor.position is not None else None,
        )
        if window is not None:
            with planner_settings(**BY_ID):
                # The window's matches passed every filter: looked up by key alone.
                found = paginator.paginate_queryset(
                    messages_among(window.matches).values("id"), self.request, view=self
                )
            if window.complete or (paginator.has_previous if reverse else paginator.has_next):
                return [row["id"] for row in found]
        with planner_settings(**(GATHERED if window is not None else {})):
            return [row["id"] for row in paginator.paginate_queryset(rows.values("id"), self.request, view=self)]

    @extend_schema(
        operation_id="send_email",
        request=SendEmailInputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={
            202: SendEmailOutputSerializer,
            **ERRORS,
            409: OpenApiResponse(ErrorBodySerializer, description="duplicate_email_id, idempotency_key_reused"),
            413: OpenApiResponse(ErrorBodySerializer, description="payload_too_large"),
        },
        description=(
            "Needs `sending`. Validate, store and queue one email; answers 202 at once with its id. A future `send_at` "
            "makes it `scheduled`. Error codes: "
            "invalid_json, missing_fields, invalid_address, invalid_field, invalid_header, "
            "invalid_attachment, invalid_send_at, from_domain_not_allowed, reply_to_domain_not_allowed, "
            "recipient_domain_not_allowed, too_many_recipients, invalid_idempotency_key, payload_too_large (413), "
            "duplicate_email_id (409), idempotency_key_reused (409)."
        ),
    )
    def post(self, request):
        def send() -> tuple[int, dict]:
            message = message_submit(api_key=request.auth, data=send_request_validate(request.data))
            metrics.emails_accepted_observe(priorities=[message.priority], endpoint="single")
            return status.HTTP_202_ACCEPTED, SendEmailOutputSerializer(_send_output(message)).data

        return _idempotent(request, send)


class EmailBatchApi(APIView):
    permission_classes = [CanSend]

    @extend_schema(
        operation_id="send_email_batch",
        request=BatchInputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={200: BatchOutputSerializer, **ERRORS, 409: OpenApiResponse(ErrorBodySerializer), 413: OpenApiResponse(ErrorBodySerializer)},
        description=(
            "Up to MAX_BATCH_SIZE (default 500) emails, each shaped like POST /emails, in `emails`. "
            "Answers 200 with `data` (accepted: index, email_id, status) and `errors` (index, error, detail, "
            "fields: the same codes as POST /emails). One bad item never fails the others."
        ),
    )
    def post(self, request):
        def send() -> tuple[int, dict]:
            batch = BatchInputSerializer(data=request.data)
            batch.is_valid(raise_exception=True)
            items = []
            for raw in batch.validated_data["emails"]:
                try:
                    items.append(send_request_validate(raw))
                except ValidationFailed as error:
                    items.append(error)
            results = message_submit_batch(api_key=request.auth, items=items)
            metrics.emails_accepted_observe(
                priorities=[r.priority for r in results if not isinstance(r, EmailsvcError)], endpoint="batch"
            )
            data, errors = [], []
            for index, result in enumerate(results):
                if isinstance(result, EmailsvcError):
                    errors.append({"index": index, **error_body(result)})
                else:
                    data.append({"index": index, "email_id": result.email_id, "group_id": result.group_id, "status": result.status})
            # Already the documented shape (BatchOutputSerializer): no need to copy 500 items again.
            return status.HTTP_200_OK, {"data": data, "errors": errors}

        return _idempotent(request, send)


class EmailDetailApi(APIView):
    permission_classes = [CanRead]

    @extend_schema(
        operation_id="get_email",
        responses={200: EmailDetailOutputSerializer, **ERRORS, 404: OpenApiResponse(ErrorBodySerializer)},
    )
    def get(self, request, email_id: str):
        message = message_get(email_id=email_id)
        return Response(EmailDetailOutputSerializer(message).data)


class EmailCancelApi(APIView):
    permission_classes = [CanSend]

    @extend_schema(
        operation_id="cancel_email",
        request=None,
        responses={
            200: CancelOutputSerializer,
            **ERRORS,
            404: OpenApiResponse(ErrorBodySerializer),
            409: OpenApiResponse(ErrorBodySerializer, description="not_cancellable: sending began or it ended"),
        },
        description="Cancel a scheduled or still-queued email.",
    )
    def post(self, request, email_id: str):
        message = message_cancel(email_id=email_id)
        return Response(CancelOutputSerializer(message).data)


class SendingStatusApi(APIView):
    permission_classes = [CanRead]

    @extend_schema(
        operation_id="sending_status",
        responses={200: SendingStatusOutputSerializer, **ERRORS},
        description=(
            "Whether the account and each sending domain may send: the safety breaker's and the provider's "
            "pauses (cause, reason, since, until, the figures that tripped it) and the rolling 24 h sent / "
            "bounced / complained counts and rates, with the thresholds."
        ),
    )
    def get(self, request):
        return Response(SendingStatusOutputSerializer(sending_status()).data)


class SendingResumeApi(APIView):
    permission_classes = [FullAccess]

    @extend_schema(
        operation_id="sending_resume",
        request=SendingResumeInputSerializer,
        responses={200: SendingResumeOutputSerializer, **ERRORS},
        description='Resume a paused sending domain (`"domain": "example.com"`), the account (`"*"`), or every '
        "active pause (no domain). Held emails are queued again and sent, each once.",
    )
    def post(self, request):
        serializer = SendingResumeInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        resumed = sending_resume(domain=serializer.validated_data.get("domain"), by=str(request.user))
        return Response(SendingResumeOutputSerializer({"resumed": resumed}).data)


# --- Suppressions (SPEC §4 /suppressions) -------------------------------------------
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
        parameters=[SuppressionListInputSerializer],
        responses={200: SuppressionPageOutputSerializer, **ERRORS, 404: OpenApiResponse(ErrorBodySerializer, description="An invalid cursor")},
        description=(
            "Suppressed addresses, newest first, cursor-paginated (`limit` ≤ 500, default 50; follow `next`). "
            "Pages stay stable while entries are added. Filters: `reason`, `created_after`/`created_before`, "
            "`search` (a part of the address), `prefix` (its start; an index lookup), `active`."
        ),
    )
    def get(self, request):
        query = _validated(SuppressionListInputSerializer, request.query_params.dict())
        filters = {name: value for name, value in query.items() if name not in ("cursor", "limit")}
        paginator = NewestFirstPagination()
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


class StatsApi(APIView):
    permission_classes = [CanRead]

    @extend_schema(
        operation_id="email_stats",
        parameters=[StatsInputSerializer],
        responses={200: StatsOutputSerializer, **ERRORS},
        description=(
            "Needs `read_only`. Recipient status transitions per hour or day (UTC) over a window (default the last "
            "24 hours; at most 7 days by hour, 90 days by day): every bucket of the window with a count for every "
            "status. A transition counts in the bucket of the moment the service recorded it (StatusChange.at): a "
            "recipient delivered at 10:05 counts in `delivered` of the 10:00 bucket; one that was sent, delivered "
            "and opened counts once in each. A message to three addresses counts three times. `group_id` and `tag` "
            "keep the transitions of the emails that have them. Bad or unknown parameters: 400 invalid_field naming them."
        ),
    )
    def get(self, request):
        query = stats_query_validate(request.query_params)
        with transaction.atomic():
            index_lookups()
            counted = transition_counts(
                start=query["from"], end=query["to"], interval=query["interval"],
                group_id=query.get("group_id"), tag=query.get("tag"),
            )
        body = {
            "from": counted.start,
            "to": counted.end,
            "interval": counted.interval,
            "buckets": [{"start": start, "counts": counts} for start, counts in counted.buckets],
            "totals": counted.totals,
        }
        return Response(StatsOutputSerializer(body).data)
