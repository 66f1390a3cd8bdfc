from django.urls import path

from tracking.apis import (
    GroupAnalyticsApi,
    GroupEmailsApi,
    WebhookDeliveriesApi,
    WebhookDeliveryResendApi,
    WebhookDetailApi,
    WebhookEnableApi,
    WebhookListApi,
    WebhookTestApi,
)

urlpatterns = [
    # <path:…>: a group id is any string, "/" included.
    path("groups/<path:group_id>/emails", GroupEmailsApi.as_view(), name="group-emails"),
    path("groups/<path:group_id>/analytics", GroupAnalyticsApi.as_view(), name="group-analytics"),
    path("webhooks", WebhookListApi.as_view(), name="webhooks"),
    path("webhooks/deliveries/<str:delivery_id>/resend", WebhookDeliveryResendApi.as_view(), name="webhook-delivery-resend"),
    path("webhooks/<str:endpoint_id>", WebhookDetailApi.as_view(), name="webhook-detail"),
    path("webhooks/<str:endpoint_id>/enable", WebhookEnableApi.as_view(), name="webhook-enable"),
    path("webhooks/<str:endpoint_id>/test", WebhookTestApi.as_view(), name="webhook-test"),
    path("webhooks/<str:endpoint_id>/deliveries", WebhookDeliveriesApi.as_view(), name="webhook-deliveries"),
]
