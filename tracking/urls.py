from django.urls import path

from tracking.apis import GroupAnalyticsApi, GroupEmailsApi

urlpatterns = [
    path("groups/<str:group_id>/emails", GroupEmailsApi.as_view(), name="group-emails"),
    path("groups/<str:group_id>/analytics", GroupAnalyticsApi.as_view(), name="group-analytics"),
]
