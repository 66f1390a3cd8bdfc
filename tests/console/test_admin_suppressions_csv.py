"""The suppressions admin's CSV export and import (django-import-export): the
API's columns and rules — canonical addresses, reasons, expiry, notes without
control characters, all or nothing with bad rows shown by line, the row and
byte limits — so a file exported by the admin or the API imports back."""

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from emailsvc.models import ApiKey, Suppression
from emailsvc.suppressions.services import suppression_add

pytestmark = pytest.mark.django_db
ADMIN = "/admin/emailsvc/suppression/"
IMPORT = f"{ADMIN}import/"
PROCESS = f"{ADMIN}process_import/"
EXPORT = f"{ADMIN}export/"
FIELDS = {f"suppressionresource_{name}": "on" for name in ("email", "reason", "note", "expires_at")}


def upload(admin_client, content: bytes, name: str = "list.csv"):
    file = SimpleUploadedFile(name, content, content_type="text/csv")
    return admin_client.post(IMPORT, {"import_file": file, "format": "0", "resource": "0"})


def confirm(admin_client, preview):
    """The import page's confirm step, as the browser posts it."""
    form = preview.context["confirm_form"]
    return admin_client.post(PROCESS, {name: form[name].value() for name in form.fields})


def export(admin_client, query: str = "") -> bytes:
    response = admin_client.post(EXPORT + query, {"format": "0", "resource": "0", **FIELDS})
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment;")
    return response.content


def stored() -> list[tuple]:
    return sorted(Suppression.objects.values_list("email", "reason", "note", "expires_at"))


def test_the_changelist_links_import_and_export(admin_client):
    page = admin_client.get(ADMIN).content.decode()

    assert IMPORT in page and EXPORT in page


def test_an_import_is_previewed_then_stored_in_canonical_form(admin_client):
    content = (
        "email,reason,note,expires_at\r\n"
        '"""Jane""@Bücher.example",hard_bounce,from the old ESP,\r\n'  # "Jane"@Bücher.example
        "kim@example.com,,,2099-01-31\r\n"
        "known@example.com,complaint,,\r\n"
    ).encode()
    suppression_add(email="known@example.com", reason="manual", source="support", note="kept")

    preview = upload(admin_client, content)

    assert preview.status_code == 200
    result = preview.context["result"]
    assert not result.has_validation_errors() and not result.has_errors()
    assert [(row.import_type, row.diff[0]) for row in result.valid_rows()] == [
        ("new", "jane@xn--bcher-kva.example"), ("new", "kim@example.com"), ("skip", "known@example.com"),
    ]
    assert Suppression.objects.count() == 1  # a preview writes nothing

    done = confirm(admin_client, preview)

    assert done.status_code == 302 and done["Location"] == ADMIN
    assert stored() == [
        ("jane@xn--bcher-kva.example", "hard_bounce", "from the old ESP", None),
        ("kim@example.com", "manual", "", datetime(2099, 1, 31, tzinfo=UTC)),
        ("known@example.com", "manual", "kept", None),  # an entry already there is left as it is
    ]
    assert Suppression.objects.get(email="kim@example.com").source == "admin:admin (list.csv)"
    assert "2 new" in admin_client.get(ADMIN).content.decode()


@pytest.mark.parametrize(
    ("row", "code"),
    [
        ("not-an-address,,,", "invalid_address"),
        ("user@localhost,,,", "invalid_address"),
        ("jane@example.com,bounced,,", "invalid_reason"),
        ("jane@example.com,,,2001-01-01", "invalid_expires_at"),
        ('jane@example.com,,"two\nlines",', "invalid_field"),
        ("jane@example.com,,tab\there,", "invalid_field"),
        (",manual,,", "missing_fields"),
    ],
)
def test_a_bad_row_is_refused_with_its_line_and_nothing_is_imported(admin_client, row, code):
    content = f"email,reason,note,expires_at\r\ngood@example.com,,,\r\n\r\n{row}\r\nother@example.com,,,\r\n".encode()

    preview = upload(admin_client, content)

    assert preview.status_code == 200
    result = preview.context["result"]
    assert [invalid.number for invalid in result.invalid_rows] == [4]  # the header is line 1, a blank line counts
    page = preview.content.decode()
    assert "Line 4: " in page and f"({code})" in page
    assert "confirm_form" not in preview.context
    assert not Suppression.objects.exists()


