"""An SES endpoint whose every answer takes `--delay-ms` longer (figure 3, SES rows).

    python -m benchmarks.sesproxy serve --port P --upstream MOTO_URL --delay-ms 30 [--answer] --arrivals DIR
    python -m benchmarks.sesproxy blast --endpoint URL --processes 2 --threads 8 --seconds S

Real SES answers a SendEmail in 20-50 ms: a worker that sends one request at a
time gets ~30 emails/s per process whatever its CPU. moto (the bench's SES)
answers on loopback in a few milliseconds, so this proxy sits in front of it
and holds every answer back by the delay: the worker's SES v2 client is
pointed at it with botocore's service-specific endpoint variable
(`AWS_ENDPOINT_URL_SESV2`, as the test suite's fault proxy is). The test
suite's `tests/sesproxy.py` injects errors but cannot add latency (it also keeps
every call in memory and opens an upstream connection per request), hence
this one: one asyncio process, a kept-open upstream connection per client
connection, the delay slept without holding anything else up.

`--answer`: SendEmail is answered by the proxy itself (a new MessageId, after
the delay) and never reaches moto — an SES stand-in that costs next to nothing,
to show what the service does when the endpoint is not the bottleneck. Other
calls are still forwarded.

The arrival time of every SendEmail request is appended to
DIR/ses-arrivals-<pid>.txt (flushed every 0.2 s): what SES would count against
the account's sending rate.

`blast`: the endpoint's own ceiling with the workers' concurrency, no service
involved: P processes × T threads, each thread with its own boto3 `sesv2`
client (as each send slot of a worker has), sending the bench's typical raw
email as fast as the answers come. Prints {"messages", "seconds", "per_second"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

SEND_EMAIL_PATH = b"/v2/email/outbound-emails"
_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer",
               b"upgrade", b"content-length"}


class _Closed(Exception):
    pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            return None
        raise _Closed from error
    lines = head[:-4].split(b"\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


async def _read_body(reader: asyncio.StreamReader, headers, *, to_eof: bool) -> bytes:
    if (_header(headers, b"transfer-encoding") or b"").lower() == b"chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = _header(headers, b"content-length")
    if length is not None:
        return await reader.readexactly(int(length))
    return await reader.read() if to_eof else b""


class Proxy:
    def __init__(self, args: argparse.Namespace):
        from urllib.parse import urlsplit

        upstream = urlsplit(args.upstream) if args.upstream else None
        self.upstream = (upstream.hostname, upstream.port or 80) if upstream else None
        self.delay = args.delay_ms / 1000
        self.answer = args.answer
        self.arrivals_path = Path(args.arrivals) / f"ses-arrivals-{os.getpid()}.txt" if args.arrivals else None
        self.pending: list[float] = []
        self.requests = 0

    async def flusher(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            self.flush()

    def flush(self) -> None:
        if self.pending and self.arrivals_path is not None:
            with open(self.arrivals_path, "a") as handle:
                handle.write("".join(f"{at:.6f}\n" for at in self.pending))
        self.pending.clear()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                request = await _read_head(reader)
                if request is None:
                    return
                request_line, headers = request
                body = await _read_body(reader, headers, to_eof=False)
                method, path = request_line.split(b" ")[:2]
                sending = method == b"POST" and path.split(b"?")[0].rstrip(b"/") == SEND_EMAIL_PATH
                if sending:
                    self.pending.append(time.time())
                self.requests += 1
                if sending and self.answer:
                    payload = json.dumps({"MessageId": f"0100-{uuid.uuid4()}-000000"}).encode()
                    status_line = b"HTTP/1.1 200 OK"
                    answer_headers = [(b"Content-Type", b"application/json"),
                                      (b"x-amzn-RequestId", str(uuid.uuid4()).encode())]
                else:
                    for attempt in range(2):  # a kept-open upstream connection may have been closed by moto
                        if upstream is None:
                            upstream = await asyncio.open_connection(*self.upstream)
                        try:
                            status_line, answer_headers, payload = await self._forward(upstream, request_line,
                                                                                      headers, body)
                            break
                        except (OSError, asyncio.IncompleteReadError, _Closed):
                            upstream[1].close()
                            upstream = None
                            if attempt:
                                raise
                    if (_header(answer_headers, b"connection") or b"").lower() == b"close":
                        upstream[1].close()
                        upstream = None
                await asyncio.sleep(self.delay)
                out = [status_line]
                out += [name + b": " + value for name, value in answer_headers if name.lower() not in _HOP_BY_HOP]
                out.append(b"Content-Length: " + str(len(payload)).encode())
                writer.write(b"\r\n".join(out) + b"\r\n\r\n" + payload)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, _Closed):
            pass
        finally:
            if upstream is not None:
                upstream[1].close()
            writer.close()

    async def _forward(self, upstream, request_line: bytes, headers, body: bytes):
        up_reader, up_writer = upstream
        out = [request_line]
        out += [name + b": " + value for name, value in headers if name.lower() not in _HOP_BY_HOP]
        out.append(b"Content-Length: " + str(len(body)).encode())
        up_writer.write(b"\r\n".join(out) + b"\r\n\r\n" + body)
        await up_writer.drain()
        response = await _read_head(up_reader)
        if response is None:
            raise _Closed
        status_line, answer_headers = response
        payload = await _read_body(up_reader, answer_headers, to_eof=True)
        return status_line, answer_headers, payload


async def _serve(args: argparse.Namespace) -> None:
    proxy = Proxy(args)
    server = await asyncio.start_server(proxy.handle, args.host, args.port, backlog=1024)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
    flusher = loop.create_task(proxy.flusher())
    print(f"ready: {args.host}:{args.port} delay {args.delay_ms} ms "
          f"{'answering SendEmail itself' if args.answer else 'forwarding to ' + args.upstream}", flush=True)
    try:
        await stop
    finally:
        flusher.cancel()
        server.close()
        proxy.flush()


def serve(args: argparse.Namespace) -> int:
    from benchmarks.smtpsink import raise_priority

    raise_priority()  # it stands for SES: its clock should not wait behind the workers
    if args.arrivals:
        Path(args.arrivals).mkdir(parents=True, exist_ok=True)
    if not args.answer and not args.upstream:
        raise SystemExit("--upstream is needed unless --answer")
    asyncio.run(_serve(args))
    return 0


# --- blast: an endpoint's own ceiling ---------------------------------------------------------


def _blast_one(endpoint: str, threads: int, seconds: float, data: bytes, results) -> None:
    import threading

    import boto3
    from botocore.config import Config

    counts = [0] * threads
    errors = [0] * threads

    def run(index: int) -> None:
        client = boto3.session.Session().client(
            "sesv2", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
            aws_secret_access_key="bench", config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        )
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                client.send_email(FromEmailAddress="bench@example.com",
                                  Destination={"ToAddresses": ["customer0@example.com"]},
                                  Content={"Raw": {"Data": data}})
                counts[index] += 1
            except Exception:  # counted, not fatal: the ceiling is about what got through
                errors[index] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        results.put((sum(counts), sum(errors)))


def blast(args: argparse.Namespace) -> int:
    import multiprocessing

    from benchmarks.smtpsink import _typical_message

    data = _typical_message()
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [context.Process(target=_blast_one, args=(args.endpoint, args.threads, args.seconds, data, results))
                 for _ in range(args.processes)]
    started = time.monotonic()
    for process in processes:
        process.start()
    answers = [results.get(timeout=args.seconds + 120) for _ in processes]
    elapsed = time.monotonic() - started
    for process in processes:
        process.join()
    total, errors = sum(a[0] for a in answers), sum(a[1] for a in answers)
    # Each thread sends for exactly `seconds` once its client is made (process
    # start and imports are not counted).
    json.dump({"messages": total, "errors": errors, "seconds": args.seconds, "wall_seconds": round(elapsed, 3),
               "per_second": round(total / args.seconds, 1), "processes": args.processes, "threads": args.threads},
              sys.stdout)
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--upstream", default="", help="moto's URL")
    serve_parser.add_argument("--delay-ms", type=float, default=30)
    serve_parser.add_argument("--answer", action="store_true", help="answer SendEmail here, without moto")
    serve_parser.add_argument("--arrivals", default=None, help="directory for SendEmail arrival-time files")
    blast_parser = commands.add_parser("blast")
    blast_parser.add_argument("--endpoint", required=True)
    blast_parser.add_argument("--processes", type=int, default=2)
    blast_parser.add_argument("--threads", type=int, default=8)
    blast_parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args(argv)
    return serve(args) if args.command == "serve" else blast(args)


if __name__ == "__main__":
    sys.exit(main())
