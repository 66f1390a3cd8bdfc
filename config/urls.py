from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from emailsvc.apis import HealthApi, ReadinessApi
from tracking.apis import SesSnsWebhookView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/v1/", include("emailsvc.urls")),
    path("api/v1/", include("tracking.urls")),
    path("webhooks/ses/", SesSnsWebhookView.as_view(), name="webhook-ses"),
    path("healthz", HealthApi.as_view(), name="healthz"),
    path("readyz", ReadinessApi.as_view(), name="readyz"),
]
