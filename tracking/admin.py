from django.contrib import admin

from emailsvc.admin import MessageAdmin
from tracking.models import EngagementEvent


class EngagementEventInline(admin.TabularInline):
    """The event timeline on a message's admin page."""

    model = EngagementEvent
    fk_name = "message"
    extra = 0
    can_delete = False
    ordering = ("occurred_at", "id")
    fields = ("occurred_at", "event_type", "recipient_email", "detail", "source", "event_id")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


MessageAdmin.inlines = [*MessageAdmin.inlines, EngagementEventInline]


@admin.register(EngagementEvent)
class EngagementEventAdmin(admin.ModelAdmin):
    """Every provider event received; read-only. Look up an address's history here."""

    list_display = ("occurred_at", "event_type", "recipient_email", "message", "source", "received_at")
    list_filter = ("event_type", "source")
    search_fields = ("recipient_email", "event_id", "provider_message_id", "message__email_id")
    date_hierarchy = "occurred_at"
    list_select_related = ("message",)
    readonly_fields = [f.name for f in EngagementEvent._meta.fields]
    raw_id_fields = ("message", "recipient")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # A deleted event would be applied again if it were replayed.
        return False
