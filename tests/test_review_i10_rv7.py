"""Adversarial review of the PostgreSQL tenant store (issue 10, reviewer rv7):
each finding is a test against a real server that failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from certgate import ConfigError
from certgate.errors import TrustStoreUnavailable
from certgate.registry import Miss
from certgate.stores.caching import CachingRegistry
from certgate.stores.postgres import AsyncPostgresRegistry, PostgresRegistry
from tests.conftest import PKI
from tests.pg_server import PgServer


class FreezingProxy:
    """A TCP forwarder to the server that can *freeze*: stop moving bytes
    without closing anything - a silently dead network path (no RST, no
    FIN), as a dropped NAT entry or a partition looks to the client."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.stop = threading.Event()
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.frozen.is_set():  # a new connection goes nowhere either
                self.socks.append(client)
                continue
            upstream = socket.create_connection(self.target)
            self.socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        while not self.stop.is_set():
            if self.frozen.is_set():
                time.sleep(0.05)
                continue
            readable, _, _ = select.select([a, b], [], [], 0.05)
            for sock in readable:
                if self.frozen.is_set():
                    break
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                peer[sock].sendall(data)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def proxy(pg_server: PgServer) -> Iterator[FreezingProxy]:
    made = FreezingProxy(pg_server.port)
    yield made
    made.close()


def _through(dsn: str, port: int) -> str:
    head, _, tail = dsn.rpartition("@")
    _, _, rest = tail.partition("/")
    return f"{head}@127.0.0.1:{port}/{rest}"


# -- finding 1: a silently dead path extends the cache past max_stale -------------


def test_a_frozen_path_never_serves_a_change_older_than_max_stale(
    pg_dsn: str, proxy: FreezingProxy, pki: PKI
) -> None:
    """The listener's last answer is as of its last counter read; a poll
    answered from it must not count as a fresh read of the store. Before the
    fix a poll at liveness (1.5 s) after the path died pushed the cache's
    freshness to then + max_stale: a tenant removed just after the path
    froze was still served ~3.5 s later (promise: 2 s)."""
    writer = PostgresRegistry(pg_dsn, create=True)
    writer.put(pki["acme"].tenant())
    cache = CachingRegistry(
        PostgresRegistry(_through(pg_dsn, proxy.port), heartbeat=0.5, pool_timeout=0.5),
        poll_interval=0.5,
        max_stale=2.0,
    )
    assert cache.tenant_for_host("pay.acme.test") is not None
    deadline = time.monotonic() + 15
    while cache.stats().polls < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    feed = cache.inner._process().feed
    seen = feed.alive_at
    while feed.alive_at == seen and time.monotonic() < deadline:
        time.sleep(0.005)
    proxy.frozen.set()  # just after a listener read: the worst moment
    writer.remove("acme")
    committed = time.monotonic()
    served_after = 0.0
    while time.monotonic() < committed + 5.0:
        asked = time.monotonic()
        if not isinstance(cache.peek_tenant_for_host("pay.acme.test"), Miss):
            served_after = asked - committed
        time.sleep(0.01)
    cache.close()
    writer.close()
    assert served_after < 2.0, f"removed tenant served {served_after:.2f} s later"


# -- finding 2: a password with a reserved character was printed ------------------


@pytest.mark.parametrize(
    "userinfo",
    [
        "certgate:pa/ss-SECRET",
        "certgate:pa?ss-SECRET",
        "certgate:pa[ss-SECRET",
        "certgate:pa]ss-SECRET",
    ],
)
def test_an_unencoded_password_never_appears_in_an_error(
    pg_server: PgServer, userinfo: str
) -> None:
    """Generated passwords often hold ``/`` or ``?``; left unencoded in a URL
    they end the authority early, so the "redacted" URL in messages printed
    the rest of the password as a path or query (or ``[`` raised a bare
    ValueError)."""
    url = f"postgresql://{userinfo}@127.0.0.1:{pg_server.port}/postgres"
    with pytest.raises(ConfigError) as caught:
        PostgresRegistry(url)
    assert "SECRET" not in str(caught.value)
    assert "percent-encode" in str(caught.value)


