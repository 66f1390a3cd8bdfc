"""HTTP endpoints of the tracking side: group records, group analytics, the SNS webhook,
outbound status webhook subscriptions and their deliveries."""

import logging

from django.conf import settings
from django.db import transaction
from django.http import JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import Forbidden, ValidationFailed, error_for_status
from core.fields import cursor_page_serializer
from core.pagination import BAD_PAGE_QUERY, NewestFirstPagination, PageQuerySerializer
from core.parsers import JsonTooDeep, json_loads_limited
from core.responses import ErrorBodySerializer, error_response
from core.sql import index_lookups
from emailsvc.api.auth import CanRead, FullAccess
from emailsvc.api.emails_outputs import EmailPageOutputSerializer, EmailSummaryOutputSerializer
from tracking.apply import sns_notification_apply
from tracking.normalize import MalformedEvent
from tracking.selectors import group_analytics, group_messages
from tracking.serializers import (
    GroupAnalyticsOutputSerializer,
    WebhookCreatedOutputSerializer,
    WebhookCreateInputSerializer,
    WebhookDeliveriesQuerySerializer,
    WebhookDeliveryOutputSerializer,
    WebhookOutputSerializer,
    WebhookTestOutputSerializer,
)
from tracking.sns import (
    SnsVerificationError,
    sns_message_verify,
    sns_subscription_confirm,
)
from tracking.webhooks.deliveries import webhook_deliveries, webhook_delivery_get, webhook_delivery_resend
from tracking.webhooks.endpoints import (
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_enable,
    webhook_endpoint_get,
    webhook_endpoints,
)
from tracking.webhooks.probe import webhook_test_send

logger = logging.getLogger(__name__)

READ_ERRORS = {
    401: OpenApiResponse(ErrorBodySerializer, description="Missing or invalid API key"),
    403: OpenApiResponse(ErrorBodySerializer, description="API key permission too low"),
    404: OpenApiResponse(ErrorBodySerializer, description="not_found"),
}


class GroupEmailsApi(APIView):
    permission_classes = [CanRead]

    @extend_schema(
        operation_id="list_group_emails",
        parameters=[PageQuerySerializer],
        responses={200: EmailPageOutputSerializer, **READ_ERRORS, **BAD_PAGE_QUERY},
        description="The emails of a group, newest first, cursor-paginated (`limit` ≤ 500, default 50).",
    )
    def get(self, request, group_id: str):
        paginator = NewestFirstPagination()
        with transaction.atomic():  # a page and its recipients: bounded lookups by key
            index_lookups()
            page = paginator.paginate_queryset(group_messages(group_id=group_id), request, view=self)
            data = EmailSummaryOutputSerializer(page, many=True).data
        return paginator.get_paginated_response(data)


class GroupAnalyticsApi(APIView):
    permission_classes = [CanRead]

    @extend_schema(
        operation_id="group_analytics",
        responses={200: GroupAnalyticsOutputSerializer, **READ_ERRORS},
        description="Delivery and engagement counts of a group's recipients, with rates.",
    )
    def get(self, request, group_id: str):
        return Response(GroupAnalyticsOutputSerializer(group_analytics(group_id=group_id)).data)


@method_decorator(csrf_exempt, name="dispatch")
class SesSnsWebhookView(View):
    """POST target of an SNS HTTPS subscription carrying SES events.

    Every message must carry a valid SNS signature, be fresh and come from a
    topic in SNS_ALLOWED_TOPIC_ARNS; anything else is refused with 403 and
    changes nothing. SNS posts `text/plain` JSON, so this is a plain Django view;
    the errors it raises are answered by core.middleware like every other.
    """

    http_method_names = ["post"]

    def http_method_not_allowed(self, request, *args, **kwargs):
        response = error_response(error_for_status(405, "Only POST (from Amazon SNS) is accepted here."))
        response["Allow"] = "POST"
        return response

    def post(self, request):
        try:
            message = json_loads_limited(request.body)
        except JsonTooDeep as error:
            raise ValidationFailed(f"The body is not valid JSON: {error}", code="invalid_json") from None
        except (ValueError, UnicodeDecodeError):
            raise ValidationFailed("The body is not JSON.", code="invalid_json") from None
        if not isinstance(message, dict):
            raise ValidationFailed("The body is not a JSON object.", code="invalid_json")
        header_type = request.headers.get("x-amz-sns-message-type")
        if header_type and header_type != message.get("Type"):
            raise ValidationFailed("x-amz-sns-message-type does not match the body's Type.", code="sns_malformed")
        # The topic first: a stranger's message never makes us fetch a certificate.
        if message.get("TopicArn") not in settings.SNS_ALLOWED_TOPIC_ARNS:
            logger.warning("SNS message refused: topic not allowed topic=%.200s", message.get("TopicArn"))
            raise Forbidden("The topic is not in SNS_ALLOWED_TOPIC_ARNS.", code="sns_topic_not_allowed")
        try:
            sns_message_verify(message, max_age_seconds=settings.SNS_MAX_AGE_SECONDS)
        except SnsVerificationError as error:
            logger.warning("SNS message refused code=%s", error.code)
            raise

        if message["Type"] == "SubscriptionConfirmation":
            sns_subscription_confirm(topic_arn=message["TopicArn"], token=message["Token"])
            return JsonResponse({"status": "confirmed"})
        if message["Type"] != "Notification":
            return JsonResponse({"status": "ignored"})
        try:
            applied = sns_notification_apply(message=message)
        except MalformedEvent as error:
            logger.error("SNS notification with an unreadable SES event message_id=%s: %s", message.get("MessageId"), error)
            raise ValidationFailed("The notification does not hold a readable SES event.", code="invalid_event") from None
        outcomes = [a.outcome for a in applied]
        return JsonResponse({"status": "ok", **{name: outcomes.count(name) for name in ("applied", "duplicate", "unmatched")}})


