"""Admin: API keys — create one (its secret shown once), with its sending domains
and test mode; see each key's scope, state and last use; revoke
(docs/api-keys.md). Through the services the API uses (emailsvc.keys)."""

from django import forms
from django.contrib import admin, messages

from core.errors import EmailsvcError
from emailsvc.domains.services import domain_name_canonical
from emailsvc.keys import api_key_create, api_key_revoke
from emailsvc.models import ApiKey


class ApiKeyCreateForm(forms.ModelForm):
    domains_text = forms.CharField(
        label="Sending domains", required=False,
        help_text="Comma- or space-separated; the key may send only from these and their sub-domains. Empty: any domain.",
    )

    class Meta:
        model = ApiKey
        fields = ("name", "permission", "domains_text", "test", "expires_at")

    def clean_domains_text(self) -> list[str]:
        names = self.cleaned_data["domains_text"].replace(",", " ").split()
        try:
            return [domain_name_canonical(name, field="domains") for name in names]
        except EmailsvcError as error:
            raise forms.ValidationError(error.detail) from None


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "permission", "scope", "test", "state", "expires_at", "last_used_at")
    list_filter = ("permission", "test")
    search_fields = ("name", "prefix")
    readonly_fields = (
        "prefix", "scope", "test", "state", "created_by", "created_at", "revoked_at", "last_used_at",
    )
    actions = ["revoke"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyCreateForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "permission", "domains_text", "test", "expires_at")
        # Scope and test mode are fixed at creation: a key with other rights is a new key.
        return (
            "name", "permission", "expires_at", "prefix", "scope", "test", "state", "created_by", "created_at",
            "revoked_at", "last_used_at",
        )

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    @admin.display(description="sending domains")
    def scope(self, api_key: ApiKey) -> str:
        return ", ".join(api_key.domains) if api_key.domains else "any"

    @admin.display(description="state")
    def state(self, api_key: ApiKey) -> str:
        return api_key.state

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request, queryset):
        for api_key in queryset:
            api_key_revoke(api_key=api_key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["name", "permission", "expires_at"])
            return
        api_key, raw_key = api_key_create(
            name=obj.name, permission=obj.permission, expires_at=obj.expires_at,
            domains=form.cleaned_data["domains_text"], test=obj.test,
        )
        obj.pk, obj.prefix, obj.domains = api_key.pk, api_key.prefix, api_key.domains
        mode = "test key" if api_key.test else "API key"
        self.message_user(
            request, f"{mode[0].upper()}{mode[1:]} created. Copy it now, it will not be shown again: {raw_key}",
            messages.WARNING,
        )
