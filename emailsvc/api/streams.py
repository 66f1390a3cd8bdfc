"""/api/v1/streams: message streams — list, create, read, change (docs/streams.md).
`read_only` keys read; `full` keys create and change. A key limited to streams
sees and changes only those, and cannot create one."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import Forbidden
from core.fields import TextField
from core.responses import ErrorBodySerializer
from emailsvc.api.auth import CanRead, FullAccess
from emailsvc.api.emails_track import TrackInputSerializer
from emailsvc.api.responses import ERRORS
from emailsvc.keys import api_key_stream_check
from emailsvc.streams.models import Stream
from emailsvc.streams.selectors import stream_get, streams_list
from emailsvc.streams.services import stream_create, stream_update


class _StrictSerializer(serializers.Serializer):
    def to_internal_value(self, data):
        if isinstance(data, dict) and (unknown := sorted(set(data) - set(self.fields))):
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class StreamUpdateInputSerializer(_StrictSerializer):
    description = TextField(required=False, allow_blank=True, max_length=200, single_line=True)
    configuration_set = TextField(
        required=False, allow_blank=True, max_length=64, single_line=True,
        help_text="SES configuration set of the stream's emails (letters, digits, _ and -); empty: SES_CONFIGURATION_SET",
    )
    unsubscribe = serializers.ChoiceField(
        choices=Stream.Unsubscribe.values, required=False,
        help_text='`always`: every email carries RFC 8058 List-Unsubscribe; `on_request`: only with "unsubscribe": true',
    )
    rate_share = serializers.FloatField(
        required=False, min_value=0.01, max_value=1.0,
        help_text="The most of SEND_RATE_PER_SECOND the stream's emails may take (0.01–1; 1: no cap)",
    )
    track = TrackInputSerializer(
        required=False,
        help_text="Open and click tracking of the stream's sends that carry no `track` of their own (both off unless given)",
    )

    @property
    def settings(self) -> dict:
        """The validated input as the stream's fields (`track` as track_opens and track_clicks)."""
        fields = dict(self.validated_data)
        if (track := fields.pop("track", None)) is not None:
            fields.update(track_opens=track["opens"], track_clicks=track["clicks"])
        return fields


class StreamCreateInputSerializer(StreamUpdateInputSerializer):
    name = TextField(max_length=64, single_line=True, refuse_blank=True, help_text="a-z, 0-9, - and _; 1 to 64")


class StreamTrackOutputSerializer(serializers.Serializer):
    opens = serializers.BooleanField()
    clicks = serializers.BooleanField()


class StreamOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    configuration_set = serializers.CharField(help_text="Empty: SES_CONFIGURATION_SET")
    unsubscribe = serializers.ChoiceField(choices=Stream.Unsubscribe.values)
    rate_share = serializers.FloatField()
    track = StreamTrackOutputSerializer()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class StreamListOutputSerializer(serializers.Serializer):
    data = StreamOutputSerializer(many=True)


NOT_FOUND = {404: OpenApiResponse(ErrorBodySerializer, description="stream_not_found")}
RIGHTS = {403: OpenApiResponse(ErrorBodySerializer, description="Not a full key; key_stream_not_allowed; key_rights_exceeded")}


class StreamListApi(APIView):
    def get_permissions(self):
        return [FullAccess() if self.request.method == "POST" else CanRead()]

    @extend_schema(
        operation_id="list_streams",
        responses={200: StreamListOutputSerializer, **ERRORS},
        description="Every message stream, by name (a key limited to streams: those).",
    )
    def get(self, request):
        streams = streams_list()
        if request.auth.streams:
            streams = streams.filter(name__in=request.auth.streams)
        return Response(StreamListOutputSerializer({"data": streams}).data)

    @extend_schema(
        operation_id="create_stream",
        request=StreamCreateInputSerializer,
        responses={
            201: StreamOutputSerializer, **ERRORS, **RIGHTS,
            409: OpenApiResponse(ErrorBodySerializer, description="stream_exists"),
        },
        description="Create a stream. Errors: invalid_stream_name, invalid_field (400); a key limited to streams "
        "cannot (403 key_rights_exceeded).",
    )
    def post(self, request):
        serializer = StreamCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        if request.auth.streams:
            raise Forbidden("A key limited to streams cannot create one.", code="key_rights_exceeded")
        return Response(StreamOutputSerializer(stream_create(**serializer.settings)).data, status=status.HTTP_201_CREATED)


class StreamDetailApi(APIView):
    def get_permissions(self):
        return [FullAccess() if self.request.method == "PATCH" else CanRead()]

    @extend_schema(
        operation_id="get_stream", responses={200: StreamOutputSerializer, **ERRORS, **RIGHTS, **NOT_FOUND},
        description="One stream.",
    )
    def get(self, request, name: str):
        api_key_stream_check(api_key=request.auth, stream=name)
        return Response(StreamOutputSerializer(stream_get(name=name)).data)

    @extend_schema(
        operation_id="update_stream",
        request=StreamUpdateInputSerializer,
        responses={200: StreamOutputSerializer, **ERRORS, **RIGHTS, **NOT_FOUND},
        description="Change the given settings; the others stay. Applies to emails built from then on. "
        "Errors: invalid_field (400).",
    )
    def patch(self, request, name: str):
        api_key_stream_check(api_key=request.auth, stream=name)
        stream = stream_get(name=name)
        serializer = StreamUpdateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response(StreamOutputSerializer(stream_update(stream=stream, **serializer.settings)).data)
