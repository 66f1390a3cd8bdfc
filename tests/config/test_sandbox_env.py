"""Management commands with no variables set use the settings of the last `make
run` (SANDBOX_DIR/env); a deployment's environment never reads that file; a
missing or bad setting, and Redis or the AWS endpoint not answering (`make run`
stopped), end a command with one line and exit code 1, never a traceback.

manage.py runs as a subprocess with a clean environment (PATH and SANDBOX_DIR
only) and a state directory in tmp_path, laid out as `make run` leaves it."""

import os
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from config.devservices import BASE_DIR, free_port
from config.sandbox_env import sandbox_env_apply, sandbox_env_write
from emailsvc.models import ApiKey
from tests.config.conftest import _database_url

STOPPED = {  # what `make run` wrote, its Redis and moto gone since
    "DEBUG": "true",
    "SECRET_KEY": "sandbox-secret-from-make-run",
    "EMAIL_PROVIDER": "sandbox",
    "AWS_ACCESS_KEY_ID": "sandbox",
    "AWS_SECRET_ACCESS_KEY": "sandbox",
    "AWS_DEFAULT_REGION": "us-east-1",
    "LOG_FORMAT": "text",
}

REDIS = "Redis at 127.0.0.1:{redis} (REDIS_URL)"
MOTO = "the sandbox AWS endpoint (moto) at 127.0.0.1:{aws} (AWS_ENDPOINT_URL)"


def manage(*args: str, sandbox: Path, **variables: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "SANDBOX_DIR": str(sandbox), **variables}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, text=True, capture_output=True, timeout=120
    )


def settings_of(sandbox: Path) -> dict[str, str]:
    environ = {"SANDBOX_DIR": str(sandbox)}
    sandbox_env_apply(environ)
    return environ


