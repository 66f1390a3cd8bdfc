"""Importing a suppression list from CSV (issue 16): POST /api/v1/suppressions/import
and `manage.py load_suppressions` read and validate every row the same way,
report bad rows by line, and import nothing unless every row is good — or, when
the operator says so (`partial=true`, `--partial`), the good rows only."""

import io
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.utils import timezone

from emailsvc.models import ApiKey, Suppression
from emailsvc.suppressions.services import suppression_add

IMPORT = "/api/v1/suppressions/import"
BASE_DIR = Path(__file__).resolve().parents[3]
# Rows 7, 42 and 80 of 100 are bad; with the header on line 1 they are lines 8, 43 and 81.
BAD_ROWS = {
    7: ("not-an-address,,,", "invalid_address"),
    42: ("user42@example.com,bounced,,", "invalid_reason"),
    80: ("user80@example.com,manual,,tomorrow", "invalid_expires_at"),
}


def hundred_rows() -> str:
    lines = ["email,reason,note,expires_at"]
    for n in range(1, 101):
        lines.append(BAD_ROWS[n][0] if n in BAD_ROWS else f"User{n}@Example.com,hard_bounce,row {n},")
    return "\r\n".join(lines) + "\r\n"


@pytest.fixture
def full(make_client):
    return make_client(ApiKey.Permission.FULL)


def send_csv(client, text: str | bytes, **query):
    body = text.encode() if isinstance(text, str) else text
    url = IMPORT + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    return client.post(url, body, content_type="text/csv")


# --- the case: 3 bad rows of 100 -----------------------------------------------


def test_three_bad_rows_of_100_are_reported_by_line_and_nothing_is_imported(full):
    response = send_csv(full, hundred_rows())

    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "import_has_errors"
    assert "nothing was imported" in body["detail"] and "partial=true" in body["detail"]
    assert body["rows"] == 100 and body["error_count"] == 3
    assert [(e["line"], e["error"]) for e in body["errors"]] == [
        (8, "invalid_address"), (43, "invalid_reason"), (81, "invalid_expires_at"),
    ]
    assert all(e["detail"] for e in body["errors"])
    assert not Suppression.objects.exists()


def test_with_partial_the_97_good_rows_are_imported_and_the_3_reported(full):
    response = send_csv(full, hundred_rows(), partial="true")

    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in ("rows", "imported", "existing", "duplicates", "error_count")} == {
        "rows": 100, "imported": 97, "existing": 0, "duplicates": 0, "error_count": 3,
    }
    assert [e["line"] for e in body["errors"]] == [8, 43, 81]
    assert Suppression.objects.count() == 97
    row = Suppression.objects.get(email="user1@example.com")
    assert (row.reason, row.note, row.expires_at) == ("hard_bounce", "row 1", None)
    assert row.source.startswith("api-key:test full (")
    assert not Suppression.objects.filter(email__in=["user42@example.com", "user80@example.com"]).exists()


def test_the_same_file_as_a_multipart_upload(full):
    upload = io.BytesIO(hundred_rows().encode())
    upload.name = "bounces.csv"
    refused = full.post(IMPORT, {"file": upload})
    assert refused.status_code == 400 and refused.json()["error_count"] == 3

    upload.seek(0)
    accepted = full.post(IMPORT + "?partial=1", {"file": upload})
    assert accepted.status_code == 200 and accepted.json()["imported"] == 97


# --- what an import does to entries already there -------------------------------------------