def test_a_file_of_bad_rows_only_shows_each_with_its_line(admin_client):
    preview = upload(admin_client, b"email,reason\r\nnobody,\r\njane@example.com,sometimes\r\n")

    assert [invalid.number for invalid in preview.context["result"].invalid_rows] == [2, 3]
    assert "(invalid_address)" in preview.content.decode() and "(invalid_reason)" in preview.content.decode()
    assert not Suppression.objects.exists()


def test_importing_needs_the_add_permission_exporting_the_view_permission(client, django_user_model):
    staff = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_suppression"))
    client.force_login(staff)
    file = SimpleUploadedFile("list.csv", b"email\r\njane@example.com\r\n", content_type="text/csv")

    assert client.post(IMPORT, {"import_file": file, "format": "0", "resource": "0"}).status_code == 403
    assert client.get(EXPORT).status_code == 200
    assert not Suppression.objects.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"email\r\njane@example.com\r\n\xff\xfe\r\n", "not UTF-8 text (line 3"),
        (b"email,colour\r\njane@example.com,red\r\n", "Unknown column 'colour'"),
        (b"jane@example.com,manual\r\n", "must be the header row"),
        (b'email,note\r\njane@example.com,"open quote\r\n', "cannot be read as CSV"),
    ],
)
def test_a_file_that_cannot_be_read_is_refused_with_the_reason(admin_client, content, message):
    response = upload(admin_client, content)

    assert response.status_code == 200
    errors = response.context["form"].errors["import_file"]
    assert message in errors[0] and "(invalid_csv)" in errors[0]
    assert not Suppression.objects.exists()


def test_the_row_and_byte_limits_apply(admin_client, settings):
    settings.SUPPRESSION_IMPORT_MAX_ROWS = 2
    too_many = upload(admin_client, b"email\r\na@example.com\r\nb@example.com\r\nc@example.com\r\n")
    assert "(too_many_rows)" in too_many.context["form"].errors["import_file"][0]

    settings.SUPPRESSION_IMPORT_MAX_BYTES = 20
    too_big = upload(admin_client, b"email\r\n" + b"longer-than-twenty@example.com\r\n")
    assert "larger than 20 bytes" in too_big.context["form"].errors["import_file"][0]
    assert not Suppression.objects.exists()


def test_the_export_is_the_apis_file_and_imports_back_unchanged(admin_client, make_client):
    later = timezone.now() + timedelta(days=10, microseconds=5)
    suppression_add(email="jane@bücher.example", reason="hard_bounce", source="test", note="=HYPERLINK(\"x\")")
    suppression_add(email="-dash@example.com", reason="manual", source="test", note="'plain", expires_at=later)
    suppression_add(email="kim@example.com", reason="complaint", source="test", note="Bücher, \"quoted\"")
    before = stored()

    exported = export(admin_client)
    api = make_client(ApiKey.Permission.READ_ONLY).get("/api/v1/suppressions/export")
    assert exported == b"".join(api.streaming_content)
    assert exported.decode().splitlines()[0] == "email,reason,note,expires_at"
    assert "'=HYPERLINK" in exported.decode() and "'-dash@example.com" in exported.decode()

    Suppression.objects.all().delete()
    preview = upload(admin_client, exported, name="export.csv")
    assert confirm(admin_client, preview).status_code == 302
    assert stored() == before


def test_the_export_follows_the_changelist_filter(admin_client):
    suppression_add(email="ann@example.com", reason="hard_bounce", source="test")
    suppression_add(email="bob@example.com", reason="manual", source="test")

    lines = export(admin_client, "?reason__exact=hard_bounce").decode().splitlines()

    assert lines == ["email,reason,note,expires_at", "ann@example.com,hard_bounce,,"]
