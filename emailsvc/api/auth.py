"""API-key authentication and the three permission levels (SPEC §4, §9)."""

from dataclasses import dataclass

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions

from emailsvc.keys import ApiKeyRefused, api_key_identify
from emailsvc.models import ApiKey


@dataclass(frozen=True)
class ApiClient:
    """What `request.user` is for an API call: the key that made it."""

    api_key: ApiKey
    is_authenticated: bool = True
    is_anonymous: bool = False

    def __str__(self) -> str:
        return f"api-key:{self.api_key.prefix}"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <key>` or `X-API-Key: <key>`."""

    def authenticate(self, request):
        raw = request.META.get("HTTP_X_API_KEY", "").strip()
        if not raw:
            scheme, _, value = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
            if not scheme:
                return None
            if scheme.lower() != "bearer" or not value.strip():
                raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
            raw = value.strip()
        try:
            api_key = api_key_identify(raw_key=raw)
        except ApiKeyRefused as error:
            # Its code (api_key_revoked, api_key_expired) is the answer's (core.responses).
            raise exceptions.AuthenticationFailed(error.detail, code=error.code) from None
        return ApiClient(api_key=api_key), api_key

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = ApiKeyAuthentication
    name = ["BearerKey", "HeaderKey"]

    def get_security_definition(self, auto_schema):
        return [
            {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
            {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        ]


class _KeyPermission(permissions.BasePermission):
    required: str = ApiKey.Permission.READ_ONLY

    def has_permission(self, request, view) -> bool:
        api_key = request.auth
        if not isinstance(api_key, ApiKey):
            raise exceptions.NotAuthenticated("A valid API key is required.")
        if not api_key.allows(self.required):
            raise exceptions.PermissionDenied(
                f"This API key has permission '{api_key.permission}'; this call needs '{self.required}'."
            )
        return True


class CanRead(_KeyPermission):
    required = ApiKey.Permission.READ_ONLY


class CanSend(_KeyPermission):
    required = ApiKey.Permission.SENDING


class FullAccess(_KeyPermission):
    required = ApiKey.Permission.FULL
