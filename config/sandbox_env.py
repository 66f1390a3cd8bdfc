"""
The settings of the last `make run`, kept for management commands.

`make run` (config/devservices.py) keeps its state in SANDBOX_DIR (default
`.sandbox/` in the checkout): generated secrets, beat's schedule, and `env`, the
settings it gave its processes — the generated SECRET_KEY, the embedded Redis's
URL, moto's endpoint, the provider, a DATABASE_URL it was given. When neither
SECRET_KEY nor DATABASE_URL is set, config/settings.py takes from that file
every variable the environment does not set: `python manage.py create_api_key …`
beside `make run` (or after it) needs no variables, and a configured deployment
never reads it. The file is also valid shell (`set -a; . .sandbox/env`).
"""

import os
import secrets
import shlex
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
ENV_FILE = "env"

# The variables of `make run`'s processes that commands need to act on the same
# service: what it chose itself and what it was given of the database, the
# provider, the sender and the brokers.
SETTINGS = (
    "DEBUG", "SECRET_KEY", "DATABASE_URL", "EMAIL_PROVIDER", "REDIS_URL", "CELERY_BROKER_URL",
    "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION",
    "SES_CONFIGURATION_SET", "SES_EVENTS_QUEUE_URL",
    "SMTP_HOST", "SMTP_PORT", "SMTP_USERNAME", "SMTP_PASSWORD", "SMTP_USE_TLS", "SMTP_USE_SSL", "SMTP_TIMEOUT",
    "DEFAULT_FROM_EMAIL", "DEFAULT_FROM_NAME",
    "ALLOWED_FROM_DOMAINS", "ALLOWED_REPLY_TO_DOMAINS", "ALLOWED_RECIPIENT_DOMAINS",
    "METRICS_TOKEN", "LOG_FORMAT", "WEBHOOK_ALLOW_HTTP", "WEBHOOK_ALLOW_PRIVATE_TARGETS",
)


def state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where `make run` keeps its state: SANDBOX_DIR, else `.sandbox/` in the checkout."""
    return Path(environ.get("SANDBOX_DIR") or BASE_DIR / ".sandbox")


def persistent_secret(name: str, directory: Path) -> str:
    """The secret kept in `directory`/`name`, generated the first time."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(18))
        path.chmod(0o600)
    return path.read_text().strip()


def sandbox_env_write(env: Mapping[str, str], directory: Path) -> Path:
    """Write the SETTINGS that `env` sets to `directory`/env (only its owner may read it)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        "# The settings `make run` gave its processes; management commands use them when neither",
        "# SECRET_KEY nor DATABASE_URL is set (config/sandbox_env.py). Written again by every `make run`.",
        *(f"{name}={shlex.quote(env[name])}" for name in SETTINGS if name in env and "\n" not in env[name]),
    ]
    path, partial = directory / ENV_FILE, directory / f"{ENV_FILE}.partial"
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write("\n".join(lines) + "\n")
    os.replace(partial, path)
    return path


def sandbox_env_apply(environ: MutableMapping[str, str]) -> Path | None:
    """Set in `environ` what the sandbox's env file sets and `environ` does not,
    unless `environ` sets SECRET_KEY or DATABASE_URL; the file read (None: none)."""
    if environ.get("SECRET_KEY") or environ.get("DATABASE_URL"):
        return None
    path = state_dir(environ) / ENV_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ImproperlyConfigured(f"cannot read {path} ({error.strerror}); set SECRET_KEY and the others") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            [assignment] = shlex.split(line)
        except ValueError:
            assignment = ""
        name, equals, value = assignment.partition("=")
        if not equals or not name.isidentifier():
            raise ImproperlyConfigured(
                f"{path} line {number} is not NAME=value; delete the file (`make run` writes it again)"
            )
        environ.setdefault(name, value)
    return path
