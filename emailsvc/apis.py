"""REST API of the sending side. Each view: validate → one service → shape output."""

from django.conf import settings
from django.db import connection
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from emailsvc.auth import CanRead, CanSend
from emailsvc.errors import ErrorBodySerializer
from emailsvc.selectors import message_get
from emailsvc.serializers import EmailDetailOutputSerializer, SendEmailInputSerializer, SendEmailOutputSerializer
from emailsvc.services import message_submit

ERRORS = {
    400: OpenApiResponse(ErrorBodySerializer, description="Validation error (code in `error`)"),
    401: OpenApiResponse(ErrorBodySerializer, description="Missing or invalid API key"),
    403: OpenApiResponse(ErrorBodySerializer, description="API key permission too low"),
}


class EmailSendApi(APIView):
    permission_classes = [CanSend]

    @extend_schema(
        operation_id="send_email",
        request=SendEmailInputSerializer,
        responses={
            202: SendEmailOutputSerializer,
            **ERRORS,
            409: OpenApiResponse(ErrorBodySerializer, description="duplicate_email_id"),
            413: OpenApiResponse(ErrorBodySerializer, description="payload_too_large"),
        },
        description=(
            "Validate, store and queue one email; answers 202 at once with its id. Error codes: "
            "invalid_json, missing_fields, invalid_address, invalid_field, invalid_header, "
            "invalid_attachment, from_domain_not_allowed, reply_to_domain_not_allowed, "
            "recipient_domain_not_allowed, too_many_recipients, payload_too_large (413), "
            "duplicate_email_id (409)."
        ),
    )
    def post(self, request):
        serializer = SendEmailInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        message = message_submit(api_key=request.auth, data=serializer.validated_data)
        output = {
            "email_id": message.email_id,
            "group_id": message.group_id,
            "status": message.status,
            "recipients": [{"email": r.email, "status": r.status} for r in message.recipients_list],
        }
        return Response(SendEmailOutputSerializer(output).data, status=status.HTTP_202_ACCEPTED)


class EmailDetailApi(APIView):
    permission_classes = [CanRead]

    @extend_schema(
        operation_id="get_email",
        responses={200: EmailDetailOutputSerializer, **ERRORS, 404: OpenApiResponse(ErrorBodySerializer)},
    )
    def get(self, request, email_id: str):
        message = message_get(email_id=email_id)
        return Response(EmailDetailOutputSerializer(message).data)


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
        return Response(
            {"status": "ok" if ready else "unavailable", "checks": checks, "provider": settings.EMAIL_PROVIDER},
            status=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE,
        )
