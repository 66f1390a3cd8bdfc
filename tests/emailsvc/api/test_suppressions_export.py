"""GET /api/v1/suppressions/export: the list as a streamed CSV file, with the
list's filters and keys, that POST /api/v1/suppressions/import reads back
unchanged, and whose cells a spreadsheet never runs as formulas."""

import csv
import io
from datetime import timedelta

import pytest
from django.http import StreamingHttpResponse
from django.test import Client
from django.utils import timezone

from emailsvc.models import ApiKey, Suppression
from emailsvc.suppressions.services import suppression_add

SUPPRESSIONS = "/api/v1/suppressions"
EXPORT = f"{SUPPRESSIONS}/export"
HEADER = ["email", "reason", "note", "expires_at"]


@pytest.fixture
def reader(make_client):
    return make_client(ApiKey.Permission.READ_ONLY)


@pytest.fixture
def full(make_client):
    return make_client(ApiKey.Permission.FULL)


def body(response) -> str:
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(response.streaming_content).decode("utf-8")


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def stored() -> list[tuple]:
    return sorted(Suppression.objects.values_list("email", "reason", "note", "expires_at"))


def test_the_export_is_a_csv_attachment_of_the_four_import_columns(reader):
    later = timezone.now() + timedelta(days=30)
    suppression_add(email="Jane@Bücher.example", reason="hard_bounce", source="test", note="from the old ESP")
    suppression_add(email="kim@example.com", reason="manual", source="test", expires_at=later)

    response = reader.get(EXPORT)

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="suppressions-')
    assert rows_of(body(response)) == [
        HEADER,
        ["kim@example.com", "manual", "", later.isoformat()],  # newest first
        ["jane@xn--bcher-kva.example", "hard_bounce", "from the old ESP", ""],
    ]


def test_2000_rows_are_streamed_in_pieces_and_come_back_complete(reader):
    Suppression.objects.bulk_create(
        Suppression(email=f"user{n}@example.com", reason="manual", source="test") for n in range(2000)
    )

    response = reader.get(EXPORT)

    assert isinstance(response, StreamingHttpResponse)
    pieces = list(response.streaming_content)
    assert len(pieces) > 1  # read and sent a chunk at a time
    rows = rows_of(b"".join(pieces).decode())
    assert rows[0] == HEADER
    assert len(rows) == 2001
    assert {row[0] for row in rows[1:]} == {f"user{n}@example.com" for n in range(2000)}


def test_the_filters_of_the_list_select_the_same_entries(reader):
    suppression_add(email="ann@example.org", reason="hard_bounce", source="test")
    suppression_add(email="bob@example.org", reason="complaint", source="test")
    suppression_add(email="annie@example.net", reason="hard_bounce", source="test")
    expired = suppression_add(email="old@example.org", reason="manual", source="test")
    Suppression.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))

    for query in (
        {"reason": "hard_bounce"},
        {"prefix": "ANN"},
        {"search": "example.org"},
        {"active": "false"},
        {"active": "true", "search": "example.org"},
        {"created_after": (timezone.now() - timedelta(hours=1)).isoformat()},
        {"created_before": (timezone.now() - timedelta(hours=1)).isoformat()},
    ):
        listed = [entry["email"] for entry in reader.get(SUPPRESSIONS, query).json()["results"]]
        exported = [row[0] for row in rows_of(body(reader.get(EXPORT, query)))[1:]]
        assert exported == listed, query
    assert [row[0] for row in rows_of(body(reader.get(EXPORT, {"reason": "hard_bounce"})))[1:]] == [
        "annie@example.net", "ann@example.org",
    ]


@pytest.mark.parametrize(
    "query",
    [
        {"reason": "bounced"},
        {"created_after": "yesterday"},
        {"active": "maybe"},
        {"prefix": "x" * 321},
        {"search": "a\u2028b"},
        {"unknown": "1"},
        {"reason": "manual", "Reason": "manual"},
    ],
)
def test_a_bad_filter_is_answered_as_the_list_answers_it(reader, query):
    listed = reader.get(SUPPRESSIONS, query)
    exported = reader.get(EXPORT, query)

    assert exported.status_code == listed.status_code
    if listed.status_code == 400:
        assert exported["Content-Type"] == "application/json"
        assert exported.json()["error"] == listed.json()["error"]
        assert set(exported.json().get("fields", {})) == set(listed.json().get("fields", {}))


def test_keys_and_accept_headers(make_client):
    suppression_add(email="jane@example.com", reason="manual", source="test")

    assert Client().get(EXPORT).json()["error"] == "unauthorized"
    for permission in ApiKey.Permission.values:
        assert make_client(permission).get(EXPORT).status_code == 200
    reader = make_client(ApiKey.Permission.READ_ONLY)
    assert rows_of(body(reader.get(EXPORT, HTTP_ACCEPT="text/csv")))[1][0] == "jane@example.com"
    paged = reader.get(EXPORT, {"limit": "10"})
    assert paged.status_code == 400 and "limit" in paged.json()["fields"]  # the file is never paged
    refused = reader.get(EXPORT, {"reason": "nope"}, HTTP_ACCEPT="text/csv")
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_field"


# Cells a spreadsheet runs as formulas, and cells that look like the export's escape.
TRICKY_NOTES = [
    "=HYPERLINK(\"http://evil.example\",\"click\")",
    "+1 555 0100",
    "-2 days",
    "@SUM(A1:A2)",
    "'=already quoted",
    "''",
    "'plain quote",
    "'",
    "plain, with \"quotes\" and a comma",
    "Bücher — ünïcode",
    "",
]


def test_an_export_imports_back_unchanged_and_never_holds_a_formula(reader, full):
    later = timezone.now() + timedelta(days=3, microseconds=123456)
    reasons = Suppression.Reason.values
    for n, note in enumerate(TRICKY_NOTES):
        suppression_add(
            email=f"user{n}@example.com", reason=reasons[n % len(reasons)], source="test", note=note,
            expires_at=later if n % 2 else None,
        )
    suppression_add(email="-dash@example.com", reason="manual", source="test")
    suppression_add(email="=equals@example.com", reason="manual", source="test")
    suppression_add(email="+plus@bücher.example", reason="manual", source="test")
    before = stored()

    exported = body(reader.get(EXPORT))
    cells = [cell for row in rows_of(exported) for cell in row]
    assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@"))]
    assert "'=HYPERLINK" in exported and "'-dash@example.com" in exported

    Suppression.objects.all().delete()
    response = full.post(f"{SUPPRESSIONS}/import", exported.encode(), content_type="text/csv")

    assert response.status_code == 200, response.json()
    assert response.json()["imported"] == len(before)
    assert response.json()["error_count"] == 0
    assert stored() == before


def test_the_schema_describes_the_export():
    schema = Client().get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/v1/suppressions/export"]["get"]

    assert operation["operationId"] == "export_suppressions"
    assert "text/csv" in operation["responses"]["200"]["content"]
    assert {p["name"] for p in operation["parameters"]} == {
        "reason", "created_after", "created_before", "search", "prefix", "active",
    }
