"""`python -m config.flower [flower options]`: Flower, never open by mistake (SPEC §7).

Flower shows every task's arguments (email ids, addresses) and can revoke
tasks and shut workers down; started without authentication it gives that to
anyone who reaches its port. This wrapper refuses to start it unless

- FLOWER_BASIC_AUTH is set to `user:password` (several separated by commas),
  each with a user and a password; or
- FLOWER_AUTH is set (Flower's own OAuth2 login: FLOWER_AUTH_PROVIDER,
  FLOWER_OAUTH2_KEY, …); or
- FLOWER_UNAUTHENTICATED=true says so explicitly (a laptop, nothing else).

then runs `celery -A config flower` with the given options. Flower reads
FLOWER_BASIC_AUTH from the environment itself, so the password never appears
on a command line (`ps`). `make run` generates a password (config.devservices).

Flower's own `/metrics` (its Prometheus figures: task names, worker names,
counts) answers without credentials; here it asks for the same ones as every
other page. `/healthcheck` (a bare "OK") stays open for probes.
"""

import os
import sys

EXIT_REFUSED = 2

REFUSAL = """Flower will not start without authentication.
Set FLOWER_BASIC_AUTH=user:password (several: user1:pass1,user2:pass2), or FLOWER_AUTH for
Flower's OAuth2 login; for a local run only, FLOWER_UNAUTHENTICATED=true starts it open."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def auth_problem(environ) -> str | None:
    """Why Flower must not start with this environment (None: it may)."""
    basic = (environ.get("FLOWER_BASIC_AUTH") or "").strip()
    if basic:
        for credential in basic.split(","):
            user, colon, password = credential.partition(":")
            if not colon or not user.strip() or not password:
                return (
                    "FLOWER_BASIC_AUTH must be user:password (several separated by commas), "
                    "each with a user and a password."
                )
        return None
    if (environ.get("FLOWER_AUTH") or "").strip():
        return None
    if _truthy(environ.get("FLOWER_UNAUTHENTICATED")):
        return None
    return REFUSAL


def main(argv: list[str]) -> int:
    problem = auth_problem(os.environ)
    if problem:
        print(f"config.flower: {problem}", file=sys.stderr)
        return EXIT_REFUSED
    if not (os.environ.get("FLOWER_BASIC_AUTH") or os.environ.get("FLOWER_AUTH")):
        print("config.flower: WARNING: Flower starts WITHOUT authentication (FLOWER_UNAUTHENTICATED=true).", file=sys.stderr)
    _metrics_behind_auth()
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", "-A", "config", "flower", *argv]
    return celery_main()  # Flower runs in this process (signals, exit code)


def _metrics_behind_auth() -> None:
    """Flower's /metrics handler, authenticated as its pages are (tornado's
    `authenticated`: Flower's basic auth answers 401, its OAuth2 login redirects)."""
    from flower.views.monitor import Metrics
    from tornado.web import authenticated

    if not getattr(Metrics.get, "_emailsvc_authenticated", False):
        Metrics.get = authenticated(Metrics.get)
        Metrics.get._emailsvc_authenticated = True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
