"""A local SMTP sink that accepts everything, fast enough not to be the bottleneck.

    python -m benchmarks.smtpsink serve --engine postfix --port P --arrivals DIR
    python -m benchmarks.smtpsink serve --engine aiosmtpd --port P --processes K --arrivals DIR
    python -m benchmarks.smtpsink blast --port P --clients C --seconds S

`serve --engine postfix` (what the bench uses when it can): postfix's
`smtp-sink` (benchmarks/postfix.py fetches it), a C server that takes thousands
of messages/s here. It runs as a child of this process with `-c`, which prints
its running message count on stdout each time a message's final "." arrives;
this process reads that and appends one arrival time (time.time()) per new
message to DIR/arrivals-<pid>.txt, flushed every 0.2 s.

`serve --engine aiosmtpd` (the fallback when postfix cannot be had): one
aiosmtpd process accepts about 540 messages/s on this kind of machine, less
than the workers may hand over. So K processes each bind the same port with
SO_REUSEPORT and the kernel spreads new connections over them. Each process
appends the arrival time of every accepted DATA to DIR/arrivals-<pid>.txt,
flushed every 0.2 s.

Either way the bench can count what arrived in any time window.

`blast`: the sink's own ceiling, measured in the same run: C client processes,
each with one smtplib session, send a typical message as fast as they can for
S seconds. Prints {"messages", "seconds", "per_second"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import smtplib
import socket
import sys
import time
from email import policy
from email.message import EmailMessage
from pathlib import Path


class _Handler:
    def __init__(self, arrivals_path: Path | None):
        self.pending: list[float] = []
        self.path = arrivals_path

    async def handle_DATA(self, server, session, envelope):
        self.pending.append(time.time())
        return "250 2.0.0 Ok: queued"

    def flush(self) -> None:
        if self.pending and self.path is not None:
            with open(self.path, "a") as handle:
                handle.write("".join(f"{at:.6f}\n" for at in self.pending))
        self.pending.clear()


def _serve_one(host: str, port: int, arrivals_dir: str | None, ready) -> None:
    from aiosmtpd.smtp import SMTP

    handler = _Handler(Path(arrivals_dir) / f"arrivals-{os.getpid()}.txt" if arrivals_dir else None)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # hostname given: aiosmtpd would otherwise ask socket.getfqdn() per session.
    server = loop.run_until_complete(
        loop.create_server(
            lambda: SMTP(handler, hostname="bench-sink", ident="bench-sink", decode_data=False),
            host, port, reuse_port=True, backlog=1024,
        )
    )

    async def flusher() -> None:
        while True:
            await asyncio.sleep(0.2)
            handler.flush()

    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    loop.create_task(flusher())
    ready.set()
    try:
        loop.run_forever()
    finally:
        handler.flush()
        server.close()


def serve_postfix(args: argparse.Namespace) -> int:
    import re
    import select
    import subprocess

    from benchmarks.postfix import smtp_sink

    sink = smtp_sink()
    path = Path(args.arrivals) / f"arrivals-{os.getpid()}.txt" if args.arrivals else None
    child = subprocess.Popen(sink.argv(args.host, args.port), env=sink.env(), stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    print(f"ready: {sink.version} smtp-sink on {args.host}:{args.port} (pid {child.pid})", flush=True)
    counter = re.compile(rb"mesg=(\d+)")
    seen, pending, buffer, flushed = 0, [], b"", time.monotonic()
    fd = child.stdout.fileno()
    try:
        while not stopping and child.poll() is None:
            try:
                readable, _, _ = select.select([fd], [], [], 0.2)
            except InterruptedError:
                continue
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                now = time.time()
                buffer += chunk
                records = buffer.split(b"\r")
                buffer = records.pop()  # an incomplete record waits for the rest
                for record in records:
                    match = counter.search(record)
                    if match and int(match.group(1)) > seen:
                        pending.extend([now] * (int(match.group(1)) - seen))
                        seen = int(match.group(1))
            if pending and time.monotonic() - flushed >= 0.2 and path is not None:
                with open(path, "a") as handle:
                    handle.write("".join(f"{at:.6f}\n" for at in pending))
                pending.clear()
                flushed = time.monotonic()
    finally:
        if pending and path is not None:
            with open(path, "a") as handle:
                handle.write("".join(f"{at:.6f}\n" for at in pending))
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0


def raise_priority() -> None:
    """The sink stands for a provider on other machines: it (and its arrival
    clock) should not wait behind the workers for one of the two cores. Nice -5
    when allowed (root), else nothing; its own CPU use is small."""
    try:
        os.nice(-5)
    except OSError:
        pass


def serve(args: argparse.Namespace) -> int:
    raise_priority()
    if args.arrivals:
        Path(args.arrivals).mkdir(parents=True, exist_ok=True)
    if args.engine == "postfix":
        return serve_postfix(args)
    context = multiprocessing.get_context("fork")
    events = [context.Event() for _ in range(args.processes)]
    processes = [
        context.Process(target=_serve_one, args=(args.host, args.port, args.arrivals, event), daemon=True)
        for event in events
    ]
    for process in processes:
        process.start()
    for event in events:
        if not event.wait(30):
            print("sink process did not start", flush=True)
            return 1
    print(f"ready: {args.processes} processes on {args.host}:{args.port}", flush=True)

    def stop_all(*_):
        for process in processes:
            if process.is_alive():
                process.terminate()

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(0)))
    signal.signal(signal.SIGINT, lambda *_: (stop_all(), sys.exit(0)))
    for process in processes:
        process.join()
    return 0


def _typical_message() -> bytes:
    """About the size of what the service sends for benchmarks.payload's email."""
    from benchmarks.payload import email_payload

    payload = email_payload(0)
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "bench@example.com", payload["to"], payload["subject"]
    message.set_content(payload["text"], cte="quoted-printable")
    message.add_alternative(payload["html"], subtype="html", cte="quoted-printable")
    return message.as_bytes(policy=policy.SMTP)  # CRLF line ends, as on the wire


