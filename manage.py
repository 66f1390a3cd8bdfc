#!/usr/bin/env python
"""Django's command line. A setting that is missing or bad, and a service a
command needs (Redis, the AWS endpoint) that does not answer, end the command
with one line saying what to do and exit code 1, not with a traceback."""

import os
import re
import socket
import sys
import traceback
from pathlib import Path
from urllib.parse import urlsplit

SETTINGS_FILE = Path(__file__).resolve().parent / "config" / "settings.py"
# What of `make run`'s services a command needs (the variables naming them).
SERVICES = {"REDIS_URL": "Redis", "AWS_ENDPOINT_URL": "the sandbox AWS endpoint (moto)"}
NEEDS = {
    "drain_events": ("REDIS_URL", "AWS_ENDPOINT_URL"),
    "resume_sending": ("REDIS_URL",),
    "sandbox_init": ("AWS_ENDPOINT_URL",),
    "sync_ses_suppressions": ("AWS_ENDPOINT_URL",),
}


def _sandbox_down(command: str) -> str | None:
    """With settings from `make run`'s env file: which service `command` needs does
    not answer, in one line (None: all do, or the settings are not the sandbox's)."""
    from django.conf import settings

    try:
        sandbox = settings.SANDBOX_ENV_FILE
    except Exception:  # reported when the command runs
        return None
    for name in NEEDS.get(command, ()) if sandbox else ():
        if not (value := os.environ.get(name)):
            continue
        address = urlsplit(value).netloc.rpartition("@")[2]  # no credentials
        try:
            socket.create_connection((urlsplit(value).hostname, urlsplit(value).port), timeout=2).close()
        except (OSError, TypeError, ValueError):
            return (
                f"{command} needs {SERVICES[name]} at {address} ({name}), which does not answer: "
                f"is `make run` running? (settings from {sandbox})"
            )
    return None


def _sandbox_hint() -> str:
    """What to add when a command's settings may have been meant to come from `make run`."""
    from django.conf import settings

    try:
        sandbox = settings.SANDBOX_ENV_FILE
    except Exception:  # the settings themselves are what failed
        sandbox = None
    if sandbox:
        return f"; is `make run` running? It starts it (settings from {sandbox})"
    if not os.environ.get("SECRET_KEY") and not os.environ.get("DATABASE_URL"):
        return "; or start `make run` once: commands then use its settings (.sandbox/env)"
    return ""


def _setting_name(error: BaseException) -> str | None:
    """The variable config/settings.py was reading when `error` was raised, if it was."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if Path(frame.filename) == SETTINGS_FILE]
    names = re.findall(r'"([A-Z][A-Z0-9_]+)"', frames[-1].line or "") if frames else []
    return names[0] if names else None


def _problem(error: Exception) -> str | None:
    """The one line that explains `error`, if it is a settings or connection problem."""
    from botocore.exceptions import EndpointConnectionError
    from django.conf import settings
    from django.core.exceptions import AppRegistryNotReady, ImproperlyConfigured
    from django.db import OperationalError as DatabaseError
    from kombu.exceptions import OperationalError
    from kombu.utils.url import maybe_sanitize_url
    from redis.exceptions import ConnectionError as RedisConnectionError

    if isinstance(error, AppRegistryNotReady):
        # Django keeps a settings error of its set-up for later; a command that needs
        # the apps (makemigrations, migrate) then fails with this instead: name the cause.
        try:
            settings.INSTALLED_APPS  # noqa: B018 - imports the settings module again, raising its error
        except Exception as cause:  # whatever the settings module raised
            return _problem(cause)
        return None
    if (name := _setting_name(error)) and name not in str(error):
        return f"{name} is not valid ({error}); fix or unset it"
    if isinstance(error, ImproperlyConfigured):
        message = str(error).splitlines()[0]
        if "isn't an available database backend" in message:  # Django's words for DATABASE_URL's scheme
            message = f"DATABASE_URL: {message.partition('.')[0]}; use postgres://… or sqlite:///…"
        return f"{message}{_sandbox_hint() if 'SECRET_KEY' in message or 'AWS_ENDPOINT_URL' in message else ''}"
    if isinstance(error, DatabaseError):
        return f"cannot use the database ({str(error).strip().splitlines()[0]}); check DATABASE_URL"
    if isinstance(error, (RedisConnectionError, OperationalError)):
        url = maybe_sanitize_url(settings.CELERY_BROKER_URL)
        return f"cannot reach Redis at {url} ({error}){_sandbox_hint() or '; check REDIS_URL'}"
    if isinstance(error, EndpointConnectionError):
        return f"{error}{_sandbox_hint() or '; check AWS_ENDPOINT_URL'}"
    return None


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.management import execute_from_command_line

    if problem := _sandbox_down(sys.argv[1] if len(sys.argv) > 1 else ""):
        sys.exit(f"{Path(sys.argv[0]).name}: {problem}")
    try:
        execute_from_command_line(sys.argv)
    except Exception as error:
        problem = _problem(error)
        if problem is None:
            raise
        sys.exit(f"{Path(sys.argv[0]).name}: {problem}")


if __name__ == "__main__":
    main()
