"""Admin: support staff look up addresses, manage suppressions, keys and messages.

The lists of big tables (messages, status changes; events in tracking/admin.py)
are BigTableAdmin lists: estimated counts, exact indexed searches, no facet
counts (core.admin_lists). The address page, the message actions and the
operations pages are the operator console (console.views).
"""

import tablib
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Max, Prefetch, Q
from django.urls import reverse_lazy
from django.utils.html import format_html
from import_export import resources
from import_export.admin import ImportExportMixin
from import_export.formats.base_formats import CSV
from import_export.forms import ImportForm
from import_export.results import RowResult

from console.selectors import address_message_ids, address_recipient_ids, message_overview
from core.addresses import InvalidAddress, address_canonical
from core.admin_lists import BigTableAdmin, address_url, admin_change_url
from core.errors import EmailsvcError
from emailsvc.models import Message, Recipient, SendingPause, StatusChange, Suppression
from emailsvc.selectors import one_or_none, suppressions_list
from emailsvc.suppressions.csv_rows import (
    COLUMNS,
    SuppressionRows,
    csv_text,
    suppression_cells,
    suppression_rows_read,
)
from emailsvc.suppressions.services import suppression_add, suppression_lift, suppressions_import

# The admin home: a search box for an address or an email id, and the operations pages.
admin.site.index_template = "admin/console/index.html"
# "View site" leads to that home; the pages use the whole width (the home lists every model).
admin.site.site_url = reverse_lazy("admin:index")
admin.site.enable_nav_sidebar = False


def _address_link(address: str):
    return format_html('<a href="{}">{}</a>', address_url(address), address)


# --- Suppressions --------------------------------------------------------------------


class SuppressionForm(forms.ModelForm):
    email = forms.CharField(max_length=320)

    class Meta:
        model = Suppression
        fields = ("email", "reason", "note", "expires_at", "source")

    def clean_email(self):
        try:
            return address_canonical(self.cleaned_data["email"])
        except InvalidAddress as error:
            raise forms.ValidationError(str(error), code="invalid_address") from None


# The rows an import page lists (valid or bad); the totals count them all.
MAX_LISTED_IMPORT_ROWS = 1000


class SuppressionDataset(tablib.Dataset):
    """A CSV file read by emailsvc.suppressions.csv_rows: its valid rows (one
    per address) and its bad rows (their line only), in `rows` everything the
    read found."""

    def __init__(self, rows: SuppressionRows):
        super().__init__(headers=["line", *COLUMNS])
        self.rows = rows
        for row in rows.valid:
            expires_at = row.expires_at.isoformat() if row.expires_at else ""
            self.append([row.line, row.email, row.reason, row.note, expires_at])
        for error in rows.errors:
            self.append([error.line, "", "", "", ""])


class SuppressionCsv(CSV):
    """The API's CSV (emailsvc.suppressions.csv_rows) for the admin: read from
    the file's bytes with the API import's rules and limits, written with the
    export's columns."""

    # create_dataset gets the bytes: csv_text says where a file is not UTF-8.
    def is_binary(self):
        return True

    def get_read_mode(self):
        return "rb"

    def create_dataset(self, in_stream):
        return SuppressionDataset(
            suppression_rows_read(csv_text(in_stream), max_rows=settings.SUPPRESSION_IMPORT_MAX_ROWS)
        )


class SuppressionImportForm(ImportForm):
    def clean_import_file(self):
        upload = self.cleaned_data["import_file"]
        if upload.size > settings.SUPPRESSION_IMPORT_MAX_BYTES:
            raise forms.ValidationError(
                f"The CSV file is larger than {settings.SUPPRESSION_IMPORT_MAX_BYTES:,} bytes; split it.",
                code="payload_too_large",
            )
        return upload


