"""/api/v1/api-keys: API keys — create (the secret shown once), list, read, revoke
(docs/api-keys.md). Only `full` keys manage keys, and never into more rights
than their own."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.fields import MomentField, TextField
from core.responses import ErrorBodySerializer
from emailsvc.api.auth import FullAccess
from emailsvc.api.responses import ERRORS
from emailsvc.keys import api_key_create, api_key_get, api_key_revoke, api_keys_list
from emailsvc.models import ApiKey

MAX_DOMAINS = 100


class ApiKeyCreateInputSerializer(serializers.Serializer):
    name = TextField(max_length=200, single_line=True, refuse_blank=True, help_text="What the key is for, e.g. billing")
    permission = serializers.ChoiceField(
        choices=ApiKey.Permission.values, default=ApiKey.Permission.SENDING,
        help_text="read_only < sending < full; at most the creating key's own",
    )
    domains = serializers.ListField(
        child=TextField(max_length=253, single_line=True, refuse_blank=True), required=False, max_length=MAX_DOMAINS,
        help_text="Sending domains the key may send from (their sub-domains too); empty or left out: any domain",
    )
    streams = serializers.ListField(
        child=TextField(max_length=64, single_line=True, refuse_blank=True), required=False, max_length=MAX_DOMAINS,
        help_text="Message streams the key may send on (others: 403 key_stream_not_allowed); empty or left out: any. "
        "At most the creating key's own (400 stream_not_found for an unknown one)",
    )
    test = serializers.BooleanField(
        default=False, help_text="Test mode: emails are stored as usual but only the SES mailbox simulator answers them"
    )
    expires_at = MomentField(required=False, allow_null=True, help_text="From then on the key is refused (401 api_key_expired)")

    def to_internal_value(self, data):
        if isinstance(data, dict) and (unknown := sorted(set(data) - set(self.fields))):
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class ApiKeyOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The public part of the key (es_<prefix>_…), to tell keys apart")
    permission = serializers.ChoiceField(choices=ApiKey.Permission.values)
    domains = serializers.ListField(child=serializers.CharField(), help_text="Empty: any sending domain")
    streams = serializers.ListField(child=serializers.CharField(), help_text="Empty: any message stream")
    test = serializers.BooleanField()
    state = serializers.ChoiceField(choices=["active", "revoked", "expired"])
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(
        allow_null=True, help_text="Last authenticated use, to the minute (written at most once a minute)"
    )
    created_by = serializers.IntegerField(source="created_by_id", allow_null=True, help_text="The id of the key that created it")


class ApiKeyCreatedOutputSerializer(ApiKeyOutputSerializer):
    key = serializers.CharField(help_text="The secret: shown in this answer only, never again")


class ApiKeyListOutputSerializer(serializers.Serializer):
    data = ApiKeyOutputSerializer(many=True)


RIGHTS = {403: OpenApiResponse(ErrorBodySerializer, description="Not a full key; key_rights_exceeded")}
NOT_FOUND = {404: OpenApiResponse(ErrorBodySerializer, description="api_key_not_found")}


class ApiKeyListApi(APIView):
    permission_classes = [FullAccess]

    @extend_schema(
        operation_id="list_api_keys",
        responses={200: ApiKeyListOutputSerializer, **ERRORS},
        description="Needs `full`. Every key, newest first, revoked and expired ones included; never a secret.",
    )
    def get(self, request):
        return Response(ApiKeyListOutputSerializer({"data": api_keys_list()}).data)

    @extend_schema(
        operation_id="create_api_key",
        request=ApiKeyCreateInputSerializer,
        responses={201: ApiKeyCreatedOutputSerializer, **ERRORS, **RIGHTS},
        description=(
            "Needs `full`. Create a key: 201 with its secret in `key`, shown this once. The new key may not have "
            "more rights than the calling one (a higher permission, domains outside its own or none when it has "
            "some, streams outside its own or none when it has some, live when it is a test key, a later expiry or none "
            "when it expires): 403 key_rights_exceeded. "
            "Errors: invalid_domain, stream_not_found, invalid_field (400)."
        ),
    )
    def post(self, request):
        serializer = ApiKeyCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        api_key, raw_key = api_key_create(**serializer.validated_data, created_by=request.auth)
        api_key.key = raw_key
        return Response(ApiKeyCreatedOutputSerializer(api_key).data, status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(APIView):
    permission_classes = [FullAccess]

    @extend_schema(
        operation_id="get_api_key",
        responses={200: ApiKeyOutputSerializer, **ERRORS, **NOT_FOUND},
        description="Needs `full`. One key (never its secret).",
    )
    def get(self, request, key_id: int):
        return Response(ApiKeyOutputSerializer(api_key_get(key_id=key_id)).data)

    @extend_schema(
        operation_id="revoke_api_key",
        request=None,
        responses={200: ApiKeyOutputSerializer, **ERRORS, **RIGHTS, **NOT_FOUND},
        description=(
            "Needs `full`. Revoke the key: from now on it is refused with 401 api_key_revoked. Answers the revoked "
            "key; revoking again changes nothing. A key may not revoke one with more rights: 403 key_rights_exceeded."
        ),
    )
    def delete(self, request, key_id: int):
        api_key = api_key_revoke(api_key=api_key_get(key_id=key_id), revoked_by=request.auth)
        return Response(ApiKeyOutputSerializer(api_key).data)
