"""tests/faultproxy.py against the machine's real PostgreSQL (skipped when there is none)."""

import socket
import time

import psycopg
import pytest

from tests.faultproxy import TcpFaultProxy

POSTGRES = ("127.0.0.1", 5432)


def _postgres_listens() -> bool:
    try:
        with socket.create_connection(POSTGRES, timeout=1):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _postgres_listens(), reason="no PostgreSQL on 127.0.0.1:5432")


@pytest.fixture
def proxy():
    proxy = TcpFaultProxy(*POSTGRES).start()
    yield proxy
    proxy.stop()


def connect(proxy: TcpFaultProxy) -> psycopg.Connection:
    return psycopg.connect(host=proxy.host, port=proxy.port, user="postgres", dbname="postgres", connect_timeout=5, autocommit=True)


def test_queries_go_through_the_proxy(proxy):
    with connect(proxy) as connection:
        assert connection.execute("SELECT 41 + 1").fetchone() == (42,)
        # A result larger than one read of the proxy arrives whole.
        assert connection.execute("SELECT repeat('x', 1000000)").fetchone()[0] == "x" * 1_000_000
    assert proxy.accepted == 1


def test_down_cuts_every_open_connection_and_refuses_new_ones_until_up(proxy):
    first, second = connect(proxy), connect(proxy)
    assert proxy.open_connections == 2

    proxy.down()

    assert proxy.open_connections == 0
    for connection in (first, second):
        with pytest.raises(psycopg.OperationalError):
            connection.execute("SELECT 1")
        assert connection.broken or connection.closed
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="refused"):
        connect(proxy)
    assert time.monotonic() - started < 2, "a refused connection fails at once, as with PostgreSQL stopped"

    proxy.up()

    with connect(proxy) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)
        assert connection.info.port == proxy.port


def test_up_and_down_are_idempotent_and_the_port_is_kept(proxy):
    port = proxy.port
    proxy.up()
    proxy.down()
    proxy.down()
    assert not proxy.is_up
    proxy.up()
    assert (proxy.is_up, proxy.port) == (True, port)
    with connect(proxy) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)
