from django.urls import path

from tracking.apis import GroupAnalyticsApi, GroupEmailsApi

urlpatterns = [
    # <path:…>: a group id is any string, "/" included.
    path("groups/<path:group_id>/emails", GroupEmailsApi.as_view(), name="group-emails"),
    path("groups/<path:group_id>/analytics", GroupAnalyticsApi.as_view(), name="group-analytics"),
]