class SuppressionResource(resources.ModelResource):
    """Suppressions as the API's CSV. An export writes its rows as
    `GET /api/v1/suppressions/export` does; an import is the API's
    all-or-nothing import (suppressions_import): any bad row, nothing is
    imported and each bad row is shown with its line (the header is line 1)."""

    class Meta:
        model = Suppression
        fields = COLUMNS
        export_order = COLUMNS
        import_id_fields = ("email",)

    def export_resource(self, instance, selected_fields=None, **kwargs):
        cells = dict(zip(COLUMNS, suppression_cells(instance), strict=True))
        return [cells[field.column_name] for field in self.get_export_fields(selected_fields)]

    def import_data_inner(self, dataset, dry_run, raise_errors, using_transactions, collect_failed_rows, **kwargs):
        # In import_data's transaction: a dry run (the preview) is rolled back.
        rows = dataset.rows if isinstance(dataset, SuppressionDataset) else suppression_rows_read(
            dataset.export("csv"), max_rows=settings.SUPPRESSION_IMPORT_MAX_ROWS
        )
        result = self.get_result_class()()
        result.total_rows = rows.read
        if rows.errors:  # listed by line and message: the bad cells are in the message
            for error in rows.errors[:MAX_LISTED_IMPORT_ROWS]:
                problem = ValidationError(f"Line {error.line}: {error.detail} ({error.error})", code=error.error)
                result.append_invalid_row(error.line, {}, problem)
            result.totals[RowResult.IMPORT_TYPE_INVALID] = len(rows.errors)
            return result
        result.diff_headers = list(COLUMNS)
        newest = Suppression.objects.aggregate(newest=Max("id"))["newest"] or 0
        source = f"admin:{kwargs.get('user') or ''} ({kwargs.get('file_name') or 'import'})"
        outcome = suppressions_import(rows=rows, partial=False, source=source)
        added = set(Suppression.objects.filter(id__gt=newest).values_list("email", flat=True))
        for row in rows.valid[:MAX_LISTED_IMPORT_ROWS]:
            listed = RowResult()
            listed.import_type = RowResult.IMPORT_TYPE_NEW if row.email in added else RowResult.IMPORT_TYPE_SKIP
            listed.diff = [row.email, row.reason, row.note, row.expires_at.isoformat() if row.expires_at else ""]
            listed.object_repr = row.email
            result.append_row_result(listed)
        result.totals[RowResult.IMPORT_TYPE_NEW] = outcome.imported
        result.totals[RowResult.IMPORT_TYPE_SKIP] = outcome.existing + outcome.duplicates
        return result


@admin.register(Suppression)
class SuppressionAdmin(ImportExportMixin, BigTableAdmin):
    """Also the CSV import and export (SuppressionResource): the API's
    columns and rules, so a file exported here or by the API imports back."""

    form = SuppressionForm
    resource_classes = [SuppressionResource]
    formats = [SuppressionCsv]
    import_form_class = SuppressionImportForm
    skip_admin_log = True  # an import may hold 100,000 rows; each entry's source names the admin user
    list_display = ("email", "reason", "source", "created_at", "expires_at", "history")
    list_filter = ("reason",)
    search_help_text = "An address (exact), or the start of one: 'jane', 'jane@exa'."
    ordering = ("-id",)  # the newest first, on the primary key (created_at has no index)
    actions = ["lift"]

    def search(self, queryset, term):
        # A prefix of the stored (canonical) form: a range of the unique address
        # index (its pattern-ops twin on PostgreSQL). A whole address is its own prefix.
        return queryset & suppressions_list(prefix=term)

    @admin.display(description="")
    def history(self, suppression: Suppression):
        return format_html('<a href="{}">address page</a>', address_url(suppression.email))

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

    def has_import_permission(self, request):
        return self.has_add_permission(request)

    def has_export_permission(self, request):
        return self.has_view_permission(request)

    def add_data_read_fail_error_to_form(self, form, e):
        if isinstance(e, EmailsvcError):  # the file as a whole: not UTF-8, no header, too many rows
            form.add_error("import_file", f"{e.detail} ({e.code})")
        else:
            super().add_data_read_fail_error_to_form(form, e)


