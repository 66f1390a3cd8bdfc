"""A TCP forwarding proxy that can take a dependency away, for outage tests.

`TcpFaultProxy(host, port)` listens on a free 127.0.0.1 port and forwards every
connection to host:port, byte for byte, from an asyncio loop in a thread of the
test process. Point a process at the proxy instead of the real server (e.g.
PostgreSQL through `Stack(database_url=...)`), then:

- `down()`: every open connection, client and upstream side, is closed at once
  and the port stops listening, so new connections are refused — what a client
  sees when PostgreSQL is stopped (its sessions end, nothing answers the port);
- `up()`: the port listens again (the same one) and connections go through.

The real server is never touched, so other users of it (the test process's own
database connection) go on undisturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

from config.devservices import free_port

_CHUNK = 64 * 1024


class TcpFaultProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int | None = None):
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = port or free_port()
        self.accepted = 0  # client connections taken while up, over the proxy's life
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()  # both sides of every open pair
        self._tasks: set[asyncio.Task] = set()

    # --- lifecycle (called from the test's thread) ---------------------------------

    def start(self) -> TcpFaultProxy:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name=f"tcp-fault-proxy-{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        self.up()
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = self._thread = None

    def up(self) -> None:
        """Listen (again) on the proxy's port."""
        self._call(self._listen())

    def down(self) -> None:
        """Refuse new connections and cut every open one, both sides, at once."""
        self._call(self._cut())

    @property
    def is_up(self) -> bool:
        return self._server is not None

    @property
    def open_connections(self) -> int:
        """Forwarded connections open at this moment."""
        return len(self._tasks)

    def _call(self, coroutine):
        if self._loop is None:
            raise RuntimeError("the proxy is not started")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    # --- in the loop ----------------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is not None:
            return
        # reuse_address: the port may still hold connections in TIME_WAIT from before down().
        self._server = await asyncio.start_server(self._forward, self.host, self.port, reuse_address=True)

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # closes the listening socket: connections are refused from here on
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _forward(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted just before down(), started just after it
            client_writer.transport.abort()
            return
        task = asyncio.current_task()
        self._tasks.add(task)
        self._transports.add(client_writer.transport)
        self.accepted += 1
        upstream_writer = None
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                return  # the real server is away too: the client sees its connection closed
            self._transports.add(upstream_writer.transport)
            with contextlib.suppress(OSError):
                upstream_writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                client_writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Either direction ending (EOF or error) ends the pair.
            pumps = [
                asyncio.ensure_future(_pump(client_reader, upstream_writer)),
                asyncio.ensure_future(_pump(upstream_reader, client_writer)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except asyncio.CancelledError:
            pass  # down(): the transports are already aborted
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    self._transports.discard(writer.transport)
                    writer.transport.abort()
            self._tasks.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
