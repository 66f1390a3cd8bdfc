"""HTTP endpoints of the tracking side: group records, group analytics, the SNS webhook."""

import logging

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.db import transaction
from django.http import JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from emailsvc.auth import CanRead
from emailsvc.bulk import index_lookups
from emailsvc.errors import EmailsvcError, ErrorBodySerializer, error_body
from emailsvc.parsers import JsonTooDeep, json_loads_limited
from emailsvc.serializers import EmailPageOutputSerializer, EmailSummaryOutputSerializer
from tracking.apply import sns_notification_apply
from tracking.normalize import MalformedEvent
from tracking.selectors import group_analytics, group_messages
from tracking.serializers import GroupAnalyticsOutputSerializer
from tracking.sns import (
    SnsVerificationError,
    sns_message_verify,
    sns_subscription_confirm,
)

logger = logging.getLogger(__name__)

READ_ERRORS = {
    401: OpenApiResponse(ErrorBodySerializer, description="Missing or invalid API key"),
    403: OpenApiResponse(ErrorBodySerializer, description="API key permission too low"),
    404: OpenApiResponse(ErrorBodySerializer, description="not_found"),
}


class NewestFirstPagination(CursorPagination):
    # By id, which is unique and follows acceptance: the cursor is one value, so
    # a page deep into a million emails is an index range, never an OFFSET over
    # emails accepted in the same instant.
    ordering = ("-id",)
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500


class GroupEmailsApi(APIView):
    permission_classes = [CanRead]

    @extend_schema(
        operation_id="list_group_emails",
        responses={200: EmailPageOutputSerializer, **READ_ERRORS},
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


def _error(code: str, detail: str, status: int) -> JsonResponse:
    """The API's error body (emailsvc.errors) from a plain Django view."""
    error = EmailsvcError(detail, code=code)
    return JsonResponse(error_body(error), status=status)


@method_decorator(csrf_exempt, name="dispatch")
class SesSnsWebhookView(View):
    """POST target of an SNS HTTPS subscription carrying SES events.

    Every message must carry a valid SNS signature, be fresh and come from a
    topic in SNS_ALLOWED_TOPIC_ARNS; anything else is refused with 403 and
    changes nothing. SNS posts `text/plain` JSON, so this is a plain Django view.
    """

    http_method_names = ["post"]

    def http_method_not_allowed(self, request, *args, **kwargs):
        response = _error("method_not_allowed", "Only POST (from Amazon SNS) is accepted here.", 405)
        response["Allow"] = "POST"
        return response

    def post(self, request):
        try:
            message = json_loads_limited(request.body)
        except JsonTooDeep as error:
            return _error("invalid_json", f"The body is not valid JSON: {error}", 400)
        except (ValueError, UnicodeDecodeError):
            return _error("invalid_json", "The body is not JSON.", 400)
        if not isinstance(message, dict):
            return _error("invalid_json", "The body is not a JSON object.", 400)
        header_type = request.headers.get("x-amz-sns-message-type")
        if header_type and header_type != message.get("Type"):
            return _error("sns_malformed", "x-amz-sns-message-type does not match the body's Type.", 400)
        # The topic first: a stranger's message never makes us fetch a certificate.
        if message.get("TopicArn") not in settings.SNS_ALLOWED_TOPIC_ARNS:
            logger.warning("SNS message refused: topic not allowed topic=%.200s", message.get("TopicArn"))
            return _error("sns_topic_not_allowed", "The topic is not in SNS_ALLOWED_TOPIC_ARNS.", 403)
        try:
            sns_message_verify(message, max_age_seconds=settings.SNS_MAX_AGE_SECONDS)
        except SnsVerificationError as error:
            logger.warning("SNS message refused code=%s", error.code)
            return _error(error.code, error.detail, 403)

        if message["Type"] == "SubscriptionConfirmation":
            try:
                sns_subscription_confirm(topic_arn=message["TopicArn"], token=message["Token"])
            except (ClientError, BotoCoreError) as error:
                # SNS sends the confirmation again; the operator sees why in the log.
                logger.error("SNS subscription not confirmed topic=%s: %s", message["TopicArn"], error)
                return _error("sns_confirm_failed", "The subscription could not be confirmed with Amazon SNS.", 502)
            return JsonResponse({"status": "confirmed"})
        if message["Type"] != "Notification":
            return JsonResponse({"status": "ignored"})
        try:
            applied = sns_notification_apply(message=message)
        except MalformedEvent as error:
            logger.error("SNS notification with an unreadable SES event message_id=%s: %s", message.get("MessageId"), error)
            return _error("invalid_event", "The notification does not hold a readable SES event.", 400)
        outcomes = [a.outcome for a in applied]
        return JsonResponse({"status": "ok", **{name: outcomes.count(name) for name in ("applied", "duplicate", "unmatched")}})