# --- Messages ------------------------------------------------------------------------


class TemplateUsedFilter(admin.SimpleListFilter):
    """Messages sent with a template; the choices come from the templates table,
    not from a DISTINCT over every message."""

    title = "template"
    parameter_name = "template"

    def lookups(self, request, model_admin):
        from templates_app.models import Template

        return [(name, name) for name in Template.objects.order_by("name").values_list("name", flat=True)[:200]]

    def queryset(self, request, queryset):
        # message_template_newest: (template_name, -id)
        return queryset.filter(template_name=self.value()) if self.value() else queryset


_MESSAGE_BODIES = ("html", "text", "headers", "metadata", "template_data", "reply_to", "tags")


@admin.register(Message)
class MessageAdmin(BigTableAdmin):
    # What support scans for; the work state, sender, template and the rest are on the email's page.
    list_display = ("email_id", "to", "subject", "status_shown", "created_at", "sent_at", "group_id")
    list_filter = ("status", TemplateUsedFilter)
    search_help_text = (
        "Exact: an address (its newest 10,000 emails), an email_id, a provider message id or a group id."
    )
    change_form_template = "admin/console/message_change_form.html"
    inlines = []  # recipients, attachments and the timeline are the console's sections (change_form_template)

    def get_queryset(self, request):
        rows = super().get_queryset(request)
        if request.resolver_match and request.resolver_match.url_name == "emailsvc_message_changelist":
            recipients = Recipient.objects.only("id", "message_id", "email", "role").order_by("id")
            rows = rows.defer(*_MESSAGE_BODIES).prefetch_related(Prefetch("recipients", queryset=recipients))
        return rows

    def search(self, queryset, term):
        if "@" in term and one_or_none(Message.objects.filter(email_id=term).only("pk")) is None:
            return queryset.filter(pk__in=address_message_ids(address=term))
        # Each lookup below is one index; an OR of them is a bitmap OR of small ranges.
        return queryset.filter(Q(email_id=term) | Q(provider_message_id=term) | Q(group_id=term))

    @admin.display(description="status", ordering="status")
    def status_shown(self, message: Message):
        """A test key's email says so: its outcome is the mailbox simulator's."""
        return f"{message.status} (test)" if message.is_test else message.status

    @admin.display(description="to")
    def to(self, message: Message):
        addresses = [r.email for r in message.recipients.all()]
        shown = ", ".join(addresses[:3])
        return shown + (f" +{len(addresses) - 3}" if len(addresses) > 3 else "")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    # -- the message page

    readonly_fields = (
        *[f.name for f in Message._meta.fields], "sender", "template_used",
    )

    @admin.display(description="from")
    def sender(self, message: Message):
        return f"{message.from_name} <{message.from_email}>" if message.from_name else message.from_email

    @admin.display(description="template")
    def template_used(self, message: Message):
        version = f"@{message.template_version}" if message.template_version else ""
        return f"{message.template_name}{version}"

    def get_fieldsets(self, request, obj=None):
        """Only the fields this message uses, several to a line: no empty
        template, schedule or content rows."""
        if obj is None:
            return super().get_fieldsets(request, obj)

        def used(name: str) -> bool:
            return name in ("sender", "template_used") or getattr(obj, name, None) not in (None, "", [], {})

        def rows(*lines):
            kept = [tuple(name for name in line if used(name)) for line in lines]
            return [line for line in kept if line]

        fieldsets = [
            (None, {"fields": rows(
                ("email_id",), ("status", "state"), ("subject",), ("sender", "reply_to"), ("group", "retry_of"),
                ("priority", "provider"), ("provider_message_id", "api_key"),
            )}),
            ("Times", {"fields": rows(
                ("created_at", "queued_at"), ("send_at", "sent_at"), ("next_attempt_at", "sending_started_at"),
                ("updated_at",),
            )}),
        ]
        if obj.attempts or obj.last_error:
            fieldsets.append(("Delivery attempts", {"fields": rows(("attempts",), ("last_error",))}))
        if obj.template_name:
            fieldsets.append(("Template", {"fields": rows(("template_used",), ("template_data",))}))
        content = rows(("text",), ("html",), ("headers",), ("tags", "metadata"))
        if content:
            fieldsets.append(("Content", {"fields": content, "classes": ["collapse"]}))
        return fieldsets

    def get_object(self, request, object_id, from_field=None):
        # Loaded once per request: change_view reads it for the console's sections, then Django's view again.
        cached = getattr(request, "_console_message", None)
        if cached is not None and str(cached.pk) == str(object_id):
            return cached
        queryset = self.get_queryset(request).select_related("retry_of", "group", "api_key")
        try:
            message = one_or_none(queryset.filter(pk=int(object_id)))
        except (TypeError, ValueError):
            return None
        request._console_message = message
        return message

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        message = self.get_object(request, object_id)
        if message is not None:
            extra_context["overview"] = message_overview(message=message)
            extra_context["can_resend"] = request.user.has_perm("emailsvc.add_message")
            extra_context["can_cancel"] = request.user.has_perm("emailsvc.change_message")
        return super().change_view(request, object_id, form_url, extra_context)


