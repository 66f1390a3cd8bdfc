"""
emailsvc settings: every value comes from the environment (12-factor).

Each setting is documented in docs/settings.md. Invalid values fail at
start-up with a message naming the variable.
"""

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

from config.sandbox_env import sandbox_env_apply
from config.unsubscribe_settings import unsubscribe_settings

BASE_DIR = Path(__file__).resolve().parent.parent

# With neither SECRET_KEY nor DATABASE_URL set, what the environment leaves unset
# comes from the settings of the last `make run` (config/sandbox_env.py), if any.
SANDBOX_ENV_FILE = sandbox_env_apply(os.environ)

env = environ.Env()


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.str(name, default=default).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


def _positive_number(name: str, default: float, cast=float) -> float:
    try:
        value = cast(env.str(name, default=str(default)))
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number") from None
    if value <= 0:
        raise ImproperlyConfigured(f"{name} must be greater than 0")
    return value


def _domain_canonical(name: str, domain: str) -> str:
    """A domain setting in the form addresses are stored in (IDNA A-labels, lower case)."""
    from core.addresses import InvalidAddress, domain_canonical

    if domain == "*":
        return domain
    try:
        return domain_canonical(domain)
    except InvalidAddress as error:
        raise ImproperlyConfigured(f"{name}: {error}") from None


def _domain_list(name: str, default: list[str] | None = None) -> list[str]:
    return [
        _domain_canonical(name, d.strip().lstrip("."))
        for d in env.list(name, default=default or [])
        if d.strip()
    ]


# --- Core -------------------------------------------------------------------
DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set (or DEBUG=true for local use)")
    SECRET_KEY = "insecure-local-development-key-do-not-use-in-production"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI / ReDoc static files: the docs work offline
    "anymail",
    "import_export",
    "emailsvc",
    "tracking",
    "templates_app",
    "console",
]

MIDDLEWARE = [
    # Outermost: every request's log lines carry its id, and every answer (errors too) echoes X-Request-ID.
    "core.logs.RequestIdMiddleware",
    # Then: it turns every non-JSON error answer under /api/ and /webhooks/ into the JSON error body.
    "core.middleware.JsonErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Admin pages in the operator's time zone (ADMIN_TIME_ZONE); nothing else is touched.
    "core.admin_lists.AdminTimezoneMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat are separate processes sharing one file: wait for
    # the write lock instead of failing, and take it at BEGIN.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 30, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
    # Tests run a real Celery worker in another process: it needs a file too.
    DATABASES["default"]["TEST"] = {"NAME": env.str("TEST_SQLITE_PATH", default=str(BASE_DIR / ".test-db.sqlite3"))}
# Keep connections between requests and tasks (a new PostgreSQL connection per
# request cost half the API's throughput); checked before reuse.
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Every statement here is a short keyed lookup or a bounded set-based write:
    # compiling one with LLVM (which a stale row estimate can trigger) costs
    # tens of milliseconds, far more than running it.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("options", "-c jit=off")
    # A server that does not answer at all (packets dropped, not refused) is an
    # outage after this many seconds, not after the kernel's two minutes: the
    # API answers 503 and the engine waits, instead of requests hanging.
    DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=5))
    # Parameters travel apart from the statement (no client-side quoting of the
    # hundred-element arrays the engine's set-based statements carry).
    DATABASES["default"]["OPTIONS"].setdefault("server_side_binding", env.bool("DATABASE_SERVER_SIDE_BINDING", default=True))
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# The admin shows times to the second with their zone (emailsvc/formats), in
# ADMIN_TIME_ZONE: a zone name ("Europe/Berlin", "UTC"), or "browser" (default):
# each operator's browser zone, TIME_ZONE until the browser has told it.
FORMAT_MODULE_PATH = ["emailsvc.formats"]
ADMIN_TIME_ZONE = env.str("ADMIN_TIME_ZONE", default="browser").strip()
if ADMIN_TIME_ZONE != "browser":
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(ADMIN_TIME_ZONE)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ImproperlyConfigured(
            f"ADMIN_TIME_ZONE={ADMIN_TIME_ZONE!r} is not a time zone name (e.g. Europe/Berlin, UTC) nor 'browser'"
        ) from None

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Request limits ---------------------------------------------------------
# A message may be up to MAX_MESSAGE_BYTES once MIME-encoded; its JSON request
# (base64 attachments) is a little larger, so the raw body limit has headroom.
MAX_MESSAGE_BYTES = int(_positive_number("MAX_MESSAGE_BYTES", 10 * 1024 * 1024, int))
DATA_UPLOAD_MAX_MEMORY_SIZE = int(MAX_MESSAGE_BYTES * 1.5)
MAX_RECIPIENTS = int(_positive_number("MAX_RECIPIENTS", 50, int))
MAX_METADATA_BYTES = int(_positive_number("MAX_METADATA_BYTES", 10 * 1024, int))
# reply_to addresses per email (they are not recipients: MAX_RECIPIENTS does not count them).
MAX_REPLY_TO = int(_positive_number("MAX_REPLY_TO", 10, int))

