"""URLs of the operator console, under /admin/ beside the model lists (config/urls.py).

Every view goes through `admin.site.admin_view`: staff login, CSRF, no caching.
"""

from django.contrib import admin
from django.urls import path

from console import views

app_name = "console"


def _view(function):
    return admin.site.admin_view(function)


urlpatterns = [
    path("address/", _view(views.address_view), name="address"),
    path("address/lift/", _view(views.suppression_lift_view), name="suppression-lift"),
    path("address/suppress/", _view(views.suppression_add_view), name="suppression-add"),
    path("messages/<int:message_id>/resend/", _view(views.message_resend_view), name="message-resend"),
    path("messages/<int:message_id>/cancel/", _view(views.message_cancel_view), name="message-cancel"),
    path("operations/sending/", _view(views.sending_view), name="sending"),
    path("operations/sending/resume/", _view(views.sending_resume_view), name="sending-resume"),
    path("operations/sending/pause/", _view(views.sending_pause_view), name="sending-pause"),
    path("operations/queues/", _view(views.queues_view), name="queues"),
    path("operations/domains/", _view(views.domains_view), name="domains"),
    path("operations/domains/add/", _view(views.domain_add_view), name="domain-add"),
    path("operations/domains/check/", _view(views.domain_check_view), name="domain-check"),
]
