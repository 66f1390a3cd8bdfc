"""SMTP submission load generator, run as its own process (its CPU is not the
bench's): `clients` threads, each one smtplib session that AUTHs once and
submits `messages` emails one after another (MAIL, RCPT, DATA per email).

    python -m benchmarks.smtpload --port 2525 --key KEY --clients 4 --messages 1000 [--first N]

Prints one JSON object: accepted, errors by reply, elapsed seconds, emails per
second, and latency percentiles (one DATA transaction) in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import threading
import time
from email.message import EmailMessage

from benchmarks.payload import email_payload
from benchmarks.stats import percentile


def mime(n: int) -> bytes:
    payload = email_payload(n)
    message = EmailMessage()
    message["From"] = "bench@example.com"
    message["To"] = payload["to"]
    message["Subject"] = payload["subject"]
    message["Message-ID"] = f"<bench-{n}@example.com>"
    message["Date"] = "Mon, 07 Dec 2026 10:00:00 +0000"
    message["X-Emailsvc-Tags"] = "bench"
    message.set_content(payload["text"])
    message.add_alternative(payload["html"], subtype="html")
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--first", type=int, default=0)
    args = parser.parse_args()
    work = [
        [(args.first + c * args.messages + i, mime(args.first + c * args.messages + i)) for i in range(args.messages)]
        for c in range(args.clients)
    ]
    lock = threading.Lock()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    accepted = [0]
    start = threading.Barrier(args.clients + 1)

    def client(items) -> None:
        session = smtplib.SMTP("127.0.0.1", args.port, timeout=120)
        session.ehlo("bench.example.com")
        session.login("apikey", args.key)
        start.wait()
        mine, ok = [], 0
        for n, content in items:
            began = time.perf_counter()
            session.mail("bench@example.com")
            session.rcpt(f"customer{n}@example.com")
            code, text = session.data(content)
            mine.append(time.perf_counter() - began)
            if code == 250:
                ok += 1
            else:
                with lock:
                    reply = f"{code} {text[:40].decode(errors='replace')}"
                    errors[reply] = errors.get(reply, 0) + 1
        session.quit()
        with lock:
            latencies.extend(mine)
            accepted[0] += ok

    threads = [threading.Thread(target=client, args=(items,)) for items in work]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    latencies.sort()
    print(json.dumps({
        "clients": args.clients, "messages_per_client": args.messages, "accepted": accepted[0], "errors": errors,
        "elapsed_seconds": round(elapsed, 3), "emails_per_second": round(accepted[0] / elapsed, 1) if elapsed else 0,
        "p50_ms": round(1000 * percentile(latencies, 0.50), 2), "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
    }))


if __name__ == "__main__":
    main()
