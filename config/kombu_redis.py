"""Redis transport that survives a broker outage while a task is unacknowledged.

Imported by config/celery.py before the Celery app opens a broker connection.
It registers its Transport for the
``redis://`` and ``rediss://`` URL schemes, so the broker URL, ``as_uri()``
(log lines, Flower's broker page) and failover URLs keep working unchanged.
(``broker_transport = "<module>:Transport"`` also selects it, but then
``Connection.as_uri()`` starts with the class path and Flower's broker page
raises NotImplementedError.)

Why (kombu 5.7.0 / celery 5.7.0): when the broker connection drops, celery's
``Consumer.on_connection_error_after_connected`` calls ``connection.collect()``
and then ``connection.close()``.  In ``collect()`` the task channel's
``close()`` fails with a redis ``ConnectionError`` while draining its in-flight
BRPOP, before it marks itself closed, so it keeps its unacked message; the
pidbox (remote control) channel's ``close()`` fails the same way deleting its
auto-delete queue and aborts ``Transport.close_connection``.  ``collect()``
swallows both errors and detaches the transport (``transport.client = None``).
``connection.close()`` then closes the task channel again; this time it gets
to ``QoS.restore_unacked`` -> ``conn_or_acquire`` -> ``pool`` -> ``_get_pool``
-> ``_connparams``, which reads ``self.connection.client.hostname`` ->
``AttributeError``.  ``ignore_errors`` only catches connection/channel errors,
so it escapes the consumer's reconnect loop: "Unrecoverable error", exit 1.

Fix: the channel keeps the ``kombu.Connection`` it was opened with and builds
its connection parameters from it once the transport has been detached.  The
restore then fails with a redis ``ConnectionError`` while Redis is down, which
is caught as usual, and the worker reconnects.  The message stays in Redis's
``unacked`` hash (if Redis kept its data), so it is not lost; the running
task's late ack, which goes through this same old channel, removes it once
Redis is back, so it is not redelivered after ``visibility_timeout`` either.
Pools of a detached channel are not cached, so no socket stays open.
Remove once kombu no longer reads ``transport.client`` from a channel after
``Connection.collect()``.
"""
import kombu.transport
from kombu.transport import redis as kombu_redis


class _DetachedTransport:
    """What ``Channel._connparams`` reads from its transport: nothing else."""

    def __init__(self, client, default_port):
        self.client = client
        self.default_port = default_port


class Channel(kombu_redis.Channel):
    def __init__(self, connection, *args, **kwargs):
        # kombu.Connection that holds the URL, credentials and options.
        self._broker_conninfo = connection.client
        self._broker_default_port = connection.default_port
        super().__init__(connection, *args, **kwargs)

    def _detached(self):
        # Connection.collect()/close() set transport.client = None;
        # Transport.close_channel() sets channel.connection = None.
        return self.connection is None or self.connection.client is None

    def _connparams(self, asynchronous=False):
        if not self._detached():
            return super()._connparams(asynchronous=asynchronous)
        # Build the params from the saved kombu.Connection instead of the
        # detached transport (the only two attributes _connparams reads).
        transport = self.connection
        self.connection = _DetachedTransport(
            self._broker_conninfo, self._broker_default_port)
        try:
            return super()._connparams(asynchronous=asynchronous)
        finally:
            self.connection = transport

    @property
    def pool(self):
        if self._detached():
            # A pool per use, not cached on the channel: a detached channel
            # can stay referenced (e.g. by a running task's message), and a
            # cached pool would keep one socket open per outage.
            return self._get_pool()
        return super().pool


class Transport(kombu_redis.Transport):
    Channel = Channel


def install():
    """Make ``redis://`` / ``rediss://`` URLs use this Transport (idempotent)."""
    path = f"{__name__}:Transport"
    for scheme in ("redis", "rediss"):
        kombu.transport.TRANSPORT_ALIASES[scheme] = path
        # get_transport_cls() caches resolved names; drop a stale entry.
        getattr(kombu.transport, "_transport_cache", {}).pop(scheme, None)


install()
