"""emailsvc.status: the status rules as tables, the one writer of status columns,
the StatusChange history that replays to every recipient's status, and what
reads that history once it commits (/metrics counts what /stats counts)."""

import ast
import itertools
import json
import re
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from emailsvc import status
from emailsvc.models import PRECEDENCE, ApiKey, Message, Recipient
from emailsvc.suppressions.services import suppression_add
from tests.conftest import BASE_DIR, deliver_now
from tests.invariants import status_history_problems
from tests.tracking.scenario import event
from tracking.apply import events_apply
from tracking.normalize import ses_body_parse

T = timezone.now()
SOFT = {"type": "Transient", "subtype": "MailboxFull"}
HARD = {"type": "Permanent", "subtype": "General"}


def facts(**given) -> SimpleNamespace:
    """A recipient's provider facts: none unless given."""
    none = {
        "sent_at": None, "delivered_at": None, "delayed": 0, "open_count": 0, "click_count": 0, "bounce": None,
        "complained_at": None, "rejected_at": None,
    }
    return SimpleNamespace(**{**none, **given})


# --- The rules, as tables ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, None),
        ({"sent_at": T}, "sent"),
        ({"sent_at": T, "delayed": 2}, "delayed"),
        ({"sent_at": T, "delayed": 1, "bounce": SOFT}, "soft_bounced"),
        ({"sent_at": T, "bounce": SOFT, "delivered_at": T}, "delivered"),
        ({"delivered_at": T}, "delivered"),  # the Send event may come last, or never
        ({"delivered_at": T, "open_count": 1}, "opened"),
        ({"delivered_at": T, "open_count": 3, "click_count": 1}, "clicked"),
        ({"sent_at": T, "bounce": HARD}, "bounced"),
        ({"sent_at": T, "bounce": HARD, "delivered_at": T, "click_count": 1}, "bounced"),
        ({"delivered_at": T, "bounce": HARD, "complained_at": T}, "complained"),
        ({"sent_at": T, "rejected_at": T}, "failed"),
        ({"rejected_at": T, "delayed": 1, "bounce": SOFT}, "failed"),  # outranks the states before delivery
        ({"rejected_at": T, "delivered_at": T}, "delivered"),  # but not delivery
        ({"rejected_at": T, "bounce": HARD}, "bounced"),
    ],
)
def test_the_status_the_facts_show(given, expected):
    assert status.status_from_facts(facts(**given)) == expected


FACT_STEPS = {
    "send": {"sent_at": T},
    "delay": {"delayed": 1},
    "soft bounce": {"bounce": SOFT},
    "delivery": {"delivered_at": T},
    "open": {"open_count": 1},
    "click": {"click_count": 1},
    "hard bounce": {"bounce": HARD},
}


def test_events_in_any_order_never_lower_a_status_and_end_at_the_same_one():
    endings = set()
    for order in itertools.permutations(FACT_STEPS):
        known, rank = {}, -1
        for step in order:
            given = FACT_STEPS[step]
            if "bounce" in given and known.get("bounce") == HARD:
                given = {}  # a hard bounce outranks a soft one, whichever comes first (tracking.apply)
            known.update(given)
            derived = status.status_from_facts(facts(**known))
            assert PRECEDENCE[derived] >= rank, f"{order}: lowered to {derived} at {step}"
            rank = PRECEDENCE[derived]
        endings.add(derived)
    assert endings == {"bounced"}


@pytest.mark.parametrize(
    ("given", "is_retry", "expected"),
    [
        ({"sent_at": T, "bounce": SOFT}, False, ("soft_bounced", {})),  # earns its one re-send
        ({"sent_at": T, "bounce": SOFT}, True, ("failed", {"failed_reason": "soft-bounced again: MailboxFull"})),
        ({"bounce": {"type": "Transient"}}, True, ("failed", {"failed_reason": "soft-bounced again:"})),
        ({"sent_at": T, "bounce": HARD}, True, ("bounced", {})),  # a hard bounce is a bounce, re-send or not
        ({"bounce": SOFT, "delivered_at": T}, True, ("delivered", {})),  # delivered after all
        ({"sent_at": T}, True, ("sent", {})),
        ({}, True, (None, {})),
    ],
)
def test_a_resend_that_bounces_softly_fails(given, is_retry, expected):
    assert status.status_after_event(facts(**given), is_retry=is_retry) == expected