# --- Status changes and sending pauses --------------------------------------------------


@admin.register(StatusChange)
class StatusChangeAdmin(BigTableAdmin):
    """Every recipient status transition (what webhooks, metrics and the breaker read); read-only."""

    list_display = ("at", "address", "from_status", "to_status", "cause", "email")
    list_filter = ("to_status",)
    search_help_text = "Exact: an address, or an email_id."

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("message").only(
            "id", "at", "email", "from_status", "to_status", "cause", "detail", "recipient_id", "message__id",
            "message__email_id",
        )

    def search(self, queryset, term):
        if "@" in term:
            return queryset.filter(recipient_id__in=address_recipient_ids(address=term))
        message = one_or_none(Message.objects.filter(email_id=term).only("pk"))
        return queryset.filter(message_id=message.pk if message else None)

    @admin.display(description="address")
    def address(self, change: StatusChange):
        return _address_link(change.email)

    @admin.display(description="email")
    def email(self, change: StatusChange):
        return format_html('<a href="{}">{}</a>', admin_change_url(change.message), change.message.email_id)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # the history webhooks and the breaker are built on


@admin.register(SendingPause)
class SendingPauseAdmin(admin.ModelAdmin):
    """Every sending pause, active or ended (the breaker's, the provider's, an
    operator's). Resume here or on the sending status page."""

    list_display = ("domain", "stream", "active", "cause", "reason", "paused_at", "until", "resumed_at", "resumed_by")
    list_filter = ("cause", "stream", ("resumed_at", admin.EmptyFieldListFilter))
    search_fields = ("=domain",)
    ordering = ("-paused_at", "-id")
    readonly_fields = [f.name for f in SendingPause._meta.fields]
    actions = ["resume"]

    @admin.display(boolean=True, description="paused now")
    def active(self, pause: SendingPause) -> bool:
        return pause.resumed_at is None

    @admin.action(description="Resume the selected pauses (held emails are queued again)", permissions=["resume"])
    def resume(self, request, queryset):
        from emailsvc.sending_control.breaker import sending_resume

        # Exactly the selected pauses: a domain's pause as a whole ("" stream) leaves its streams' pauses alone.
        selected = {(pause.domain, pause.stream) for pause in queryset if pause.resumed_at is None}
        resumed = sum(
            sending_resume(domain=domain, stream=stream, by=f"admin:{request.user.get_username()}")
            for domain, stream in sorted(selected)
        )
        self.message_user(request, f"Resumed {resumed} pause(s).", messages.SUCCESS)

    def has_add_permission(self, request):
        return False  # pause on the sending status page: it holds the domain's emails

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_resume_permission(self, request) -> bool:
        return request.user.has_perm("emailsvc.change_sendingpause")

