from django.urls import path

from emailsvc.api.domains import DomainDetailApi, DomainListApi, DomainVerifyApi
from emailsvc.api.emails import EmailBatchApi, EmailCancelApi, EmailDetailApi, EmailsApi
from emailsvc.api.keys import ApiKeyDetailApi, ApiKeyListApi
from emailsvc.api.sending import SendingResumeApi, SendingStatusApi
from emailsvc.api.stats import StatsApi
from emailsvc.api.streams import StreamDetailApi, StreamListApi
from emailsvc.api.suppressions import (
    SuppressionDetailApi,
    SuppressionExportApi,
    SuppressionImportApi,
    SuppressionListApi,
)
from emailsvc.api.templates import (
    TemplateDetailApi,
    TemplateListApi,
    TemplateRenderApi,
    TemplateVersionDetailApi,
    TemplateVersionListApi,
)

urlpatterns = [
    path("emails", EmailsApi.as_view(), name="emails"),
    path("emails/batch", EmailBatchApi.as_view(), name="emails-batch"),
    path("emails/<str:email_id>/cancel", EmailCancelApi.as_view(), name="email-cancel"),
    path("emails/<str:email_id>", EmailDetailApi.as_view(), name="email-detail"),
    path("stats", StatsApi.as_view(), name="stats"),
    path("sending-status", SendingStatusApi.as_view(), name="sending-status"),
    path("sending-status/resume", SendingResumeApi.as_view(), name="sending-resume"),
    path("suppressions", SuppressionListApi.as_view(), name="suppressions"),
    path("suppressions/import", SuppressionImportApi.as_view(), name="suppressions-import"),
    path("suppressions/export", SuppressionExportApi.as_view(), name="suppressions-export"),
    # <path:…>: an address may hold "/" (RFC 5322 allows it before the "@").
    path("suppressions/<path:email>", SuppressionDetailApi.as_view(), name="suppression-detail"),
    path("domains", DomainListApi.as_view(), name="domains"),
    path("domains/<str:name>", DomainDetailApi.as_view(), name="domain-detail"),
    path("domains/<str:name>/verify", DomainVerifyApi.as_view(), name="domain-verify"),
    path("api-keys", ApiKeyListApi.as_view(), name="api-keys"),
    path("api-keys/<int:key_id>", ApiKeyDetailApi.as_view(), name="api-key-detail"),
    path("streams", StreamListApi.as_view(), name="streams"),
    path("streams/<str:name>", StreamDetailApi.as_view(), name="stream-detail"),
    path("templates", TemplateListApi.as_view(), name="templates"),
    path("templates/<str:name>", TemplateDetailApi.as_view(), name="template-detail"),
    path("templates/<str:name>/versions", TemplateVersionListApi.as_view(), name="template-versions"),
    path("templates/<str:name>/versions/<int:version>", TemplateVersionDetailApi.as_view(), name="template-version"),
    path("templates/<str:name>/render", TemplateRenderApi.as_view(), name="template-render"),
]