@pytest.mark.parametrize(
    ("recipients", "state", "shown"),
    [
        (["queued", "queued"], "queued", "queued"),
        (["queued"], "sending", "sending"),
        (["scheduled"], "scheduled", "scheduled"),
        (["queued"], "held", "queued"),
        (["sent", "queued"], "sending", "sent"),  # a recipient moved on: no longer just `sending`
        (["delivered", "bounced", "suppressed"], "done", "bounced"),
        (["failed", "suppressed"], "done", "failed"),
        (["cancelled", "suppressed"], "done", "cancelled"),
        (["suppressed"], "done", "suppressed"),
        (["soft_bounced", "delivered"], "done", "delivered"),
    ],
)
def test_what_a_message_shows(recipients, state, shown):
    assert status.displayed_status(recipients, state) == shown


# --- The history replays to the status ---------------------------------------------------------


@pytest.fixture
def smtp(settings, smtp_server):
    settings.EMAIL_PROVIDER = "smtp"
    settings.EMAIL_HOST, settings.EMAIL_PORT = smtp_server.host, smtp_server.port
    settings.SEND_RATE_PER_SECOND = 0
    return smtp_server


def accept(api, **body) -> Message:
    response = api.post("/api/v1/emails", json.dumps({"subject": "Hello", "text": "Hi", **body}), content_type="application/json")
    assert response.status_code == 202, response.content
    return Message.objects.get(email_id=response.json()["email_id"])


def apply(*envelopes) -> None:
    events_apply(events=[e for envelope in envelopes for e in ses_body_parse(envelope)], source="sqs")


@pytest.mark.django_db
def test_every_path_leaves_a_history_that_replays_to_the_status(api, smtp):
    suppression_add(email="gone@example.org", reason="manual", source="test")
    mixed = accept(api, to=["a@example.org", "gone@example.org", "b@example.org"])
    later = accept(api, to="c@example.org", send_at=(timezone.now() + timedelta(days=1)).isoformat())
    assert deliver_now() == 1
    mixed.refresh_from_db()
    apply(
        event(mixed, "Delivery", ["a@example.org", "b@example.org"]),
        event(mixed, "Send", ["a@example.org"], seconds=1),  # late: changes nothing
        event(mixed, "Open", ["a@example.org"], seconds=20),
        event(mixed, "Bounce", ["b@example.org"], seconds=30, bounce_type="Permanent", bounce_subtype="General"),
    )
    assert api.post(f"/api/v1/emails/{later.email_id}/cancel").status_code == 200

    stored = dict(Recipient.objects.filter(message__in=[mixed, later]).values_list("email", "status"))
    assert stored == {"a@example.org": "opened", "gone@example.org": "suppressed", "b@example.org": "bounced",
                      "c@example.org": "cancelled"}
    assert status_history_problems(email_ids=[mixed.email_id, later.email_id]) == []


@pytest.mark.django_db
def test_the_replay_check_sees_a_status_written_without_its_change(api, smtp):
    message = accept(api, to=["a@example.org", "b@example.org"])
    deliver_now()
    assert status_history_problems(email_ids=[message.email_id]) == []

    Recipient.objects.filter(message=message, email="a@example.org").update(status="delivered")  # behind status.py's back
    fresh = accept(api, to="c@example.org")
    Recipient.objects.filter(message=fresh).update(status="failed")

    assert sorted(status_history_problems(email_ids=[message.email_id, fresh.email_id])) == sorted([
        f"{message.email_id} a@example.org: history ends at sent, stored delivered",
        f"{fresh.email_id} c@example.org: failed without any status change",
    ])


# --- One writer ---------------------------------------------------------------------------------

