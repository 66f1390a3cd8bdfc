"""/api/v1/emails: send one or a batch, list, read, cancel (SPEC §4).

Each view: validate → one service → shape output.
"""

import re

from django.db import transaction
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core import metrics
from core.addresses import shown
from core.errors import EmailsvcError, ValidationFailed
from core.fields import MomentField, TextField, error_list, filter_text, one_value
from core.pagination import NewestFirstPagination
from core.responses import ErrorBodySerializer, error_body, validation_failed_from_drf
from core.sql import index_lookups, read_snapshot
from emailsvc.api.auth import CanRead, CanSend
from emailsvc.api.emails_inputs import (
    MAX_TAG,
    BatchInputSerializer,
    SendEmailInputSerializer,
    send_request_validate,
)
from emailsvc.api.emails_outputs import (
    BatchOutputSerializer,
    CancelOutputSerializer,
    EmailDetailOutputSerializer,
    EmailListPageOutputSerializer,
    EmailSummaryOutputSerializer,
    SendEmailOutputSerializer,
)
from emailsvc.api.responses import ERRORS
from emailsvc.delivery.scheduling import message_cancel
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
)
from emailsvc.models import Status
from emailsvc.selectors import message_get, message_list_queryset
from emailsvc.submission.idempotency import idempotency_request_hash, idempotent_call
from emailsvc.submission.submit import message_submit, message_submit_batch

# --- The query of GET /emails -----------------------------------------------------------

MAX_METADATA_FILTERS = 10
_METADATA_PARAM = re.compile(r"metadata\[(.*)\]", re.DOTALL)


class EmailListInputSerializer(serializers.Serializer):
    """The query of GET /api/v1/emails (besides `metadata[key]`)."""

    status = serializers.ListField(
        child=serializers.ChoiceField(
            choices=Status.choices,
            error_messages={"invalid_choice": f'"{{input}}" is not a status; one of: {", ".join(Status.values)}.'},
        ),
        required=False,
        help_text="Emails in any of these statuses: repeat the parameter or separate them with commas",
    )
    group_id = filter_text(200, "Emails of this group")
    to = filter_text(320, "Emails with this recipient (to, cc or bcc), in any case and either form of an IDN domain")
    tag = filter_text(MAX_TAG, "Emails with this tag among their tags")
    template = filter_text(200, "Emails rendered from the template of this name (any version)")
    created_after = MomentField(required=False, help_text="Accepted at or after this moment (ISO-8601)")
    created_before = MomentField(required=False, help_text="Accepted before this moment (ISO-8601)")
    stats = serializers.BooleanField(
        required=False, default=False,
        help_text="true: add `stats`, the emails of the whole filter (every page) counted per status",
    )
    cursor = serializers.CharField(required=False, allow_blank=True, help_text="From `next` or `previous` of a page")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=500, help_text="Emails a page (default 50)")


class _MetadataFilterSerializer(serializers.Serializer):
    key = TextField(max_length=200, single_line=True, refuse_blank=True, noun="A metadata key", trim_whitespace=False)
    value = TextField(max_length=1000, single_line=True, noun="A metadata value", allow_blank=True, trim_whitespace=False)


def email_list_query_validate(query) -> dict:
    """The validated query of GET /api/v1/emails (a QueryDict), or ValidationFailed naming each bad parameter.

    `status` may be repeated or comma-separated; `metadata[key]=value` may be
    given for up to MAX_METADATA_FILTERS keys; any other parameter is refused.
    """
    problems: dict[str, list] = {}
    data: dict = {}
    metadata: list[tuple[str, str]] = []
    for name in query:
        matched = _METADATA_PARAM.fullmatch(name)
        if matched:
            for value in query.getlist(name):
                item = _MetadataFilterSerializer(data={"key": matched.group(1), "value": value})
                if item.is_valid():
                    metadata.append((item.validated_data["key"], item.validated_data["value"]))
                else:
                    problems.setdefault(name, []).extend(m for messages in item.errors.values() for m in messages)
        elif name == "status":
            data["status"] = [part.strip() for value in query.getlist(name) for part in value.split(",")]
        elif name in EmailListInputSerializer._declared_fields:
            data[name] = one_value(query, name, problems)
        elif name == "metadata" or name.startswith("metadata["):
            problems.setdefault(name, []).append("Filter on metadata as metadata[key]=value.")
        else:
            problems.setdefault(name, []).append(f"Unknown parameter {shown(name)}.")
    if len(metadata) > MAX_METADATA_FILTERS:
        problems.setdefault("metadata", []).append(f"At most {MAX_METADATA_FILTERS} metadata filters are allowed.")
    serializer = EmailListInputSerializer(data=data)
    if not serializer.is_valid():
        for name, errors in serializer.errors.items():
            problems.setdefault(name, []).extend(error_list(errors))
    if problems:
        raise validation_failed_from_drf(problems)
    return {**serializer.validated_data, "metadata": metadata}


# --- The views -------------------------------------------------------------------------

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
        paginator = NewestFirstPagination(filters=request.query_params)  # checked above
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
            # A test key's email is left out, as out of every figure but its own (docs/api-keys.md).
            if not message.is_test:
                metrics.emails_accepted_observe(emails=[(message.priority, message.stream)], endpoint="single")
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
                emails=[(r.priority, r.stream) for r in results if not isinstance(r, EmailsvcError) and not r.is_test],
                endpoint="batch",
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


_CANCEL_RESPONSES = {
    200: CancelOutputSerializer,
    **ERRORS,
    404: OpenApiResponse(ErrorBodySerializer),
    409: OpenApiResponse(ErrorBodySerializer, description="not_cancellable: sending began or it ended"),
}


def _cancel(email_id: str) -> Response:
    message = message_cancel(email_id=email_id)
    return Response(CancelOutputSerializer(message).data)


class EmailDetailApi(APIView):
    """/emails/{email_id}: GET reads (read_only), DELETE cancels as POST …/cancel does (sending)."""

    def get_permissions(self):
        # Any other method needs no more than reading to learn it is not allowed (405).
        return [CanSend() if self.request.method == "DELETE" else CanRead()]

    @extend_schema(
        operation_id="get_email",
        responses={200: EmailDetailOutputSerializer, **ERRORS, 404: OpenApiResponse(ErrorBodySerializer)},
    )
    def get(self, request, email_id: str):
        # The email, its recipients and its events come from several statements:
        # one snapshot, so that an event never shows without the status it set.
        with read_snapshot():
            message = message_get(email_id=email_id)
            data = EmailDetailOutputSerializer(message).data
        return Response(data)

    @extend_schema(
        operation_id="delete_email",
        request=None,
        responses=_CANCEL_RESPONSES,
        description=(
            "Needs `sending`. Cancel a scheduled or still-queued email: the same as POST /emails/{email_id}/cancel."
        ),
    )
    def delete(self, request, email_id: str):
        return _cancel(email_id)


class EmailCancelApi(APIView):
    permission_classes = [CanSend]

    @extend_schema(
        operation_id="cancel_email",
        request=None,
        responses=_CANCEL_RESPONSES,
        description="Cancel a scheduled or still-queued email.",
    )
    def post(self, request, email_id: str):
        return _cancel(email_id)
