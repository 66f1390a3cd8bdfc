"""django-post-office's `send_queued_mail` as the reference of figure 3:

    DJANGO_SETTINGS_MODULE=benchmarks.post_office_settings \
        python -m benchmarks.reference_post_office queue --count N --first K

queues N emails (the bench's typical email, benchmarks/payload.py: text and
HTML, one recipient each) with `post_office.mail.send_many` at priority
`medium` — `mail.send` per email, stored with one bulk insert — and prints
how many are queued. The bench then times
`python manage.py send_queued_mail --processes 2` delivering them to the sink
(benchmarks/delivery.py). Nothing of the service is involved.
"""

from __future__ import annotations

import argparse
import json
import sys


def queue(count: int, first: int) -> int:
    import django

    django.setup()
    from post_office import mail

    from benchmarks.payload import email_payload

    queued = 0
    for start in range(first, first + count, 1000):
        kwargs = []
        for n in range(start, min(first + count, start + 1000)):
            payload = email_payload(n)
            kwargs.append({
                "sender": "bench@example.com", "recipients": [payload["to"]], "subject": payload["subject"],
                "message": payload["text"], "html_message": payload["html"], "priority": "medium",
                "headers": {"X-Tag": "bench"},
            })
        queued += len(mail.send_many(kwargs))
    return queued


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    queue_parser = commands.add_parser("queue")
    queue_parser.add_argument("--count", type=int, required=True)
    queue_parser.add_argument("--first", type=int, default=0)
    args = parser.parse_args(argv)
    json.dump({"queued": queue(args.count, args.first)}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
