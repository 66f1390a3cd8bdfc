"""Settings for the test suite: the real settings, with safe defaults for tests.

Without REDIS_URL an embedded Redis is started for the test session (zero-config
`make test`). A Celery worker started by the tests gets TESTS_DB_NAME so it uses
the test database.
"""

import atexit
import os

# Under pytest-xdist (`make test PYTEST_ARGS="-n 3"`) each pytest worker is a test
# session of its own: its own test database (pytest-django adds the _gwN suffix), its
# own Redis database number and /metrics directory. The processes a worker starts
# (Celery workers, gunicorn) inherit what it chose: TESTS_SESSION records that the
# choice is made, so they do not make it again.
_xdist_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _xdist_worker and os.environ.get("TESTS_SESSION") != _xdist_worker:
    os.environ["TESTS_SESSION"] = _xdist_worker
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if os.environ.get("REDIS_URL"):
        from urllib.parse import urlsplit, urlunsplit

        _url = urlsplit(_given := os.environ["REDIS_URL"])
        _number = int(_url.path.strip("/") or 0) + 1 + int(_xdist_worker.removeprefix("gw"))
        os.environ["REDIS_URL"] = urlunsplit(_url._replace(path=f"/{_number % 16}"))
        if os.environ.get("CELERY_BROKER_URL") == _given:
            del os.environ["CELERY_BROKER_URL"]

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import shutil
    import tempfile

    # /metrics adds up every process of the session — this one (the web side, through
    # the test client) and the workers and web processes it starts (they inherit the
    # variable) — in one directory. Set before prometheus-client is first imported
    # (emailsvc.metrics, which Django's setup may already import).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="emailsvc-test-metrics-")
    atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key")
os.environ.setdefault("EMAIL_PROVIDER", "console")
os.environ.setdefault("ALLOWED_FROM_DOMAINS", "example.com")
os.environ.setdefault("DEFAULT_FROM_EMAIL", "noreply@example.com")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

if not os.environ.get("REDIS_URL"):
    from config.devservices import start_redis, stop

    _redis, os.environ["REDIS_URL"] = start_redis()
    atexit.register(stop, _redis)

from config.settings import *  # noqa: E402,F403
from config.settings import DATABASES  # noqa: E402

if os.environ.get("TESTS_DB_NAME"):
    DATABASES["default"]["NAME"] = os.environ["TESTS_DB_NAME"]
