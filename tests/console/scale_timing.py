"""Time every admin list page and the console's pages on 1,000,000 messages and
3,000,000 events (issue 18). Not a test (timings on a shared machine are not
assertions): run it by hand, it prints a table.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/4 \\
        .venv/bin/python -m tests.console.scale_timing [--messages 1000000] [--keep]

It creates a scratch database next to DATABASE_URL's (`emailsvc_admin_scale`),
migrates it, fills it with INSERT … SELECT generate_series (1 recipient, 3
events and 2 status changes per message, 100,000 suppressions), times each page
in-process through Django's test client (median of 3 after one warm-up) first
with no statistics (PostgreSQL here runs with autovacuum off: tables are never
analysed) and then after VACUUM ANALYZE, and drops the database (unless --keep).
"""

import argparse
import os
import statistics
import sys
import time
from urllib.parse import urlsplit, urlunsplit

SCRATCH = "emailsvc_admin_scale"


def _admin_connection(url: str):
    import psycopg

    parts = urlsplit(url)
    return psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True)


def _create_database(url: str) -> str:
    with _admin_connection(url) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}"')
        connection.execute(f'CREATE DATABASE "{SCRATCH}"')
    return urlunsplit(urlsplit(url)._replace(path=f"/{SCRATCH}"))


from tests.tables import rows_fill, rows_fill_first_id, status_changes_fill  # noqa: E402


def _drop_database(url: str) -> None:
    with _admin_connection(url) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)')


