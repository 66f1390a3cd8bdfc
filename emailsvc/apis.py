"""REST API of the sending side. Each view: validate → one service → shape output."""

from django.conf import settings
from django.db import connection
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from emailsvc.auth import CanRead, CanSend
from emailsvc.errors import EmailsvcError, ErrorBodySerializer, ValidationFailed, error_body
from emailsvc.selectors import message_get
from emailsvc.serializers import (
    BatchInputSerializer,
    BatchOutputSerializer,
    CancelOutputSerializer,
    EmailDetailOutputSerializer,
    SendEmailInputSerializer,
    SendEmailOutputSerializer,
    send_request_validate,
)
from emailsvc.services.idempotency import idempotency_request_hash, idempotent_call
from emailsvc.services.scheduling import message_cancel
from emailsvc.services.submission import message_submit, message_submit_batch

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


class EmailSendApi(APIView):
    permission_classes = [CanSend]

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
            "Validate, store and queue one email; answers 202 at once with its id. A future `send_at` "
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


class HealthApi(APIView):
    """The process is up."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(exclude=True)
    def get(self, request):
        return Response({"status": "ok"})


class ReadinessApi(APIView):
    """The database and the broker answer."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(exclude=True)
    def get(self, request):
        from config.celery import app

        checks = {}
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            checks["database"] = "ok"
        except Exception as error:  # readiness reports any failure, it does not raise
            checks["database"] = f"error: {type(error).__name__}"
        try:
            with app.connection_for_write() as broker:
                broker.ensure_connection(max_retries=1, timeout=2)
            checks["broker"] = "ok"
        except Exception as error:  # readiness reports any failure, it does not raise
            checks["broker"] = f"error: {type(error).__name__}"
        ready = all(value == "ok" for value in checks.values())
        body = {"status": "ok" if ready else "unavailable", "checks": checks, "provider": settings.EMAIL_PROVIDER}
        # The events queue is reported, never decides readiness: a DLQ holding
        # messages or an unreachable SQS is something to look at, not a reason
        # to stop taking emails (events wait on the queue).
        events = _events_queue_detail()
        if events is not None:
            body["events"] = events
        return Response(body, status=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE)


def _events_queue_detail() -> dict | None:
    """{queue_depth, dlq_depth} of the SES events queue; None when no queue is configured."""
    from emailsvc import sqs

    try:
        queue_url = sqs.events_queue_url()
        if not queue_url:
            return None
        client = sqs.sqs_client(timeout_seconds=2)
        return {
            "queue_depth": sqs.queue_depth(queue_url, client=client),
            "dlq_depth": sqs.events_dlq_depth(queue_url, client=client),
            # Drain lag: the age of the oldest event the last drain received, and
            # how long ago that drain ran.
            "last_drain": sqs.drain_report(),
        }
    except Exception as error:  # readiness reports any failure, it does not raise
        return {"error": f"error: {type(error).__name__}"}
