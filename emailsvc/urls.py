from django.urls import path

from emailsvc.apis import EmailBatchApi, EmailCancelApi, EmailDetailApi, EmailSendApi

urlpatterns = [
    path("emails", EmailSendApi.as_view(), name="emails"),
    path("emails/batch", EmailBatchApi.as_view(), name="emails-batch"),
    path("emails/<str:email_id>/cancel", EmailCancelApi.as_view(), name="email-cancel"),
    path("emails/<str:email_id>", EmailDetailApi.as_view(), name="email-detail"),
]
