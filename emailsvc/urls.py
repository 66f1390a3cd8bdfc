from django.urls import path

from emailsvc.apis import EmailDetailApi, EmailSendApi

urlpatterns = [
    path("emails", EmailSendApi.as_view(), name="emails"),
    path("emails/<str:email_id>", EmailDetailApi.as_view(), name="email-detail"),
]
