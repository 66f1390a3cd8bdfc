"""Bench-only settings for the django-post-office reference row (figure 3):
the service's settings plus the `post_office` app, in the same bench database
(its own tables, created by `migrate post_office` and dropped with the database).

django-post-office is used as a Django user gets it: its defaults (batches of
100 emails per process round, 5 sending threads per process, every send logged
to its Log table) and Django's SMTP backend, pointed at the bench's sink
through the same SMTP_HOST / SMTP_PORT as the service's workers.
"""

from config.settings import *  # noqa: F403 - the service's settings, extended
from config.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "post_office"]
POST_OFFICE = {
    "BACKENDS": {"default": "django.core.mail.backends.smtp.EmailBackend"},
    "DEFAULT_PRIORITY": "medium",
}