def test_existing_entries_are_kept_expired_ones_renewed_and_duplicates_counted(full):
    kept = suppression_add(email="vip@example.com", reason="manual", note="support said so")
    suppression_add(email="back@example.com", reason="manual", expires_at=timezone.now() - timedelta(days=1))
    csv = (
        "email,reason,note\n"
        "VIP@example.com,hard_bounce,from the old ESP\n"
        "back@example.com,complaint,\n"
        "new@bücher.example,,\n"
        "NEW@xn--bcher-kva.example,unsubscribe,\n"
    )
    response = send_csv(full, csv)

    assert response.status_code == 200, response.json()
    assert {k: response.json()[k] for k in ("rows", "imported", "existing", "duplicates")} == {
        "rows": 4, "imported": 2, "existing": 1, "duplicates": 1,
    }
    vip = Suppression.objects.get(email="vip@example.com")
    assert (vip.pk, vip.reason, vip.note) == (kept.pk, "manual", "support said so")
    back = Suppression.objects.get(email="back@example.com")
    assert (back.reason, back.expires_at) == ("complaint", None)
    assert Suppression.objects.get(email="new@xn--bcher-kva.example").reason == "manual"  # the first row wins

    assert send_csv(full, csv).json()["existing"] == 3  # the same file again changes nothing


def test_empty_reasons_take_the_reason_parameter_and_expiry_is_read(full):
    csv = "email,reason,expires_at\na@example.com,,2099-01-31\nb@example.com,complaint,2099-01-31T12:00:00+02:00\n"
    assert send_csv(full, csv, reason="unsubscribe").status_code == 200
    a, b = Suppression.objects.order_by("email")
    assert a.reason == "unsubscribe" and a.expires_at.isoformat() == "2099-01-31T00:00:00+00:00"
    assert b.reason == "complaint" and b.expires_at.isoformat() == "2099-01-31T10:00:00+00:00"


def test_line_numbers_count_blank_lines_and_multi_line_cells(full):
    csv = '\ufeffemail;note\n\nok@example.com;"two\nlines"\nbad;\n\n"also bad";x\n'  # BOM, semicolons
    body = send_csv(full, csv).json()
    assert body["error"] == "import_has_errors"
    assert [(e["line"], e["error"]) for e in body["errors"]] == [
        (3, "invalid_field"), (5, "invalid_address"), (7, "invalid_address"),
    ]
    assert body["rows"] == 3


@pytest.mark.parametrize(
    ("row", "code"),
    [
        (",manual", "missing_fields"),
        ("a@example.com,manual,note,,extra", "invalid_field"),
        ("a@example.com,manual,nul\x00note", "invalid_field"),
        ('a@example.com,manual,"two\nlines"', "invalid_field"),  # control characters in a note: line breaks,
        ('a@example.com,manual,"cr\rlf"', "invalid_field"),  # tabs, C1 controls, Unicode line separators
        ("a@example.com,manual,tab\there", "invalid_field"),
        ("a@example.com,manual,c1\x85note", "invalid_field"),
        ("a@example.com,manual,ls\u2028note", "invalid_field"),
        ("a@[192.0.2.1],manual", "invalid_address"),
        ("a%b@example.com,manual", "invalid_address"),
        ("user@localhost,manual", "invalid_address"),
        (f"{'a' * 320}@example.com,manual", "invalid_address"),
        ("a@example.com,manual,,2001-01-01", "invalid_expires_at"),
        ("a@example.com,manual,,2027-13-01", "invalid_expires_at"),
    ],
)
def test_each_kind_of_bad_row_has_its_code(full, row, code):
    body = send_csv(full, f"email,reason,note,expires_at\n{row}\nlast@example.com\n").json()
    assert [(e["line"], e["error"]) for e in body["errors"]] == [(2, code)]
    assert not Suppression.objects.exists()


# --- a file that cannot be read as a whole ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_csv"),
        (b"jane@example.com\nkim@example.com\n", "invalid_csv"),  # no header
        (b"address,reason\njane@example.com,manual\n", "invalid_csv"),
        (b"email,reasn\njane@example.com,manual\n", "invalid_csv"),  # a misspelt column is not dropped silently
        (b"email,email\njane@example.com,x\n", "invalid_csv"),
        ("email\nzoë@bücher.example\n".encode("latin-1"), "invalid_csv"),
        (b'email\n"unterminated@example.com\n', "invalid_csv"),
    ],
)
def test_an_unreadable_file_is_400_and_imports_nothing(full, body, code):
    response = send_csv(full, body)
    assert response.status_code == 400
    assert response.json()["error"] == code
    assert not Suppression.objects.exists()