APP_PACKAGES = ("core", "emailsvc", "tracking", "templates_app", "console")
WRITER = Path("emailsvc/status.py")
# The raw statements the writer runs (the claim's UPDATE) live with the other
# raw SQL, each in a function only the writer calls.
ENGINE_SQL = Path("core/sql_engine.py")
# SET … status = …, before any WHERE: an UPDATE writing a status column; or a
# SET clause kept apart (`"state = 'x', status = …"`): status assigned first or after a comma.
SQL_STATUS_WRITE = re.compile(
    r"\bSET\b(?:(?!\bWHERE\b).)*?\bstatus\s*=|(?:^|,)\s*status\s*=(?!=)", re.IGNORECASE | re.DOTALL
)


def _status_writes(path: Path) -> list[str]:
    """Where this module writes a `status` column: `.update(status=…)`,
    `status` in bulk_update's fields or in update_fields, an `x.status = …`
    assignment, raw SQL that SETs status."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    # The literal parts of an f-string are read with the f-string as a whole.
    in_fstrings = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}

    def names_status(node: ast.AST) -> bool:
        return any(isinstance(n, ast.Constant) and n.value == "status" for n in ast.walk(node))

    for node in ast.walk(tree):
        where = f"{path}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            for keyword in node.keywords:
                # A webhook delivery's own `status` is its sending state, not an email's.
                if keyword.arg == "status" and node.func.attr == "update" and "WebhookDelivery" not in ast.unparse(keyword.value):
                    found.append(f"{where} .update(status=…)")
                if keyword.arg == "update_fields" and names_status(keyword.value):
                    found.append(f"{where} update_fields with status")
            if node.func.attr == "bulk_update" and any(names_status(arg) for arg in node.args[1:]):
                found.append(f"{where} bulk_update of status")
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr == "status" and ast.unparse(target.value) != "self":
                    found.append(f"{where} {ast.unparse(target)} = …")
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in in_fstrings
            and SQL_STATUS_WRITE.search(node.value)
        ):
            found.append(f"{where} SQL that sets status")
        elif isinstance(node, ast.JoinedStr):
            text = "".join(part.value if isinstance(part, ast.Constant) else "{}" for part in node.values)
            if SQL_STATUS_WRITE.search(text):
                found.append(f"{where} SQL that sets status")
    return sorted(found, key=lambda entry: int(entry.split(" ", 1)[0].rsplit(":", 1)[1]))


def test_status_columns_are_written_by_emailsvc_status_only():
    modules = [
        path.relative_to(BASE_DIR)
        for package in APP_PACKAGES
        for path in sorted((BASE_DIR / package).rglob("*.py"))
        if "migrations" not in path.parts
    ]
    assert WRITER in modules and len(modules) > 50
    writes = {module: found for module in modules if (found := _status_writes(BASE_DIR / module))}

    assert WRITER in writes  # the scan finds the writer's own writes
    assert ENGINE_SQL in writes  # the claim's UPDATE, run for the writer
    assert {str(m): w for m, w in writes.items() if m not in (WRITER, ENGINE_SQL)} == {}
    assert _engine_status_writes_misused(BASE_DIR) == []


def _engine_status_writes_misused(base: Path) -> list[str]:
    """The status writes of core/sql_engine.py that the writer does not own
    alone: each must sit in a top-level function whose name no module but
    emailsvc/status.py mentions (tests left out), so the statement is the
    writer's own, kept with the other raw SQL."""
    engine = base / ENGINE_SQL
    functions = {
        node.name: (node.lineno, node.end_lineno)
        for node in ast.parse(engine.read_text()).body
        if isinstance(node, ast.FunctionDef)
    }
    flagged, problems = set(), []
    for entry in _status_writes(engine):
        line = int(entry.split(" ", 1)[0].rsplit(":", 1)[1])
        inside = [name for name, (first, last) in functions.items() if first <= line <= last]
        if inside:
            flagged.update(inside)
        else:
            problems.append(f"{entry} outside a function")
    modules = [
        path
        for top in sorted(base.iterdir())
        if not top.name.startswith(".") and top.name != "tests"
        for path in ([top] if top.suffix == ".py" else sorted(top.rglob("*.py")) if top.is_dir() else [])
        if path != engine
    ]
    for name in sorted(flagged):
        pattern = re.compile(rf"\b{re.escape(name)}\b")
        mentions = {path.relative_to(base) for path in modules if pattern.search(path.read_text())}
        if mentions != {WRITER}:
            problems.append(f"{ENGINE_SQL}:{name} mentioned by {sorted(map(str, mentions))}")
    return problems


