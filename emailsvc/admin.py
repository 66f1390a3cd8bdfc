"""Admin: support staff look up addresses, manage suppressions, keys and messages."""

from django import forms
from django.contrib import admin, messages

from emailsvc.models import ApiKey, Attachment, Message, Recipient, Suppression
from emailsvc.services.api_keys import api_key_create, api_key_revoke
from emailsvc.services.suppressions import suppression_add, suppression_lift


class SuppressionForm(forms.ModelForm):
    email = forms.EmailField(max_length=320)

    class Meta:
        model = Suppression
        fields = ("email", "reason", "note", "expires_at", "source")

    def clean_email(self):
        return self.cleaned_data["email"].strip().lower()


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    form = SuppressionForm
    list_display = ("email", "reason", "source", "created_at", "expires_at")
    list_filter = ("reason",)
    search_fields = ("email", "note", "source")
    ordering = ("-created_at",)
    actions = ["lift"]

    @admin.action(description="Lift the selected suppressions")
    def lift(self, request, queryset):
        lifted = sum(suppression_lift(email=s.email) for s in queryset)
        self.message_user(request, f"Lifted {lifted} suppression(s).", messages.SUCCESS)

    def save_model(self, request, obj, form, change):
        saved = suppression_add(
            email=obj.email, reason=obj.reason, source=obj.source or f"admin:{request.user}",
            note=obj.note, expires_at=obj.expires_at,
        )
        obj.pk = saved.pk

    def delete_model(self, request, obj):
        suppression_lift(email=obj.email)

    def delete_queryset(self, request, queryset):
        for suppression in queryset:
            suppression_lift(email=suppression.email)


class RecipientInline(admin.TabularInline):
    model = Recipient
    extra = 0
    can_delete = False
    fields = (
        "email", "role", "status", "sent_at", "delivered_at", "delayed", "open_count", "last_opened_at",
        "click_count", "bounce", "complained_at", "complaint_feedback_type", "failed_reason",
    )
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


class AttachmentInline(admin.TabularInline):
    model = Attachment
    extra = 0
    can_delete = False
    fields = ("filename", "content_type", "size")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("email_id", "group", "subject", "status", "provider", "attempts", "created_at", "sent_at")
    list_filter = ("status", "provider", "priority")
    search_fields = ("email_id", "group__id", "recipients__email", "provider_message_id")
    date_hierarchy = "created_at"
    # tracking/admin.py adds the event timeline (tracking depends on emailsvc, not the reverse).
    inlines = [RecipientInline, AttachmentInline]
    readonly_fields = [f.name for f in Message._meta.fields]
    list_select_related = ("group",)
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "permission", "created_at", "expires_at", "revoked_at", "last_used_at")
    list_filter = ("permission",)
    search_fields = ("name", "prefix")
    fields = ("name", "permission", "expires_at", "prefix", "created_at", "revoked_at", "last_used_at")
    readonly_fields = ("prefix", "created_at", "revoked_at", "last_used_at")
    actions = ["revoke"]

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request, queryset):
        for api_key in queryset:
            api_key_revoke(api_key=api_key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["name", "permission", "expires_at"])
            return
        api_key, raw_key = api_key_create(name=obj.name, permission=obj.permission, expires_at=obj.expires_at)
        obj.pk = api_key.pk
        self.message_user(
            request, f"API key created. Copy it now, it will not be shown again: {raw_key}", messages.WARNING
        )
