import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application does

from core.middleware import AsgiHandler  # noqa: E402  (needs the apps loaded)

# Django's handler, with a request that leaves a charset which is not a text encoding unused (core.middleware).
application = AsgiHandler()
