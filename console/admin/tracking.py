from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect
from django.urls import path
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from core.addresses import address_forms
from core.admin_lists import BigTableAdmin, address_url, admin_change_url
from core.errors import Conflict
from emailsvc.models import Message, Status
from emailsvc.selectors import one_or_none
from tracking.models import EngagementEvent, WebhookDelivery, WebhookEndpoint
from tracking.webhooks.deliveries import webhook_delivery_resend
from tracking.webhooks.endpoints import webhook_endpoint_disable, webhook_endpoint_enable
from tracking.webhooks.probe import webhook_test_send


@admin.register(EngagementEvent)
class EngagementEventAdmin(BigTableAdmin):
    """Every provider event received; read-only. An address's whole history
    (with its suppression) is on the console's address page; a message's
    timeline on the message page."""

    list_display = ("occurred_at", "event_type", "address", "email", "source", "received_at")
    list_filter = ("event_type", "source")
    search_help_text = "Exact: an address, an email_id, a provider message id or an event id."
    readonly_fields = [f.name for f in EngagementEvent._meta.fields]
    raw_id_fields = ("message", "recipient")

    def get_queryset(self, request):
        # The message's email_id only: its bodies stay on disk.
        columns = [f.name for f in EngagementEvent._meta.concrete_fields if f.name != "raw"]
        return super().get_queryset(request).select_related("message").only(*columns, "message__email_id")

    def search(self, queryset, term):
        if "@" in term:
            return queryset.filter(recipient_email__in=address_forms(term))
        message = one_or_none(Message.objects.filter(email_id=term).only("pk"))
        if message is not None:
            return queryset.filter(message_id=message.pk)
        return queryset.filter(Q(event_id=term) | Q(provider_message_id=term))

    @admin.display(description="address")
    def address(self, event: EngagementEvent):
        return format_html('<a href="{}">{}</a>', address_url(event.recipient_email), event.recipient_email)

    @admin.display(description="email")
    def email(self, event: EngagementEvent):
        if event.message is None:
            return "—"
        return format_html('<a href="{}">{}</a>', admin_change_url(event.message), event.message.email_id)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # A deleted event would be applied again if it were replayed.
        return False


# --- Outbound status webhooks: created through the API (the secret is shown there once) ---


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ("public_id", "url", "event_types", "enabled", "disabled_at", "first_failure_at", "last_success_at")
    list_filter = (("disabled_at", admin.EmptyFieldListFilter),)
    search_fields = ("public_id", "url", "description")
    fields = (
        "public_id", "url", "event_types", "description", "created_at", "disabled_at", "disabled_reason",
        "first_failure_at", "last_failure_at", "last_success_at",
    )  # never the secret
    readonly_fields = fields
    actions = ["enable", "disable"]
    change_form_template = "admin/console/webhookendpoint_change_form.html"

    def get_urls(self):
        test = self.admin_site.admin_view(require_POST(self.test_view))
        return [path("<int:endpoint_pk>/test/", test, name="tracking_webhookendpoint_test"), *super().get_urls()]

    def test_view(self, request, endpoint_pk: int):
        """The "Send a test event" button: a signed `webhook.test` POST now, its answer shown as a message."""
        endpoint = get_object_or_404(WebhookEndpoint, pk=endpoint_pk)
        if not self.has_view_permission(request, endpoint):
            raise PermissionDenied
        sent = webhook_test_send(endpoint=endpoint)
        outcome = sent.outcome
        if outcome.ok:
            self.message_user(
                request,
                f"Test event {sent.webhook_id} sent: the receiver answered {outcome.status_code} "
                f"in {outcome.duration_ms} ms.",
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request,
                f"Test event {sent.webhook_id} failed after {outcome.duration_ms} ms: {outcome.error}",
                messages.ERROR,
            )
        return redirect("admin:tracking_webhookendpoint_change", endpoint.pk)

    @admin.display(boolean=True)
    def enabled(self, obj: WebhookEndpoint) -> bool:
        return obj.enabled

    @admin.action(description="Enable the selected webhooks (pending deliveries are sent at once)")
    def enable(self, request, queryset):
        for endpoint in queryset:
            webhook_endpoint_enable(endpoint=endpoint)
        self.message_user(request, f"{queryset.count()} webhook(s) enabled.", messages.SUCCESS)

    @admin.action(description="Disable the selected webhooks")
    def disable(self, request, queryset):
        disabled = sum(
            webhook_endpoint_disable(endpoint=endpoint, reason=f"disabled by {request.user} in the admin")
            for endpoint in queryset
        )
        self.message_user(request, f"{disabled} webhook(s) disabled.", messages.SUCCESS)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class _EventTypeFilter(admin.SimpleListFilter):
    """The statuses a delivery can be about, from the model's choices: Django's
    default filter would ask the (big) table for its distinct values on every page."""

    title = "event type"
    parameter_name = "event_type"

    def lookups(self, request, model_admin):
        return Status.choices

    def queryset(self, request, queryset):
        return queryset.filter(event_type=self.value()) if self.value() else queryset


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(BigTableAdmin):
    """Every delivery of a status change to a webhook, with its attempts; read-only."""

    search_help_text = "Exact: a delivery's webhook-id (msg_…) or a webhook's id (wh_…)."

    list_display = (
        "webhook_id", "endpoint", "event_type", "status", "attempts", "last_status_code", "last_attempt_at",
        "next_attempt_at", "last_error",
    )
    list_filter = ("status", _EventTypeFilter)
    list_select_related = ("endpoint",)
    raw_id_fields = ("endpoint", "change")
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    actions = ["resend"]

    def search(self, queryset, term):
        if term.startswith("wh_"):
            return queryset.filter(endpoint__public_id=term)
        return queryset.filter(webhook_id=term)

    @admin.action(description="Re-send the selected deliveries now (same webhook-id)")
    def resend(self, request, queryset):
        sent = 0
        for delivery in queryset:
            try:
                webhook_delivery_resend(delivery=delivery)
                sent += 1
            except Conflict as error:
                self.message_user(request, f"{delivery.webhook_id}: {error.detail}", messages.WARNING)
        self.message_user(request, f"{sent} delivery(ies) will be sent again.", messages.SUCCESS)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