# --- Outbound status webhooks (SPEC §4 /webhooks, §6.6): `full` keys only ------------

WEBHOOK_ERRORS = {
    401: OpenApiResponse(ErrorBodySerializer, description="Missing or invalid API key"),
    403: OpenApiResponse(ErrorBodySerializer, description="API key permission too low"),
}
WEBHOOK_NOT_FOUND = {404: OpenApiResponse(ErrorBodySerializer, description="webhook_not_found")}
ENDPOINT_ID = OpenApiParameter("endpoint_id", str, OpenApiParameter.PATH, description="The webhook's id (`wh_…`)")
DELIVERY_ID = OpenApiParameter(
    "delivery_id", str, OpenApiParameter.PATH, description="The delivery's id: its `webhook-id` header (`msg_…`)"
)


class WebhookListApi(APIView):
    permission_classes = [FullAccess]

    @extend_schema(
        operation_id="list_webhooks",
        parameters=[PageQuerySerializer],
        responses={
            200: cursor_page_serializer(WebhookOutputSerializer, "WebhookPageOutputSerializer"),
            **WEBHOOK_ERRORS,
            **BAD_PAGE_QUERY,
        },
        description="The status-change webhooks, newest first, cursor-paginated (`limit` ≤ 500, default 50).",
    )
    def get(self, request):
        paginator = NewestFirstPagination()
        page = paginator.paginate_queryset(webhook_endpoints(), request, view=self)
        return paginator.get_paginated_response(WebhookOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="create_webhook",
        request=WebhookCreateInputSerializer,
        responses={
            201: WebhookCreatedOutputSerializer,
            400: OpenApiResponse(
                ErrorBodySerializer,
                description="invalid_webhook_url (not https, credentials, fragment, bad host or port), "
                "webhook_target_not_allowed (the host resolves to a loopback, private, link-local, multicast "
                "or reserved address), webhook_host_unresolvable, missing_fields, invalid_field, invalid_json",
            ),
            **WEBHOOK_ERRORS,
        },
        description=(
            "Subscribe a URL to recipient status changes. Each change of a chosen type is POSTed as JSON "
            "signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`). "
            "The answer carries the signing `secret`, shown only this once."
        ),
    )
    def post(self, request):
        serializer = WebhookCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint, _secret = webhook_endpoint_create(**serializer.validated_data)
        return Response(WebhookCreatedOutputSerializer(endpoint).data, status=status.HTTP_201_CREATED)


