"""Admin: edit templates with a rendered preview, browse and diff versions,
send a test email to yourself.

Saving the form never changes a stored version: it calls the same services
as the API (template_create / template_update), which write a new version.
"""

import difflib
import json

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from core.errors import EmailsvcError
from emailsvc.selectors import template_pending_messages
from templates_app.errors import TemplateInvalid
from templates_app.models import Template, TemplateVersion
from templates_app.services import (
    CONTENT_FIELDS,
    RenderedTemplate,
    template_content_check,
    template_create,
    template_delete,
    template_render,
    template_update,
)

# Form field for each name the services use in TemplateInvalid.fields.
_FORM_FIELD = {"from": "from_email"}
_SOURCE = {"rows": 14, "cols": 100, "style": "font-family: monospace; width: 95%;", "spellcheck": "false"}


def _actor(request) -> str:
    return f"admin:{request.user.get_username()}"


class TemplateAdminForm(forms.ModelForm):
    """The Template row (its name) plus the content of the version to save."""

    subject = forms.CharField(max_length=2000, widget=forms.TextInput(attrs={"size": 100}))
    html = forms.CharField(required=False, strip=False, widget=forms.Textarea(attrs=_SOURCE),
                           help_text="Jinja, autoescaped. Leave empty when writing MJML.")
    mjml = forms.CharField(required=False, strip=False, widget=forms.Textarea(attrs=_SOURCE),
                           help_text="MJML with Jinja inside; compiled to the html on save.")
    text = forms.CharField(required=False, strip=False, widget=forms.Textarea(attrs={**_SOURCE, "rows": 8}),
                           help_text="Jinja, not escaped. Leave empty to generate it from the html.")
    from_email = forms.CharField(required=False, label="From", max_length=500)
    from_name = forms.CharField(required=False, max_length=500)
    reply_to = forms.CharField(required=False, max_length=500)
    layout = forms.CharField(required=False, max_length=120,
                             help_text="A template wrapping this html at its {{ content }}: 'name' or 'name@3'.")
    sample_data = forms.JSONField(required=False, initial=dict,
                                  widget=forms.Textarea(attrs={**_SOURCE, "rows": 8}),
                                  help_text="A JSON object: the data of the preview and of test emails.")

    class Meta:
        model = Template
        fields = ("name",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.latest: TemplateVersion | None = None
        if self.instance.pk:
            self.latest = self.instance.versions.filter(version=self.instance.latest_version).first()
            if self.latest is not None:
                for name in CONTENT_FIELDS:
                    self.initial.setdefault(name, getattr(self.latest, name))
                if self.latest.mjml:
                    self.initial["html"] = ""  # the html is the compiled MJML, not a source to edit

    def content(self) -> dict:
        return {name: self.cleaned_data.get(name) for name in CONTENT_FIELDS}

    def clean(self):
        cleaned = super().clean()
        name = self.instance.name if self.instance.pk else cleaned.get("name")
        if self.errors or not name:
            return cleaned
        try:
            template_content_check(name=name, data=self.content())
        except TemplateInvalid as error:
            for field, problems in (error.fields or {"__all__": [error.detail]}).items():
                field = _FORM_FIELD.get(field, field)
                self.add_error(field if field in self.fields else None, problems)
        return cleaned

    def changed_content(self) -> bool:
        if self.latest is None:
            return True
        return any(
            (self.cleaned_data.get(name) or ("" if name != "sample_data" else {})) != getattr(self.latest, name)
            for name in CONTENT_FIELDS
            if not (name == "html" and self.latest.mjml)
        )


class TemplateVersionInline(admin.TabularInline):
    model = TemplateVersion
    extra = 0
    can_delete = False
    fields = ("version", "subject", "layout", "created_at", "created_by", "links")
    readonly_fields = fields
    ordering = ("-version",)
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # versions are immutable

    @admin.display(description="")
    def links(self, version: TemplateVersion):
        if version.pk is None:
            return ""  # the inline's blank form template
        preview = reverse("admin:templates_app_template_version_preview", args=[version.template_id, version.version])
        links = format_html('<a href="{}" target="_blank">preview</a>', preview)
        if version.version > 1:
            diff = reverse("admin:templates_app_template_diff", args=[version.template_id])
            links = format_html(
                '{} · <a href="{}?a={}&amp;b={}">diff with v{}</a>',
                links, diff, version.version - 1, version.version, version.version - 1,
            )
        return links


def _render_sample(version: TemplateVersion) -> RenderedTemplate | EmailsvcError:
    try:
        return template_render(version=version, data=version.sample_data)
    except EmailsvcError as error:
        return error


def _preview_context(rendered: RenderedTemplate | EmailsvcError) -> dict:
    if isinstance(rendered, EmailsvcError):
        return {"preview_error": rendered.detail, "preview_fields": rendered.fields}
    return {"preview": rendered}


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    form = TemplateAdminForm
    list_display = ("name", "latest_version", "updated_at")
    search_fields = ("name",)
    ordering = ("name",)
    inlines = [TemplateVersionInline]
    actions = ["send_test_to_me"]
    change_form_template = "admin/templates_app/template/change_form.html"
    fieldsets = (
        (None, {"fields": ("name", "subject", "layout")}),
        ("Sources", {"fields": ("html", "mjml", "text")}),
        ("Defaults", {"fields": ("from_email", "from_name", "reply_to")}),
        ("Preview", {"fields": ("sample_data",)}),
    )

    def get_readonly_fields(self, request, obj=None):
        return ("name",) if obj else ()  # a template is not renamed: messages record its name

    def get_urls(self):
        own = [
            path("preview/", self.admin_site.admin_view(self.preview_view), name="templates_app_template_preview"),
            path("<int:template_id>/diff/", self.admin_site.admin_view(self.diff_view),
                 name="templates_app_template_diff"),
            path("<int:template_id>/versions/<int:version>/preview/",
                 self.admin_site.admin_view(self.version_preview_view),
                 name="templates_app_template_version_preview"),
        ]
        return own + super().get_urls()

    # -- saving goes through the services: a new version, never an update

    def save_model(self, request, obj, form, change):
        content = form.content()
        if not change:
            version = template_create(name=obj.name, data=content, created_by=_actor(request))
            obj.pk = version.template_id
            return
        if not form.changed_content():
            self.message_user(request, "Nothing changed: no new version was saved.", messages.INFO)
            return
        version = template_update(name=obj.name, data=content, created_by=_actor(request))
        self.message_user(request, f"Saved as version {version.version}.", messages.SUCCESS)

    def delete_view(self, request, object_id, extra_context=None):
        if request.method == "POST":
            template = get_object_or_404(Template, pk=object_id)
            try:
                template_delete(name=template.name, emails_pending=template_pending_messages)
            except EmailsvcError as error:
                self.message_user(request, error.detail, messages.ERROR)
                return redirect("admin:templates_app_template_change", template.pk)
            self.message_user(request, f"Template '{template.name}' deleted.", messages.SUCCESS)
            return redirect("admin:templates_app_template_changelist")
        return super().delete_view(request, object_id, extra_context)

    def delete_queryset(self, request, queryset):
        for template in queryset:
            try:
                template_delete(name=template.name, emails_pending=template_pending_messages)
            except EmailsvcError as error:
                self.message_user(request, error.detail, messages.ERROR)

    # -- preview

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        template = Template.objects.filter(pk=object_id).first()
        latest = template and template.versions.filter(version=template.latest_version).first()
        if latest is not None:
            extra_context.update(_preview_context(_render_sample(latest)))
            extra_context["preview_version"] = latest.version
        extra_context["preview_url"] = reverse("admin:templates_app_template_preview")
        return super().change_view(request, object_id, form_url, extra_context)

    def add_view(self, request, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "preview_url": reverse("admin:templates_app_template_preview")}
        return super().add_view(request, form_url, extra_context)

    def preview_view(self, request):
        """POST the edit form: its content rendered with its sample data, unsaved (JSON)."""
        if request.method != "POST":
            return JsonResponse({"error": "POST the form."}, status=405)
        template = Template.objects.filter(pk=request.POST.get("template_id") or None).first()
        posted = request.POST.copy()
        if template is not None:
            posted["name"] = template.name  # read-only on the change page, so not posted
        form = TemplateAdminForm(posted, instance=template or Template())
        if not form.is_valid():
            errors = {field: [str(e) for e in problems] for field, problems in form.errors.items()}
            return JsonResponse({"error": "The form has errors.", "fields": errors})
        content = template_content_check(name=template.name if template else form.cleaned_data["name"],
                                         data=form.content())
        unsaved = TemplateVersion(template=template or Template(name=form.cleaned_data["name"]), **content)
        rendered = _render_sample(unsaved)
        if isinstance(rendered, EmailsvcError):
            return JsonResponse({"error": rendered.detail, "fields": rendered.fields or {}})
        return JsonResponse(rendered.__dict__)

    def version_preview_view(self, request, template_id: int, version: int):
        """One version rendered with its sample data, as a page of its own."""
        stored = get_object_or_404(TemplateVersion.objects.select_related("template"),
                                   template_id=template_id, version=version)
        rendered = _render_sample(stored)
        if isinstance(rendered, EmailsvcError):
            problem = json.dumps({"error": rendered.detail, "fields": rendered.fields}, indent=2)
            response = HttpResponse(format_html("<pre>{}</pre>", problem))
        else:
            response = HttpResponse(rendered.html or format_html("<pre>{}</pre>", rendered.text))
        # The template's html is content, not admin code: no scripts, no admin origin.
        response["Content-Security-Policy"] = "sandbox"
        return response

    # -- diff between two versions

    def diff_view(self, request, template_id: int):
        template = get_object_or_404(Template, pk=template_id)
        numbers = sorted(template.versions.values_list("version", flat=True))
        try:
            a = int(request.GET.get("a") or (numbers[-2] if len(numbers) > 1 else numbers[-1]))
            b = int(request.GET.get("b") or numbers[-1])
        except (ValueError, IndexError):
            a = b = template.latest_version
        old = get_object_or_404(TemplateVersion, template=template, version=a)
        new = get_object_or_404(TemplateVersion, template=template, version=b)
        differ = difflib.HtmlDiff(wrapcolumn=90)
        tables = []
        for name in CONTENT_FIELDS:
            before, after = getattr(old, name), getattr(new, name)
            if name == "html" and (old.mjml or new.mjml):
                continue  # compiled output: the mjml diff says what changed
            if name == "sample_data":
                before, after = json.dumps(before, indent=2, sort_keys=True), json.dumps(after, indent=2, sort_keys=True)
            if before == after:
                continue
            tables.append((name, differ.make_table(before.splitlines(), after.splitlines(),
                                                   f"version {a}", f"version {b}", context=True, numlines=3)))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"{template.name}: version {a} → version {b}",
            "template_obj": template,
            "numbers": numbers,
            "a": a,
            "b": b,
            "tables": tables,
        }
        return TemplateResponse(request, "admin/templates_app/template/diff.html", context)

    # -- test email

    @admin.action(description="Send a test email to me (latest version, sample data)")
    def send_test_to_me(self, request, queryset):
        # Through the send path a caller uses: the API's validation, then message_submit.
        from emailsvc.api.emails_inputs import send_request_validate
        from emailsvc.submission.submit import message_submit

        if not request.user.email:
            self.message_user(request, "Your admin user has no email address: set one first.", messages.ERROR)
            return
        for template in queryset:
            version = template.versions.select_related("template").filter(version=template.latest_version).first()
            body = {
                "to": request.user.email,
                "template": f"{template.name}@{version.version}",
                "template_data": version.sample_data or {},
                "tags": ["template-test"],
            }
            try:
                message = message_submit(api_key=None, data=send_request_validate(body))
            except EmailsvcError as error:
                self.message_user(request, f"{template.name}: {error.detail}", messages.ERROR)
                continue
            self.message_user(
                request, f"{template.name} v{version.version}: test email {message.email_id} sent to {request.user.email}.",
                messages.SUCCESS,
            )
