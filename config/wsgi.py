"""The WSGI application gunicorn serves (Procfile: `gunicorn config.wsgi -c config/gunicorn.py`).

Django's handler behind config.bodies.WholeBody: each request body is read
whole (chunked ones too), every socket read waiting at most WEB_READ_TIMEOUT
seconds, before Django is called.
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup(set_prefix=False)  # as django.core.wsgi.get_wsgi_application does

from django.conf import settings  # noqa: E402

from config.bodies import WholeBody, read_timeout_from  # noqa: E402  (imports core: needs the apps loaded)
from core.middleware import WsgiHandler  # noqa: E402  (needs the apps loaded)

# Django's handler, with a request that leaves a charset which is not a text encoding unused (core.middleware).
application = WholeBody(
    WsgiHandler(),
    max_bytes=max(settings.DATA_UPLOAD_MAX_MEMORY_SIZE, settings.SUPPRESSION_IMPORT_MAX_BYTES),
    read_timeout=read_timeout_from(os.environ.get("WEB_READ_TIMEOUT"), default=10.0),
)