def fill(messages: int) -> dict:
    from emailsvc.models import ApiKey, Group, Message, Recipient, SendingPause, Suppression
    from templates_app.services import template_create
    from tracking.models import EngagementEvent

    started = time.monotonic()
    template_create(name="welcome", data={"subject": "Welcome {{ name }}", "text": "Hi {{ name }}"})
    Group.objects.bulk_create([Group(id=f"campaign-{n}") for n in range(100)])
    rows_fill(ApiKey, 50, {"name": "'key ' || g", "prefix": "'pk' || g", "secret_hash": "md5(g::text)", "permission": "'sending'"})
    created = f"now() - (({messages} - g) * interval '2 seconds')"
    status = (
        "CASE WHEN g % 1000 = 0 THEN 'complained' WHEN g % 50 = 0 THEN 'bounced' WHEN g % 97 = 0 THEN 'queued' "
        "WHEN g % 7 = 0 THEN 'opened' ELSE 'delivered' END"
    )
    first_message = rows_fill_first_id(Message, messages, {
        "email_id": "'m-' || g", "group": "CASE WHEN g % 10 = 0 THEN 'campaign-' || (g % 100) END",
        "from_email": "'noreply@example.com'", "sending_domain": "'example.com'", "subject": "'Subject ' || (g % 1000)",
        "html": "'<p>Hello</p>'", "text": "'Hello'",
        "template_name": "CASE WHEN g % 3 = 0 THEN 'welcome' ELSE '' END",
        "template_version": "CASE WHEN g % 3 = 0 THEN 1 END",
        "priority": "CASE g % 20 WHEN 0 THEN 'high' WHEN 1 THEN 'low' ELSE 'normal' END",
        "provider": "'ses'", "provider_message_id": "'pm-' || g", "status": status,
        "state": f"CASE WHEN ({status}) = 'queued' THEN 'queued' ELSE 'done' END", "attempts": "1",
        "created_at": created, "queued_at": created, "next_attempt_at": created,
        "sent_at": f"CASE WHEN ({status}) = 'queued' THEN NULL ELSE {created} + interval '1 second' END",
        "updated_at": created,
    })
    address = "CASE WHEN g % 200 = 0 THEN 'heavy@example.com' ELSE 'reader' || (g % 333333) || '@example.org' END"
    first_recipient = rows_fill_first_id(Recipient, messages, {
        "message": f"{first_message} + g - 1", "email": address, "role": "'to'", "status": status,
        "group": "CASE WHEN g % 10 = 0 THEN 'campaign-' || (g % 100) END",
        "sent_at": f"{created} + interval '1 second'", "delivered_at": f"{created} + interval '2 seconds'",
    })
    # Three events per message: send, delivery (or a bounce), open (or a complaint).
    m = "((e - 1) / 3 + 1)"
    k = "((e - 1) % 3)"
    event_address = address.replace("g %", f"{m} %")
    event_type = (
        f"CASE WHEN {k} = 0 THEN 'send' WHEN {k} = 1 THEN (CASE WHEN {m} % 50 = 0 THEN 'bounce' ELSE 'delivery' END) "
        f"ELSE (CASE WHEN {m} % 1000 = 0 THEN 'complaint' ELSE 'open' END) END"
    )
    detail = (
        f"CASE WHEN {m} % 50 = 0 AND {k} = 1 THEN "
        "'{\"bounce_type\": \"Permanent\", \"bounce_subtype\": \"General\", \"diagnostic\": \"smtp; 550 5.1.1\"}'::jsonb "
        f"WHEN {m} % 1000 = 0 AND {k} = 2 THEN '{{\"feedback_type\": \"abuse\"}}'::jsonb ELSE '{{}}'::jsonb END"
    )
    event_at = f"now() - (({messages} - {m}) * interval '2 seconds') + ({k} + 1) * interval '1 second'"
    rows_fill(EngagementEvent, messages * 3, {
        "event_id": "'ev-' || e", "recipient_email": event_address, "event_type": event_type,
        "provider_message_id": f"'pm-' || {m}", "message": f"{first_message} + {m} - 1",
        "recipient": f"{first_recipient} + {m} - 1", "occurred_at": event_at, "received_at": event_at,
        "source": "'sqs'", "detail": detail, "raw": "'{}'::jsonb",
    }, series="e")
    # Two transitions per message: queued → sent, sent → its status.
    status_changes_fill(
        messages, first_message=first_message, first_recipient=first_recipient, address=address, status=status,
        at=created,
    )
    rows_fill(Suppression, 100_000, {
        "email": "'supp' || g || '@example.org'", "reason": "'hard_bounce'", "source": "'ses:bounce:ev-' || (g * 150 - 1)",
        "created_at": "now() - (g * interval '10 seconds')",
    })
    Suppression.objects.create(email="reader50@example.org", reason="hard_bounce", source="ses:bounce:ev-149")
    rows_fill(SendingPause, 200, {
        "domain": "'d' || g || '.example.com'", "cause": "'breaker'", "reason": "'bounce rate'",
        "paused_at": "now() - (g * interval '1 hour')", "resumed_at": "now() - (g * interval '1 hour') + interval '10 minutes'",
        "resumed_by": "'admin:ops'",
    })
    return {"seconds": round(time.monotonic() - started, 1), "first_message": first_message}


