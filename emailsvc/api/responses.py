"""The error answers every resource of the sending API documents."""

from drf_spectacular.utils import OpenApiResponse

from core.responses import ErrorBodySerializer

ERRORS = {
    400: OpenApiResponse(ErrorBodySerializer, description="Validation error (code in `error`)"),
    401: OpenApiResponse(ErrorBodySerializer, description="Missing or invalid API key"),
    403: OpenApiResponse(ErrorBodySerializer, description="API key permission too low"),
}