def one_line(result: subprocess.CompletedProcess) -> str:
    """The single line a failed command wrote (and nothing else)."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("manage.py: "), result.stderr
    return result.stderr.removeprefix("manage.py: ").rstrip("\n")


@pytest.fixture
def stopped_sandbox(tmp_path) -> Path:
    """The state directory of a `make run` that ran on the test database and has stopped."""
    sandbox_env_write(
        {
            **STOPPED,
            "DATABASE_URL": _database_url(),
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        },
        tmp_path,
    )
    return tmp_path


@pytest.mark.parametrize("command", [("create_api_key", "--name", "ci"), ("makemigrations", "--check"), ("migrate",)])
def test_without_settings_or_make_run_state_a_command_names_secret_key_and_make_run(tmp_path, command):
    result = manage(*command, sandbox=tmp_path / "never-ran")

    assert one_line(result) == (
        "SECRET_KEY must be set (or DEBUG=true for local use); "
        "or start `make run` once: commands then use its settings (.sandbox/env)"
    )


@pytest.mark.django_db(transaction=True)
def test_create_api_key_with_no_variables_uses_make_runs_settings_and_the_key_works(stopped_sandbox):
    result = manage("create_api_key", "--name", "from the sandbox", sandbox=stopped_sandbox)

    assert result.returncode == 0, result.stderr
    [raw_key] = result.stdout.splitlines()
    assert result.stderr.startswith("Created API key 'from the sandbox' (sending).")
    assert ApiKey.objects.filter(name="from the sandbox", revoked_at__isnull=True).count() == 1
    answer = APIClient().get("/api/v1/emails", HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert answer.status_code == 200


@pytest.mark.parametrize(
    ("command", "needs"),
    [
        (["resume_sending"], REDIS),
        (["drain_events", "--once"], REDIS),
        (["sandbox_init", "--admin-password", "unused"], MOTO),
        (["sync_ses_suppressions"], MOTO),
    ],
    ids=["resume_sending", "drain_events", "sandbox_init", "sync_ses_suppressions"],
)
def test_with_make_run_stopped_a_command_needing_redis_or_moto_says_so_in_one_line(stopped_sandbox, command, needs):
    ports = {
        "redis": urlsplit(settings_of(stopped_sandbox)["REDIS_URL"]).port,
        "aws": urlsplit(settings_of(stopped_sandbox)["AWS_ENDPOINT_URL"]).port,
    }

    line = one_line(manage(*command, sandbox=stopped_sandbox))

    assert line == (
        f"{command[0]} needs {needs.format(**ports)}, which does not answer: "
        f"is `make run` running? (settings from {stopped_sandbox / 'env'})"
    )


def test_configured_by_hand_an_unreachable_aws_endpoint_is_one_line_naming_its_setting(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"
    variables = {
        "SECRET_KEY": "deployed", "AWS_ENDPOINT_URL": endpoint, "DATABASE_URL": f"sqlite:///{tmp_path / 'db'}",
        "AWS_ACCESS_KEY_ID": "sandbox", "AWS_SECRET_ACCESS_KEY": "sandbox",
    }

    line = one_line(manage("sandbox_init", "--admin-password", "unused", sandbox=tmp_path, **variables))

    assert line.startswith(f'Could not connect to the endpoint URL: "{endpoint}/')
    assert line.endswith("; check AWS_ENDPOINT_URL")


def test_what_the_environment_sets_wins_over_the_file(stopped_sandbox):
    code = "from django.conf import settings as s; print(s.EMAIL_PROVIDER, s.SECRET_KEY, s.SANDBOX_ENV_FILE)"

    result = manage("shell", "--no-imports", "-c", code, sandbox=stopped_sandbox, EMAIL_PROVIDER="console")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["console", STOPPED["SECRET_KEY"], str(stopped_sandbox / "env")]


@pytest.mark.parametrize(
    ("variables", "line"),
    [
        # SECRET_KEY set: the file's AWS_ENDPOINT_URL is not taken either.
        ({"SECRET_KEY": "deployed"}, "EMAIL_PROVIDER=sandbox needs AWS_ENDPOINT_URL"),
        ({"DATABASE_URL": "sqlite:////tmp/deployed.sqlite3"}, "SECRET_KEY must be set (or DEBUG=true for local use)"),
    ],
    ids=["SECRET_KEY", "DATABASE_URL"],
)
def test_a_configured_environment_never_reads_the_file(stopped_sandbox, variables, line):
    assert one_line(manage("create_api_key", "--name", "ci", sandbox=stopped_sandbox, **variables)).startswith(line)


@pytest.mark.parametrize(
    ("name", "value", "line"),
    [
        ("SMTP_PORT", "twenty-five", "SMTP_PORT is not valid (invalid literal for int() with base 10: 'twenty-five')"),
        ("EMAIL_PROVIDER", "pigeon", "EMAIL_PROVIDER='pigeon' is not one of sandbox, ses, smtp, console"),
        ("SEND_RATE_PER_SECOND", "fast", "SEND_RATE_PER_SECOND is not valid (could not convert string to float"),
        ("DATABASE_URL", "nosuchdb://host/name", "DATABASE_URL: 'nosuchdb' isn't an available database backend"),
        ("DATABASE_URL", f"postgres://nobody@127.0.0.1:{free_port()}/none", "cannot use the database ("),
    ],
    ids=["SMTP_PORT", "EMAIL_PROVIDER", "SEND_RATE_PER_SECOND", "DATABASE_URL-scheme", "DATABASE_URL-unreachable"],
)
def test_a_bad_setting_is_one_line_naming_it(tmp_path, name, value, line):
    variables = {"SECRET_KEY": "deployed", "EMAIL_PROVIDER": "console", name: value}

    assert one_line(manage("migrate", "--check", sandbox=tmp_path, **variables)).startswith(line)


def test_a_damaged_file_is_one_line_saying_to_delete_it(tmp_path):
    (tmp_path / "env").write_text("SECRET_KEY='never closed\n")

    line = one_line(manage("create_api_key", "--name", "ci", sandbox=tmp_path))

    assert line == f"{tmp_path / 'env'} line 1 is not NAME=value; delete the file (`make run` writes it again)"


def test_the_file_keeps_any_value_exactly_holds_only_settings_and_only_its_owner_reads_it(tmp_path):
    password = "p a's$w\"o`rd #1 \\ ü"
    sandbox_env_write({"SMTP_PASSWORD": password, "SECRET_KEY": "k", "HOME": "/home/someone"}, tmp_path)
    environ = {"SANDBOX_DIR": str(tmp_path), "SECRET_KEY": ""}

    assert sandbox_env_apply(environ) == tmp_path / "env"

    assert environ == {"SANDBOX_DIR": str(tmp_path), "SECRET_KEY": "", "SMTP_PASSWORD": password}
    assert stat.S_IMODE((tmp_path / "env").stat().st_mode) == 0o600
    assert settings.SANDBOX_ENV_FILE is None  # the suite sets SECRET_KEY: never read here
