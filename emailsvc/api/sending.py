"""/api/v1/sending-status and /sending-status/resume: the safety breaker's pauses (SPEC §4)."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from core.fields import TextField
from emailsvc.api.auth import CanRead, FullAccess
from emailsvc.api.responses import ERRORS
from emailsvc.sending_control.breaker import sending_resume, sending_status


class PauseFiguresSerializer(serializers.Serializer):
    sent = serializers.IntegerField()
    bounced = serializers.IntegerField()
    complained = serializers.IntegerField()
    bounce_rate = serializers.FloatField(allow_null=True)
    complaint_rate = serializers.FloatField(allow_null=True)


class PauseStateSerializer(serializers.Serializer):
    paused = serializers.BooleanField()
    cause = serializers.CharField(allow_null=True, help_text="breaker, provider, quota or operator")
    reason = serializers.CharField(allow_blank=True)
    since = serializers.DateTimeField(allow_null=True)
    until = serializers.DateTimeField(allow_null=True, help_text="When the pause lifts on its own (quota, cool-down)")
    figures_at_pause = serializers.DictField(allow_null=True)
    last_24h = PauseFiguresSerializer()


class SendingStreamStatusSerializer(PauseStateSerializer):
    stream = serializers.CharField(help_text="A message stream of the domain (docs/streams.md)")

    def get_fields(self):
        fields = super().get_fields()
        return {"stream": fields.pop("stream"), **fields}


class SendingDomainStatusSerializer(PauseStateSerializer):
    domain = serializers.CharField(help_text='A sending domain, or "*" for the whole account')
    streams = SendingStreamStatusSerializer(
        many=True,
        help_text=(
            "The domain's message streams that sent in the last 24 h or are paused: each paused on its own by the "
            "breaker when its rates cross the lines (`paused` above: the domain as a whole). Empty for the account"
        ),
    )

    def get_fields(self):
        fields = super().get_fields()
        return {"domain": fields.pop("domain"), **fields}


class BreakerThresholdsSerializer(serializers.Serializer):
    bounce_rate_pause = serializers.FloatField()
    complaint_rate_pause = serializers.FloatField()
    min_sent = serializers.IntegerField()
    auto_resume_hours = serializers.FloatField(allow_null=True)


class SendingStatusOutputSerializer(serializers.Serializer):
    account = SendingDomainStatusSerializer()
    domains = SendingDomainStatusSerializer(many=True)
    thresholds = BreakerThresholdsSerializer()


class SendingResumeInputSerializer(serializers.Serializer):
    domain = TextField(
        required=False, max_length=255, single_line=True, refuse_blank=True,
        help_text='The domain to resume, "*" for the account; leave out to resume every pause',
    )
    stream = TextField(
        required=False, max_length=64, single_line=True, allow_blank=True,
        help_text=(
            "Only the pause of this message stream (of `domain`, or of every domain); an empty string: only the "
            "pauses of domains as a whole; leave out to resume the domain's pauses of every stream too"
        ),
    )

    def validate_domain(self, value):
        return value if value == "*" else value.strip().lower()

    def validate_stream(self, value):
        return value.strip()


class SendingResumeOutputSerializer(serializers.Serializer):
    resumed = serializers.IntegerField(help_text="How many pauses ended")


class SendingStatusApi(APIView):
    permission_classes = [CanRead]

    @extend_schema(
        operation_id="sending_status",
        responses={200: SendingStatusOutputSerializer, **ERRORS},
        description=(
            "Whether the account, each sending domain and each message stream of a domain may send: the safety "
            "breaker's, operators' and the provider's pauses (cause, reason, since, until, the figures that tripped "
            "it) and the rolling 24 h sent / bounced / complained counts and rates, with the thresholds."
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
        description='Resume a paused sending domain (`"domain": "example.com"`: its pause as a whole and its '
        'streams\' pauses), one stream of it (`"stream": "broadcast"` too), the account (`"*"`), or every active '
        "pause (nothing given). Held emails no other pause still covers are queued again and sent, each once.",
    )
    def post(self, request):
        serializer = SendingResumeInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        resumed = sending_resume(
            domain=serializer.validated_data.get("domain"), stream=serializer.validated_data.get("stream"),
            by=str(request.user),
        )
        return Response(SendingResumeOutputSerializer({"resumed": resumed}).data)