def pages(first_message: int, messages: int) -> list[tuple[str, str, dict]]:
    some = first_message + messages // 2
    deep = max(1, min(500, messages // 200))
    return [
        ("messages", "/admin/emailsvc/message/", {}),
        (f"messages, page {deep}", "/admin/emailsvc/message/", {"p": str(deep)}),
        ("messages ?q=(an address)", "/admin/emailsvc/message/", {"q": "reader1234@example.org"}),
        ("messages ?q=(an address with 5,000 emails)", "/admin/emailsvc/message/", {"q": "heavy@example.com"}),
        ("messages ?q=(an email_id)", "/admin/emailsvc/message/", {"q": f"m-{messages // 2}"}),
        ("messages ?q=(a group)", "/admin/emailsvc/message/", {"q": "campaign-10"}),
        ("messages status=bounced", "/admin/emailsvc/message/", {"status__exact": "bounced"}),
        ("messages status=complained", "/admin/emailsvc/message/", {"status__exact": "complained"}),
        ("messages template=welcome", "/admin/emailsvc/message/", {"template": "welcome"}),
        ("events", "/admin/tracking/engagementevent/", {}),
        ("events ?q=(an address)", "/admin/tracking/engagementevent/", {"q": "reader1234@example.org"}),
        ("events ?q=(an email_id)", "/admin/tracking/engagementevent/", {"q": f"m-{messages // 2}"}),
        ("events type=complaint", "/admin/tracking/engagementevent/", {"event_type__exact": "complaint"}),
        ("events type=bounce", "/admin/tracking/engagementevent/", {"event_type__exact": "bounce"}),
        ("status changes", "/admin/emailsvc/statuschange/", {}),
        ("status changes ?q=(an address)", "/admin/emailsvc/statuschange/", {"q": "reader1234@example.org"}),
        ("status changes to=complained", "/admin/emailsvc/statuschange/", {"to_status__exact": "complained"}),
        ("suppressions", "/admin/emailsvc/suppression/", {}),
        ("suppressions ?q=(an address prefix)", "/admin/emailsvc/suppression/", {"q": "supp9999"}),
        ("suppressions reason=hard_bounce", "/admin/emailsvc/suppression/", {"reason__exact": "hard_bounce"}),
        ("API keys", "/admin/emailsvc/apikey/", {}),
        ("templates", "/admin/templates_app/template/", {}),
        ("sending pauses", "/admin/emailsvc/sendingpause/", {}),
        ("webhook deliveries", "/admin/tracking/webhookdelivery/", {}),
        ("webhook endpoints", "/admin/tracking/webhookendpoint/", {}),
        ("address page (3 emails)", "/admin/address/", {"q": "reader50@example.org"}),
        ("address page (5,000 emails)", "/admin/address/", {"q": "heavy@example.com"}),
        ("message page", f"/admin/emailsvc/message/{some}/change/", {}),
        ("sending status", "/admin/operations/sending/", {}),
        ("queues and drain", "/admin/operations/queues/", {}),
        ("admin home", "/admin/", {}),
    ]


def time_pages(client, first_message: int, messages: int) -> list[tuple[str, float, int]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    rows = []
    for name, url, params in pages(first_message, messages):
        response = client.get(url, params)
        assert response.status_code == 200, (name, response.status_code)
        runs = []
        for _ in range(3):
            with CaptureQueriesContext(connection) as queries:
                started = time.perf_counter()
                response = client.get(url, params)
                runs.append(time.perf_counter() - started)
        rows.append((name, statistics.median(runs), len(queries)))
        print(f"  {name:34} {statistics.median(runs) * 1000:8.0f} ms  {len(queries):3d} queries", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="do not drop the scratch database")
    args = parser.parse_args()
    base_url = os.environ.get("DATABASE_URL", "")
    if not base_url.startswith("postgres"):
        sys.exit("DATABASE_URL must point at a PostgreSQL server (the scratch database is created beside it)")
    os.environ["DATABASE_URL"] = _create_database(base_url)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    os.environ["DATABASE_CONN_MAX_AGE"] = "0"
    try:
        import django

        django.setup()
        from django.conf import settings
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client

        settings.ALLOWED_HOSTS = ["*"]
        call_command("migrate", verbosity=0)
        print(f"filling {args.messages:,} messages, {args.messages:,} recipients, {args.messages * 3:,} events, "
              f"{args.messages * 2:,} status changes, 100,000 suppressions …", flush=True)
        filled = fill(args.messages)
        print(f"filled in {filled['seconds']} s", flush=True)
        client = Client()
        client.force_login(User.objects.create_superuser("timing", password="x"))
        print("\nno statistics (never analysed):")
        fresh = time_pages(client, filled["first_message"], args.messages)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        print("\nafter VACUUM ANALYZE:")
        analysed = time_pages(client, filled["first_message"], args.messages)
        print("\n| page | no statistics | analysed | queries |\n|---|---:|---:|---:|")
        for (name, before, queries), (_, after, _) in zip(fresh, analysed, strict=True):
            print(f"| {name} | {before * 1000:.0f} ms | {after * 1000:.0f} ms | {queries} |")
        connection.close()
    finally:
        if not args.keep:
            from django.db import connections

            connections.close_all()
            _drop_database(base_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
