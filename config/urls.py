from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerView,
)

from console.metrics import metrics_view
from console.probes import HealthApi, ReadinessApi
from emailsvc.streams.unsubscribe import resubscribe_view, unsubscribe_view
from tracking.apis import SesSnsWebhookView
from tracking.hit_views import click_redirect_view, open_pixel_view

urlpatterns = [
    # The operator console (address page, operations pages) first: the admin's
    # own patterns would take /admin/<anything>/ for an app's index.
    path("admin/", include("console.urls")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema", template_name="emailsvc/redoc.html"), name="redoc"),
    path("api/v1/", include("emailsvc.urls")),
    path("api/v1/", include("tracking.urls")),
    path("webhooks/ses/", SesSnsWebhookView.as_view(), name="webhook-ses"),
    # Without the slash too: SNS does not follow the redirect APPEND_SLASH would answer.
    path("webhooks/ses", SesSnsWebhookView.as_view()),
    # emailsvc's own open and click tracking (TRACKING_DOMAIN points here).
    path("t/o/<str:token>", open_pixel_view, name="tracking-open"),
    path("t/c/<str:token>", click_redirect_view, name="tracking-click"),
    # RFC 8058 one-click unsubscribe links (emailsvc.streams.unsubscribe).
    path("u/<str:token>", unsubscribe_view, name="unsubscribe"),
    path("u/<str:token>/resubscribe", resubscribe_view, name="resubscribe"),
    path("healthz", HealthApi.as_view(), name="healthz"),
    path("readyz", ReadinessApi.as_view(), name="readyz"),
    path("metrics", metrics_view, name="metrics"),
]