# -- checked sound: an exhausted pool is a prompt 503, not a queue ----------------


def test_an_exhausted_pool_is_a_503_within_pool_timeout(pg_dsn: str, pki: PKI) -> None:
    """Every pooled connection stuck behind a table lock (a migration, a
    restore): the next lookup waits at most pool_timeout, then 503."""
    writer = PostgresRegistry(pg_dsn, create=True)
    writer.put(pki["acme"].tenant())
    reader = PostgresRegistry(pg_dsn, pool_min=1, pool_max=1, pool_timeout=0.3, listen=False)
    assert reader.tenant_for_host("pay.acme.test") is not None
    with psycopg.connect(writer.settings.conninfo) as locker:
        locker.execute("LOCK TABLE hosts IN ACCESS EXCLUSIVE MODE")
        stuck = threading.Thread(target=_swallow, args=(reader, "x.acme.test"), daemon=True)
        stuck.start()
        time.sleep(0.3)  # the one connection is now waiting on the lock
        started = time.monotonic()
        with pytest.raises(TrustStoreUnavailable):
            reader.tenant_for_host("pay.acme.test")
        assert time.monotonic() - started < 5.0
        locker.rollback()
    stuck.join(10)
    assert reader.tenant_for_host("pay.acme.test") is not None
    reader.close()
    writer.close()


def _swallow(reader: PostgresRegistry, host: str) -> None:
    with contextlib.suppress(TrustStoreUnavailable):
        reader.tenant_for_host(host)


def test_a_slow_heartbeat_does_not_starve_the_cache(pg_dsn: str, pki: PKI) -> None:
    """heartbeat (5 s) longer than max_stale (2 s): the listener's answers
    are too old to keep the cache fresh, so a poll reads the log instead -
    the cache keeps answering hits (no query per request)."""
    writer = PostgresRegistry(pg_dsn, create=True)
    writer.put(pki["acme"].tenant())
    cache = CachingRegistry(PostgresRegistry(pg_dsn, heartbeat=5.0), poll_interval=0.2)
    assert cache.tenant_for_host("pay.acme.test") is not None
    misses = 0
    end = time.monotonic() + 6.0
    while time.monotonic() < end:
        if isinstance(cache.peek_tenant_for_host("pay.acme.test"), Miss):
            misses += 1
            assert cache.tenant_for_host("pay.acme.test") is not None
        time.sleep(0.05)
    cache.close()
    cache.inner.close()
    writer.close()
    assert misses <= 10  # before: a miss on most reads (58 of ~110)


# -- finding 3: any connected role could flush every async gate's memo -----------


def test_a_forged_notification_does_not_replace_the_async_token(pg_dsn: str, pki: PKI) -> None:
    """Any role that can connect can NOTIFY on the channel. The async
    registry replaced its change_token on every notification, so a loop of
    forged ones emptied the decision memo of every ASGI gate of the fleet
    (each request a query and a verification). A notification must only
    wake the listener; the counter says whether something changed."""
    writer = PostgresRegistry(pg_dsn, create=True)
    writer.put(pki["acme"].tenant())
    registry = AsyncPostgresRegistry(pg_dsn, heartbeat=0.2)

    async def run() -> tuple[int, bool]:
        assert await registry.tenant_for_host("pay.acme.test") is not None
        deadline = time.monotonic() + 15
        while not registry._live and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        token = registry._token  # the listener's (the property is new while not live)
        with psycopg.connect(writer.settings.conninfo, autocommit=True) as conn:
            for _ in range(20):
                conn.execute("SELECT pg_notify('certgate_changes', '1 1 acme')")
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        kept = registry._token is token
        await asyncio.to_thread(writer.remove, "acme")  # a real change still replaces it
        while registry._token is token and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        changed = registry._token is not token
        await registry.aclose()
        return int(kept), changed

    kept, changed = asyncio.run(run())
    writer.close()
    assert changed
    assert kept == 1