def _blast_one(host: str, port: int, seconds: float, data: bytes, results) -> None:
    sent = 0
    try:
        with smtplib.SMTP(host, port, local_hostname="bench-client", timeout=30) as client:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                client.sendmail("bench@example.com", ["customer0@example.com"], data)
                sent += 1
    finally:  # always answer, so the parent never waits for a client that failed
        results.put(sent)


def blast(args: argparse.Namespace) -> int:
    data = _typical_message()
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [
        context.Process(target=_blast_one, args=(args.host, args.port, args.seconds, data, results))
        for _ in range(args.clients)
    ]
    started = time.monotonic()
    for process in processes:
        process.start()
    total = sum(results.get(timeout=args.seconds + 60) for _ in processes)
    elapsed = time.monotonic() - started
    for process in processes:
        process.join()
    json.dump({"messages": total, "seconds": round(elapsed, 3), "per_second": round(total / elapsed, 1),
               "clients": args.clients}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def wait_ready(host: str, port: int, timeout: float = 30) -> None:
    """Until an SMTP greeting comes back on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1) as sock:
                if sock.recv(64).startswith(b"220"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"SMTP sink on {host}:{port} did not answer")
        time.sleep(0.05)


def read_arrivals(directory: Path) -> list[float]:
    """Every arrival time the sink processes wrote so far, sorted."""
    times: list[float] = []
    for path in directory.glob("arrivals-*.txt"):
        times += [float(line) for line in path.read_text().split()]
    return sorted(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--engine", choices=("postfix", "aiosmtpd"), default="postfix")
    serve_parser.add_argument("--processes", type=int, default=2, help="aiosmtpd processes")
    serve_parser.add_argument("--arrivals", default=None, help="directory for arrival-time files")
    blast_parser = commands.add_parser("blast")
    blast_parser.add_argument("--host", default="127.0.0.1")
    blast_parser.add_argument("--port", type=int, required=True)
    blast_parser.add_argument("--clients", type=int, default=4)
    blast_parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args(argv)
    return serve(args) if args.command == "serve" else blast(args)


if __name__ == "__main__":
    sys.exit(main())