def test_the_engine_sql_rule_catches_a_status_write_used_elsewhere(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "emailsvc").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / ENGINE_SQL).write_text(
        "def rows_claim():\n    return 'UPDATE t SET status = %s'\n\n\n"
        "def rows_mark():\n    return 'UPDATE t SET status = %s'\n\n\n"
        "def rows_read():\n    return 'SELECT status FROM t'\n\n\n"
        "CLAUSE = \"state = 'x', status = 'y'\"\n"
    )
    (tmp_path / WRITER).write_text("from core.sql_engine import rows_claim, rows_mark\n")
    (tmp_path / "emailsvc" / "views.py").write_text("from core.sql_engine import rows_mark, rows_read\n")
    (tmp_path / "tests" / "test_x.py").write_text("from core.sql_engine import rows_claim\n")
    assert _engine_status_writes_misused(tmp_path) == [
        f"{tmp_path / ENGINE_SQL}:13 SQL that sets status outside a function",
        f"{ENGINE_SQL}:rows_mark mentioned by ['emailsvc/status.py', 'emailsvc/views.py']",
    ]


def test_the_scan_sees_each_kind_of_status_write(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "Recipient.objects.filter(pk=1).update(status='sent')\n"
        "Message.objects.bulk_update(rows, ['status', 'state'])\n"
        "message.save(update_fields=['status'])\n"
        "recipient.status = 'delivered'\n"
        "cursor.execute(f'UPDATE {table} SET failed_reason = %s, status = %s WHERE id = %s')\n"
        "clause = \"state = 'sending', status = CASE WHEN status = 'queued' THEN 'sending' ELSE status END\"\n"
        "cursor.execute('SELECT id FROM t WHERE status = ANY(%s)')\n"  # a read
        "fields.update(status=WebhookDelivery.State.FAILED)\n"  # a webhook delivery's own state
    )
    assert [entry.split(" ", 1)[1] for entry in _status_writes(sample)] == [
        ".update(status=…)", "bulk_update of status", "update_fields with status", "recipient.status = …",
        "SQL that sets status", "SQL that sets status",
    ]


# --- Read once committed ----------------------------------------------------------------------


def _status_changes_counted(client, status_name: str) -> float:
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer status-test-token-0123456789")
    assert response.status_code == 200, response.content
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
        if sample.name == "emailsvc_recipient_status_changes_total" and sample.labels.get("status") == status_name
    )


@pytest.mark.django_db(transaction=True)
def test_a_recipient_suppressed_at_accept_is_counted_by_metrics_and_stats_alike(client, api, make_client, settings):
    settings.METRICS_TOKEN, settings.METRICS_PUBLIC = "status-test-token-0123456789", False
    suppression_add(email="gone@example.org", reason="manual", source="test")
    before = _status_changes_counted(client, "suppressed")
    group = f"suppressed-{timezone.now().timestamp()}"

    accept(api, to=["gone@example.org", "here@example.org"], group_id=group,
           send_at=(timezone.now() + timedelta(days=1)).isoformat())  # no worker sends it meanwhile

    stats = make_client(ApiKey.Permission.READ_ONLY).get(f"/api/v1/stats?group_id={group}").json()
    assert stats["totals"]["suppressed"] == 1
    assert _status_changes_counted(client, "suppressed") - before == 1


@pytest.mark.django_db(transaction=True)
def test_a_change_rolled_back_is_never_counted(client, api, settings):
    from django.db import transaction

    settings.METRICS_TOKEN, settings.METRICS_PUBLIC = "status-test-token-0123456789", False
    suppression_add(email="gone@example.org", reason="manual", source="test")
    before = _status_changes_counted(client, "suppressed")

    class Undone(Exception):
        pass

    with pytest.raises(Undone), transaction.atomic():
        accept(api, to="gone@example.org")
        raise Undone

    assert not Message.objects.filter(recipients__email="gone@example.org").exists()
    assert _status_changes_counted(client, "suppressed") == before