def test_row_and_size_limits_are_413_with_a_clear_error(full, settings):
    settings.SUPPRESSION_IMPORT_MAX_ROWS = 5
    rows = send_csv(full, "email\n" + "".join(f"u{n}@example.com\n" for n in range(6)))
    assert rows.status_code == 413
    assert rows.json()["error"] == "too_many_rows" and "5" in rows.json()["detail"]

    settings.SUPPRESSION_IMPORT_MAX_BYTES = 100
    body = "email\n" + "".join(f"u{n}@example.com\n" for n in range(5, 12))
    assert len(body) > 100
    too_big = send_csv(full, body)
    assert too_big.status_code == 413 and too_big.json()["error"] == "payload_too_large"
    upload = io.BytesIO(body.encode())
    upload.name = "list.csv"
    assert full.post(IMPORT, {"file": upload}).status_code == 413
    assert not Suppression.objects.exists()


def test_other_bodies_are_refused(full):
    as_json = full.post(IMPORT, '{"email": "a@example.com"}', content_type="application/json")
    assert as_json.status_code == 415 and as_json.json()["error"] == "unsupported_media_type"
    no_file = full.post(IMPORT, {"other": "x"})
    assert no_file.status_code == 400 and no_file.json()["error"] == "missing_fields"
    bad_query = send_csv(full, "email\na@example.com\n", partial="perhaps")
    assert bad_query.status_code == 400 and bad_query.json()["error"] == "invalid_field"


# --- the command ---------------------------------------------------------------------------


@pytest.fixture
def hundred_rows_file(tmp_path) -> Path:
    path = tmp_path / "bounces.csv"
    path.write_text(hundred_rows())
    return path


@pytest.mark.django_db
def test_command_lists_bad_lines_imports_nothing_and_fails(hundred_rows_file):
    stderr = io.StringIO()
    with pytest.raises(CommandError, match="3 of 100 rows are invalid.*nothing was imported"):
        call_command("load_suppressions", str(hundred_rows_file), stderr=stderr, stdout=io.StringIO())
    assert [line.split(":")[0] for line in stderr.getvalue().splitlines()] == ["line 8", "line 43", "line 81"]
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_command_with_partial_imports_the_97(hundred_rows_file):
    stdout, stderr = io.StringIO(), io.StringIO()
    call_command("load_suppressions", str(hundred_rows_file), "--partial", stdout=stdout, stderr=stderr)
    assert "100 rows: 97 imported, 0 already suppressed, 0 duplicates, 3 bad" in stdout.getvalue()
    assert len(stderr.getvalue().splitlines()) == 3
    assert Suppression.objects.count() == 97
    assert Suppression.objects.get(email="user1@example.com").source == "load_suppressions:bounces.csv"


@pytest.mark.django_db
def test_command_takes_a_default_reason_and_refuses_an_unreadable_file(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("email\nA@example.com\n")
    call_command("load_suppressions", str(path), "--reason", "unsubscribe", stdout=io.StringIO())
    assert Suppression.objects.get().reason == "unsubscribe"

    path.write_text("jane@example.com\n")
    with pytest.raises(CommandError, match="invalid_csv: Line 1 must be the header"):
        call_command("load_suppressions", str(path), stdout=io.StringIO())
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("load_suppressions", str(tmp_path / "missing.csv"), stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_command_exit_code_is_not_zero_when_it_imported_nothing(hundred_rows_file):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "TESTS_DB_NAME": str(connections["default"].settings_dict["NAME"]),
    }

    def run(*args):
        return subprocess.run(
            [sys.executable, "manage.py", "load_suppressions", str(hundred_rows_file), *args],
            cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120,
        )

    refused = run()
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert "line 43: invalid_reason" in refused.stderr and "nothing was imported" in refused.stderr
    assert not Suppression.objects.exists()

    imported = run("--partial")
    assert imported.returncode == 0, imported.stderr
    assert Suppression.objects.count() == 97