# --- REST API ---------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["emailsvc.api.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["emailsvc.api.auth.CanRead"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONParser"],  # DRF's, with a nesting limit
    "EXCEPTION_HANDLER": "core.responses.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
# While the database is unreachable the API answers 503 service_unavailable
# with this Retry-After (seconds), instead of a 500 per request.
UNAVAILABLE_RETRY_AFTER_SECONDS = int(_positive_number("UNAVAILABLE_RETRY_AFTER_SECONDS", 5, int))
SPECTACULAR_SETTINGS = {
    "TITLE": "emailsvc API",
    "DESCRIPTION": (
        "Self-hosted transactional email service. Authenticate with "
        "`Authorization: Bearer <key>` or `X-API-Key: <key>`. Every error body is "
        '`{"error": "<stable_code>", "detail": "<text>", "fields": {...}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Swagger UI and ReDoc come from drf-spectacular-sidecar (pinned, served as
    # static files by whitenoise), not from an unpinned CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "WebhookDeliveryStatusEnum": "tracking.models.WebhookDelivery.State",
        "WebhookEventTypeEnum": "tracking.webhooks.events.EVENT_TYPE_CHOICES",
    },
}

# --- Sending ----------------------------------------------------------------
EMAIL_PROVIDER = _choice("EMAIL_PROVIDER", "sandbox", ("sandbox", "ses", "smtp", "console"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="emailsvc@example.com")
DEFAULT_FROM_NAME = env.str("DEFAULT_FROM_NAME", default="")
# Empty ALLOWED_FROM_DOMAINS means "only the domain of DEFAULT_FROM_EMAIL";
# "*" allows any. Empty reply-to / recipient lists allow any domain.
ALLOWED_FROM_DOMAINS = _domain_list("ALLOWED_FROM_DOMAINS") or [
    _domain_canonical("DEFAULT_FROM_EMAIL", DEFAULT_FROM_EMAIL.rpartition("@")[2])
]
ALLOWED_REPLY_TO_DOMAINS = _domain_list("ALLOWED_REPLY_TO_DOMAINS")
ALLOWED_RECIPIENT_DOMAINS = _domain_list("ALLOWED_RECIPIENT_DOMAINS")
DELIVERY_MAX_ATTEMPTS = int(_positive_number("DELIVERY_MAX_ATTEMPTS", 8, int))
DELIVERY_RETRY_BASE_SECONDS = _positive_number("DELIVERY_RETRY_BASE_SECONDS", 2)
DELIVERY_RETRY_MAX_SECONDS = _positive_number("DELIVERY_RETRY_MAX_SECONDS", 600)

# The provider's sending rate, in recipients per second, for all workers together
# (SES counts recipients). 0 turns the limiter off. A burst above 1 lets that many
# tokens go at once after a quiet spell.
SEND_RATE_PER_SECOND = env.float("SEND_RATE_PER_SECOND", default=14.0)
if SEND_RATE_PER_SECOND < 0:
    raise ImproperlyConfigured("SEND_RATE_PER_SECOND must be 0 (off) or more")
SEND_RATE_BURST = int(_positive_number("SEND_RATE_BURST", 1, int))
# A worker sleeps for a token at most this long; a longer wait re-schedules the
# task so the worker process is free for other queues meanwhile.
RATE_LIMIT_MAX_WAIT_SECONDS = env.float("RATE_LIMIT_MAX_WAIT_SECONDS", default=2.0)
# The delivery engine: a task claims up to DELIVERY_CHUNK_SIZE due messages (with
# the limiter on, about DELIVERY_CHUNK_SECONDS' worth of its rate) and sends them
# with DELIVERY_SEND_CONCURRENCY sends in flight per worker process; a chunk
# stops taking new sends after DELIVERY_CHUNK_MAX_SECONDS and puts the rest back.
DELIVERY_CHUNK_SIZE = int(_positive_number("DELIVERY_CHUNK_SIZE", 250, int))
DELIVERY_CHUNK_SECONDS = _positive_number("DELIVERY_CHUNK_SECONDS", 1.0)
DELIVERY_CHUNK_MAX_SECONDS = _positive_number("DELIVERY_CHUNK_MAX_SECONDS", 60)
# An SES send waits 20-50 ms for its HTTPS answer: 16 in flight per process keep
# the worker busy. An SMTP relay answers far sooner, and more sessions only
# compete for the process's CPU (a relay on the same network does best with 4).
SEND_CONCURRENCY_DEFAULTS = {"ses": 16, "sandbox": 16, "smtp": 8, "console": 8}
DELIVERY_SEND_CONCURRENCY = int(
    _positive_number("DELIVERY_SEND_CONCURRENCY", SEND_CONCURRENCY_DEFAULTS[EMAIL_PROVIDER], int)
)
# At most this many delivery tasks are published for one batch of new work (per
# priority); a task that claims a full chunk publishes the next one, so this is
# how many worker processes can work through a backlog at once.
DELIVERY_PARALLEL_CHUNKS = int(_positive_number("DELIVERY_PARALLEL_CHUNKS", 16, int))
MAX_BATCH_SIZE = int(_positive_number("MAX_BATCH_SIZE", 500, int))
SEND_AT_MAX_DAYS = _positive_number("SEND_AT_MAX_DAYS", 30)
# Delivery tasks are published with a scheduled email's send_at as their ETA
# once it is due within SCHEDULED_HORIZON_SECONDS: at acceptance, or by the
# beat task that runs every SCHEDULED_RELEASE_INTERVAL_SECONDS.
SCHEDULED_RELEASE_INTERVAL_SECONDS = _positive_number("SCHEDULED_RELEASE_INTERVAL_SECONDS", 30)
SCHEDULED_HORIZON_SECONDS = max(SCHEDULED_RELEASE_INTERVAL_SECONDS * 4, 120.0)
IDEMPOTENCY_KEY_TTL_HOURS = _positive_number("IDEMPOTENCY_KEY_TTL_HOURS", 24)

# Deliverability safety (SPEC §6.4). A soft-bounced recipient is sent once more
# after SOFT_BOUNCE_RETRY_SECONDS; SOFT_BOUNCE_LIMIT soft bounces of one address
# within SOFT_BOUNCE_WINDOW_DAYS suppress it. The breaker pauses a domain's stream (or the domain,
# or the account) whose rolling 24 h bounce or complaint rate reaches its line,
# once at least BREAKER_MIN_SENT recipients were sent; 0 hours = resume by hand.
SOFT_BOUNCE_RETRY_SECONDS = _positive_number("SOFT_BOUNCE_RETRY_SECONDS", 900)
SOFT_BOUNCE_LIMIT = int(_positive_number("SOFT_BOUNCE_LIMIT", 15, int))
SOFT_BOUNCE_WINDOW_DAYS = _positive_number("SOFT_BOUNCE_WINDOW_DAYS", 30)
BOUNCE_RATE_PAUSE = _positive_number("BOUNCE_RATE_PAUSE", 0.04)
COMPLAINT_RATE_PAUSE = _positive_number("COMPLAINT_RATE_PAUSE", 0.0008)
BREAKER_MIN_SENT = int(_positive_number("BREAKER_MIN_SENT", 1000, int))
BREAKER_AUTO_RESUME_HOURS = env.float("BREAKER_AUTO_RESUME_HOURS", default=0.0)
if BREAKER_AUTO_RESUME_HOURS < 0:
    raise ImproperlyConfigured("BREAKER_AUTO_RESUME_HOURS must be 0 (off) or more")
BREAKER_INTERVAL_SECONDS = _positive_number("BREAKER_INTERVAL_SECONDS", 60)
# While the provider account is stopped, how often SES GetAccount is asked whether it sends again.
PROVIDER_PROBE_INTERVAL_SECONDS = _positive_number("PROVIDER_PROBE_INTERVAL_SECONDS", 300)
# The sweeper re-enqueues messages left `queued` this long past their due time
# (a lost enqueue, a lost retry), and recovers the claims of a delivery process
# that has not beaten for SWEEP_SENDING_AFTER_SECONDS (a worker that died
# mid-send). A process holding claims beats every DELIVERY_HEARTBEAT_SECONDS,
# and starts no new send once it could not beat for the lease less two beats.
SWEEPER_INTERVAL_SECONDS = _positive_number("SWEEPER_INTERVAL_SECONDS", 15)
SWEEP_QUEUED_AFTER_SECONDS = _positive_number("SWEEP_QUEUED_AFTER_SECONDS", 60)
SWEEP_SENDING_AFTER_SECONDS = _positive_number("SWEEP_SENDING_AFTER_SECONDS", 60)
DELIVERY_HEARTBEAT_SECONDS = _positive_number("DELIVERY_HEARTBEAT_SECONDS", min(10.0, SWEEP_SENDING_AFTER_SECONDS / 4))
if DELIVERY_HEARTBEAT_SECONDS * 3 > SWEEP_SENDING_AFTER_SECONDS:
    raise ImproperlyConfigured(
        "DELIVERY_HEARTBEAT_SECONDS must be at most a third of SWEEP_SENDING_AFTER_SECONDS "
        f"(got {DELIVERY_HEARTBEAT_SECONDS} and {SWEEP_SENDING_AFTER_SECONDS})"
    )

SES_CONFIGURATION_SET = env.str("SES_CONFIGURATION_SET", default="")
AWS_REGION = env.str("AWS_REGION", default=env.str("AWS_DEFAULT_REGION", default="us-east-1"))
AWS_ENDPOINT_URL = env.str("AWS_ENDPOINT_URL", default="")
if EMAIL_PROVIDER == "sandbox" and not AWS_ENDPOINT_URL:
    raise ImproperlyConfigured(
        "EMAIL_PROVIDER=sandbox needs AWS_ENDPOINT_URL pointing at the local AWS emulator "
        "(`make run` starts one); use EMAIL_PROVIDER=ses for Amazon SES"
    )

ANYMAIL = {
    "AMAZON_SES_CLIENT_PARAMS": {
        "region_name": AWS_REGION,
        # One HTTP call per attempt: retries (and their count, backoff and the
        # rate limiter) are ours, recorded on the message, not hidden in botocore.
        "config": {"retries": {"mode": "standard", "total_max_attempts": 1}, "connect_timeout": 5, "read_timeout": 30},
    },
}
if SES_CONFIGURATION_SET:
    ANYMAIL["AMAZON_SES_CONFIGURATION_SET_NAME"] = SES_CONFIGURATION_SET

globals().update(unsubscribe_settings(env, debug=DEBUG, provider=EMAIL_PROVIDER))  # docs/streams.md: PUBLIC_BASE_URL, …
# --- Sending domains (emailsvc.domains, docs/domains.md) ------------------------
# SES identities added through /api/v1/domains. A pending or failed domain is checked
# (SES's status and public DNS) every DOMAIN_CHECK_INTERVAL_SECONDS, a verified one
# every DOMAIN_VERIFIED_CHECK_SECONDS. Custom MAIL FROM: <DOMAIN_MAIL_FROM_SUBDOMAIN>.<domain>.
DOMAIN_CHECK_INTERVAL_SECONDS = _positive_number("DOMAIN_CHECK_INTERVAL_SECONDS", 60)
DOMAIN_VERIFIED_CHECK_SECONDS = _positive_number("DOMAIN_VERIFIED_CHECK_SECONDS", 6 * 3600)
DOMAIN_MAIL_FROM_SUBDOMAIN = env.str("DOMAIN_MAIL_FROM_SUBDOMAIN", default="mail").strip().lower()
# The DNS check asks the system's resolver unless nameservers (IP addresses) are named.
DOMAIN_DNS_NAMESERVERS = env.list("DOMAIN_DNS_NAMESERVERS", default=[])
DOMAIN_DNS_PORT = int(_positive_number("DOMAIN_DNS_PORT", 53, int))
DOMAIN_DNS_TIMEOUT_SECONDS = _positive_number("DOMAIN_DNS_TIMEOUT_SECONDS", 3)
# EMAIL_PROVIDER=sandbox: a domain's identity, DKIM and MAIL FROM verify this long after it was added.
SANDBOX_DOMAIN_VERIFY_SECONDS = env.float("SANDBOX_DOMAIN_VERIFY_SECONDS", default=20.0)

# --- Tracking (SES events) ----------------------------------------------------
# The SQS queue SES events reach through SNS. In sandbox mode it defaults to a
# queue on the local AWS emulator that the event simulator fills.
SES_EVENTS_QUEUE_URL = env.str("SES_EVENTS_QUEUE_URL", default="")
SANDBOX_EVENTS_QUEUE_NAME = "emailsvc-ses-events"
SES_EVENTS_DRAIN_INTERVAL_SECONDS = _positive_number("SES_EVENTS_DRAIN_INTERVAL_SECONDS", 10)
# One drain run stops receiving after this long, so runs never pile up.
SES_EVENTS_DRAIN_MAX_SECONDS = _positive_number("SES_EVENTS_DRAIN_MAX_SECONDS", 8)
# How many drains may run at once (on any machines), and how many SQS messages
# a drain applies in one transaction (SQS hands out at most 10 per receive).
# A transaction costs about 30 statements whatever its size, so a backlog is
# applied 300 at a time (30 receives, well inside the visibility timeout).
SES_EVENTS_DRAIN_CONCURRENCY = int(_positive_number("SES_EVENTS_DRAIN_CONCURRENCY", 2, int))
SES_EVENTS_APPLY_BATCH = int(_positive_number("SES_EVENTS_APPLY_BATCH", 300, int))
SES_EVENTS_WAIT_SECONDS = int(_positive_number("SES_EVENTS_WAIT_SECONDS", 2, int))
if SES_EVENTS_WAIT_SECONDS > 20:
    raise ImproperlyConfigured("SES_EVENTS_WAIT_SECONDS must be at most 20 (the SQS long-poll limit)")
# How long a received message stays hidden; if it is not deleted by then (the
# drain died before committing) it comes back and is applied then.
SES_EVENTS_VISIBILITY_TIMEOUT = int(_positive_number("SES_EVENTS_VISIBILITY_TIMEOUT", 60, int))
# SNS HTTPS endpoint (/webhooks/ses/): only these topics are accepted and confirmed.
SNS_ALLOWED_TOPIC_ARNS = env.list("SNS_ALLOWED_TOPIC_ARNS", default=[])
SNS_MAX_AGE_SECONDS = int(_positive_number("SNS_MAX_AGE_SECONDS", 3600, int))

# --- Open and click tracking (tracking.hits, docs/tracking.md#open-and-click-tracking) ---
# A send opts in with "track": {"opens", "clicks"}. With SES the configuration set
# tracks: SES_TRACKING_CONFIGURATION_SET (one with open/click tracking and, if you
# like, a custom redirect domain), else SES_CONFIGURATION_SET. Other providers get
# emailsvc's own pixel and redirects under TRACKING_DOMAIN (a host, or a base URL).
SES_TRACKING_CONFIGURATION_SET = env.str("SES_TRACKING_CONFIGURATION_SET", default="")
TRACKING_DOMAIN = env.str("TRACKING_DOMAIN", default="http://127.0.0.1:8000").strip()
if (
    not TRACKING_DOMAIN
    or any(c in TRACKING_DOMAIN for c in " ?#\"\'<>")
    or ("://" in TRACKING_DOMAIN and not TRACKING_DOMAIN.lower().startswith(("http://", "https://")))
):
    raise ImproperlyConfigured(f"TRACKING_DOMAIN must be a host or a base URL, e.g. https://t.example.com (got {TRACKING_DOMAIN!r})")
# Opens fetched by privacy proxies (Apple Mail Privacy Protection, Gmail's image
# proxy) are stored, flagged `machine`, and left out of the counts unless this is true.
TRACKING_COUNT_MACHINE_OPENS = env.bool("TRACKING_COUNT_MACHINE_OPENS", default=False)
# Hits wait in a Redis stream; a woken task (and beat, every interval) applies
# them in sets of TRACKING_HITS_APPLY_BATCH, one transaction each.
TRACKING_HITS_APPLY_INTERVAL_SECONDS = _positive_number("TRACKING_HITS_APPLY_INTERVAL_SECONDS", 10)
TRACKING_HITS_APPLY_DELAY_SECONDS = env.float("TRACKING_HITS_APPLY_DELAY_SECONDS", default=1.0)
TRACKING_HITS_APPLY_BATCH = int(_positive_number("TRACKING_HITS_APPLY_BATCH", 500, int))

# --- Suppressions (issue 16) ----------------------------------------------------
# POST /api/v1/suppressions/import and load_suppressions: the largest CSV file.
SUPPRESSION_IMPORT_MAX_ROWS = int(_positive_number("SUPPRESSION_IMPORT_MAX_ROWS", 100_000, int))
SUPPRESSION_IMPORT_MAX_BYTES = int(_positive_number("SUPPRESSION_IMPORT_MAX_BYTES", 10 * 1024 * 1024, int))
# SES's account-level suppression list: pulled into ours every
# SES_SUPPRESSION_SYNC_INTERVAL_SECONDS (and a lifted address is taken off it),
# by default when SES sends; ours pushed to it with SES_SUPPRESSION_PUSH.
SES_SUPPRESSION_SYNC = env.bool("SES_SUPPRESSION_SYNC", default=EMAIL_PROVIDER in ("ses", "sandbox"))
SES_SUPPRESSION_PUSH = env.bool("SES_SUPPRESSION_PUSH", default=False)
SES_SUPPRESSION_SYNC_INTERVAL_SECONDS = _positive_number("SES_SUPPRESSION_SYNC_INTERVAL_SECONDS", 3600)

# --- Outbound status webhooks (tracking.webhooks) ------------------------------
# A committed status change with a subscriber wakes the dispatcher (at most one
# run waiting), which sends it to the subscribed endpoints within a second or two;
# beat also runs it every WEBHOOK_DISPATCH_INTERVAL_SECONDS, a safety net for a
# lost wake-up (and for retries due later than that). Each POST waits at most
# WEBHOOK_TIMEOUT_SECONDS to connect and for each read. An endpoint failing
# without a break for WEBHOOK_DISABLE_AFTER_HOURS is disabled.
WEBHOOK_DISPATCH_INTERVAL_SECONDS = _positive_number("WEBHOOK_DISPATCH_INTERVAL_SECONDS", 60)
WEBHOOK_TIMEOUT_SECONDS = _positive_number("WEBHOOK_TIMEOUT_SECONDS", 10)
WEBHOOK_DISABLE_AFTER_HOURS = _positive_number("WEBHOOK_DISABLE_AFTER_HOURS", 24)
# A status change whose id was taken before a later one's but committed after
# it is still picked up if it commits within this many seconds.
WEBHOOK_OUTBOX_GAP_SECONDS = _positive_number("WEBHOOK_OUTBOX_GAP_SECONDS", 120)
# Targets: https only, and only public addresses (checked when subscribing and
# before every connection), unless these allow plain http / private, loopback,
# link-local (cloud metadata) and other internal addresses.
WEBHOOK_ALLOW_HTTP = env.bool("WEBHOOK_ALLOW_HTTP", default=False)
WEBHOOK_ALLOW_PRIVATE_TARGETS = env.bool("WEBHOOK_ALLOW_PRIVATE_TARGETS", default=False)
# Extra CA certificates (a PEM file) trusted for https receivers with a private CA.
WEBHOOK_CA_BUNDLE = env.str("WEBHOOK_CA_BUNDLE", default="")

# --- SMTP submission (the Procfile's `smtp` process; docs/smtp.md) ------------
# STARTTLS on SMTP_INGRESS_PORT with a certificate; implicit TLS on
# SMTP_INGRESS_TLS_PORT when set (0: off). Without TLS, AUTH only from loopback.
SMTP_INGRESS_BIND = env.str("SMTP_INGRESS_BIND", default="127.0.0.1")
SMTP_INGRESS_PORT = env.int("SMTP_INGRESS_PORT", default=2525)
SMTP_INGRESS_TLS_PORT = env.int("SMTP_INGRESS_TLS_PORT", default=0)
SMTP_INGRESS_TLS_CERT = env.str("SMTP_INGRESS_TLS_CERT", default="")
SMTP_INGRESS_TLS_KEY = env.str("SMTP_INGRESS_TLS_KEY", default="")
SMTP_INGRESS_HOSTNAME = env.str("SMTP_INGRESS_HOSTNAME", default="")
SMTP_INGRESS_PROCESSES = int(_positive_number("SMTP_INGRESS_PROCESSES", 2, int))
for _name in ("SMTP_INGRESS_TLS_CERT", "SMTP_INGRESS_TLS_KEY"):
    if globals()[_name] and not Path(globals()[_name]).is_file():
        raise ImproperlyConfigured(f"{_name}: no file at {globals()[_name]}")
if bool(SMTP_INGRESS_TLS_CERT) != bool(SMTP_INGRESS_TLS_KEY):
    raise ImproperlyConfigured("SMTP_INGRESS_TLS_CERT and SMTP_INGRESS_TLS_KEY go together")

EMAIL_HOST = env.str("SMTP_HOST", default="localhost")
EMAIL_PORT = env.int("SMTP_PORT", default=25)
EMAIL_HOST_USER = env.str("SMTP_USERNAME", default="")
EMAIL_HOST_PASSWORD = env.str("SMTP_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("SMTP_USE_TLS", default=False)
EMAIL_USE_SSL = env.bool("SMTP_USE_SSL", default=False)
EMAIL_TIMEOUT = _positive_number("SMTP_TIMEOUT", 30)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("SMTP_USE_TLS and SMTP_USE_SSL are mutually exclusive")

# --- Templates (templates_app) ----------------------------------------------
# Bounds on rendering one stored template (all its parts together): a hostile or
# careless template fails with template_render_error instead of holding a worker.
TEMPLATE_RENDER_MAX_BYTES = int(_positive_number("TEMPLATE_RENDER_MAX_BYTES", 2 * 1024 * 1024, int))
TEMPLATE_RENDER_MAX_SECONDS = _positive_number("TEMPLATE_RENDER_MAX_SECONDS", 1)
TEMPLATE_RENDER_MAX_ITERATIONS = int(_positive_number("TEMPLATE_RENDER_MAX_ITERATIONS", 100_000, int))

# --- Celery -----------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_TASK_DEFAULT_QUEUE = "emails.normal"
# `events` carries the SES event drain so a deep send backlog never delays tracking.
CELERY_TASK_QUEUES = [Queue("emails.high"), Queue("emails.normal"), Queue("emails.low"), Queue("events")]
CELERY_TASK_ROUTES = {"tracking.*": {"queue": "events"}}
# A task is acknowledged only after it ran, and re-delivered if its worker died.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker whose broker goes away keeps trying to reconnect however long it
# takes (Celery's default gives up after 100 tries, about 45 minutes, and
# exits), and lets the chunk it is sending finish: its answers are journaled
# and recorded in the database, and its late ack goes through once the broker
# is back (config/kombu_redis.py).
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Flower. The housekeeping tasks beat runs send none (send_events=False): Flower's
# task list keeps the work — deliveries, webhook senders — in view.
CELERY_WORKER_SEND_TASK_EVENTS = True
# No "task-sent" event: it is a second publish for every email enqueued. Flower
# still shows every task from the worker's received/started/succeeded events.
CELERY_TASK_SEND_SENT_EVENT = False
# The longest countdown a delivery task is given in the broker. Longer waits
# (the daily quota, a long DELIVERY_RETRY_MAX_SECONDS) are kept in the database
# (`next_attempt_at`) and the sweeper enqueues the email when it is due: a task
# held unacknowledged for long trips Redis's visibility_timeout (re-delivery to
# a second worker) and RabbitMQ's consumer_timeout (30 min by default).
CELERY_LONGEST_COUNTDOWN_SECONDS = 900
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_LONGEST_COUNTDOWN_SECONDS + 900}
# Celery's Django fixup closes the database connection around every task unless
# this is set: workers keep theirs (closed by close_old_connections() in the
# tasks once broken or older than CONN_MAX_AGE), saving a PostgreSQL session per chunk.
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_BEAT_SCHEDULE = {
    "release-scheduled-emails": {
        "task": "emailsvc.release_scheduled",
        "schedule": SCHEDULED_RELEASE_INTERVAL_SECONDS,
        "options": {"expires": SCHEDULED_RELEASE_INTERVAL_SECONDS * 5, "queue": "emails.high"},
    },
    "sweep-stuck-emails": {
        "task": "emailsvc.sweep",
        "schedule": SWEEPER_INTERVAL_SECONDS,
        "options": {"expires": SWEEPER_INTERVAL_SECONDS, "queue": "emails.high"},
    },
    "check-sending-breaker": {
        "task": "emailsvc.breaker_check",
        "schedule": BREAKER_INTERVAL_SECONDS,
        "options": {"expires": BREAKER_INTERVAL_SECONDS, "queue": "emails.high"},
    },
    "probe-provider-account": {
        "task": "emailsvc.provider_probe",
        "schedule": PROVIDER_PROBE_INTERVAL_SECONDS,
        "options": {"expires": PROVIDER_PROBE_INTERVAL_SECONDS, "queue": "emails.high"},
    },
    "drain-ses-events": {
        "task": "tracking.drain_events",
        "schedule": SES_EVENTS_DRAIN_INTERVAL_SECONDS,
        # A run that could not start before the next one is due is dropped, not stacked.
        "options": {"expires": SES_EVENTS_DRAIN_INTERVAL_SECONDS},
    },
    "apply-tracking-hits": {
        "task": "tracking.hits_apply",
        "schedule": TRACKING_HITS_APPLY_INTERVAL_SECONDS,
        "options": {"expires": TRACKING_HITS_APPLY_INTERVAL_SECONDS},
    },
    "dispatch-status-webhooks": {
        "task": "tracking.webhooks_dispatch",
        "schedule": WEBHOOK_DISPATCH_INTERVAL_SECONDS,
        "options": {"expires": WEBHOOK_DISPATCH_INTERVAL_SECONDS},
    },
}

if SES_SUPPRESSION_SYNC or SES_SUPPRESSION_PUSH:
    CELERY_BEAT_SCHEDULE["sync-ses-suppressions"] = {
        "task": "emailsvc.ses_suppressions_sync",
        "schedule": SES_SUPPRESSION_SYNC_INTERVAL_SECONDS,
        "options": {"expires": SES_SUPPRESSION_SYNC_INTERVAL_SECONDS, "queue": "emails.low"},
    }

# Sending domains whose check is due (none with EMAIL_PROVIDER=smtp or console).
CELERY_BEAT_SCHEDULE["check-sending-domains"] = {
    "task": "emailsvc.domains_refresh",
    "schedule": DOMAIN_CHECK_INTERVAL_SECONDS,
    "options": {"expires": DOMAIN_CHECK_INTERVAL_SECONDS, "queue": "emails.low"},
}

# --- Metrics (core.metrics defines them, console.metrics serves /metrics) ------------
# /metrics answers a scraper that sends `Authorization: Bearer <METRICS_TOKEN>`;
# with no token it is refused, unless METRICS_PUBLIC=true (when only the scraper
# can reach the web process's address). PROMETHEUS_MULTIPROC_DIR (read by
# prometheus-client itself from the environment) makes the figures of every
# web, worker and beat process on a host add up.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="").strip()
METRICS_PUBLIC = env.bool("METRICS_PUBLIC", default=False)
if METRICS_TOKEN and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 16 characters long")
if METRICS_TOKEN and METRICS_PUBLIC:
    raise ImproperlyConfigured("set METRICS_TOKEN or METRICS_PUBLIC=true, not both")

# --- Logging (core.logs) ------------------------------------------------------
# One JSON object per line (LOG_FORMAT=text: the same fields for a human), from
# every logger, with request_id / task_id / email_id; recipient addresses redacted.
LOG_LEVEL = _choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOG_FORMAT = _choice("LOG_FORMAT", "json", ("json", "text"))
# Workers and beat keep this configuration (core.logs connects Celery's setup_logging).
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"structured": {"()": "core.logs.formatter", "log_format": LOG_FORMAT}},
    "filters": {"housekeeping_quiet": {"()": "config.celery.HousekeepingQuiet"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "structured"},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "botocore": {"level": "WARNING"},
        "boto3": {"level": "WARNING"},
        # Django's own handlers (a plain console one under DEBUG, mail to ADMINS) would
        # write its lines a second time, unformatted and unredacted: only the root's.
        "django": {"handlers": [], "level": "NOTSET", "propagate": True},
        "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # Beat's "Sending due task" and the worker's "received"/"succeeded" lines of
        # the housekeeping tasks beat runs: an idle service writes next to nothing.
        **{
            name: {"filters": ["housekeeping_quiet"]}
            for name in ("celery.beat", "celery.worker.strategy", "celery.app.trace")
        },
    },
}