class WebhookDetailApi(APIView):
    permission_classes = [FullAccess]

    @extend_schema(
        operation_id="get_webhook",
        parameters=[ENDPOINT_ID],
        responses={200: WebhookOutputSerializer, **WEBHOOK_ERRORS, **WEBHOOK_NOT_FOUND},
        description="One webhook (never its secret), with whether it is enabled and why not.",
    )
    def get(self, request, endpoint_id: str):
        return Response(WebhookOutputSerializer(webhook_endpoint_get(endpoint_id=endpoint_id)).data)

    @extend_schema(
        operation_id="delete_webhook",
        parameters=[ENDPOINT_ID],
        request=None,
        responses={204: None, **WEBHOOK_ERRORS, **WEBHOOK_NOT_FOUND},
        description="Unsubscribe: the webhook and its deliveries are deleted; nothing more is sent.",
    )
    def delete(self, request, endpoint_id: str):
        webhook_endpoint_delete(endpoint=webhook_endpoint_get(endpoint_id=endpoint_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookEnableApi(APIView):
    permission_classes = [FullAccess]

    @extend_schema(
        operation_id="enable_webhook",
        parameters=[ENDPOINT_ID],
        request=None,
        responses={200: WebhookOutputSerializer, **WEBHOOK_ERRORS, **WEBHOOK_NOT_FOUND},
        description=(
            "Enable a webhook that was disabled (after continuous failure or a 410 Gone answer): its pending "
            "deliveries are sent at once, and new changes again. Changes made while it was disabled are not sent. "
            "Enabling an enabled webhook changes nothing."
        ),
    )
    def post(self, request, endpoint_id: str):
        endpoint = webhook_endpoint_enable(endpoint=webhook_endpoint_get(endpoint_id=endpoint_id))
        return Response(WebhookOutputSerializer(endpoint).data)


class WebhookTestApi(APIView):
    permission_classes = [FullAccess]

    @extend_schema(
        operation_id="test_webhook",
        parameters=[ENDPOINT_ID],
        request=None,
        responses={200: WebhookTestOutputSerializer, **WEBHOOK_ERRORS, **WEBHOOK_NOT_FOUND},
        description=(
            "Send a test event now: `{\"type\": \"webhook.test\", \"timestamp\", \"data\": {\"webhook\", \"at\", "
            "\"detail\"}}`, signed per Standard Webhooks like every event, with a fresh `webhook-id`, to the webhook's "
            "URL (checked as before every delivery), whether it is enabled or not. The answer says what the "
            "receiver answered: `ok` (2xx), `status_code`, `duration_ms`, or the `error`. It is about no email and "
            "is not recorded: the webhook's deliveries and its failure run are unchanged."
        ),
    )
    def post(self, request, endpoint_id: str):
        sent = webhook_test_send(endpoint=webhook_endpoint_get(endpoint_id=endpoint_id))
        return Response(WebhookTestOutputSerializer(sent).data)


class WebhookDeliveriesApi(APIView):
    permission_classes = [FullAccess]

    @extend_schema(
        operation_id="list_webhook_deliveries",
        parameters=[ENDPOINT_ID, WebhookDeliveriesQuerySerializer, PageQuerySerializer],
        responses={
            200: cursor_page_serializer(WebhookDeliveryOutputSerializer, "WebhookDeliveryPageOutputSerializer"),
            400: OpenApiResponse(
                ErrorBodySerializer, description="invalid_field (status, limit, an unknown parameter); invalid_cursor"
            ),
            **WEBHOOK_ERRORS,
            **WEBHOOK_NOT_FOUND,
        },
        description=(
            "The webhook's deliveries, newest first, cursor-paginated (`limit` ≤ 500, default 50): state, "
            "attempts with their answer codes, times and errors, and when the next attempt is due."
        ),
    )
    def get(self, request, endpoint_id: str):
        query = WebhookDeliveriesQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        endpoint = webhook_endpoint_get(endpoint_id=endpoint_id)
        paginator = NewestFirstPagination(filters=WebhookDeliveriesQuerySerializer._declared_fields)
        page = paginator.paginate_queryset(
            webhook_deliveries(endpoint=endpoint, status=query.validated_data.get("status")), request, view=self
        )
        return paginator.get_paginated_response(WebhookDeliveryOutputSerializer(page, many=True).data)


class WebhookDeliveryResendApi(APIView):
    permission_classes = [FullAccess]

    @extend_schema(
        operation_id="resend_webhook_delivery",
        parameters=[DELIVERY_ID],
        request=None,
        responses={
            202: WebhookDeliveryOutputSerializer,
            **WEBHOOK_ERRORS,
            404: OpenApiResponse(ErrorBodySerializer, description="webhook_delivery_not_found"),
            409: OpenApiResponse(ErrorBodySerializer, description="webhook_disabled: enable the webhook first"),
        },
        description=(
            "Send one delivery again now, with the same `webhook-id` (receivers that already have it may ignore it), "
            "whatever its state. The attempt is made by a worker; its outcome shows in the deliveries list."
        ),
    )
    def post(self, request, delivery_id: str):
        delivery = webhook_delivery_resend(delivery=webhook_delivery_get(delivery_id=delivery_id))
        return Response(WebhookDeliveryOutputSerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
