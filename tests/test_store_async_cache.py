"""The async cache (:class:`certgate.stores.async_caching.AsyncCachingRegistry`,
``open_registry(url, asynchronous=True)``) against a real PostgreSQL
(tests/pg_server.py): isolation through ``adecide``, hits answered inline,
only the changed tenant dropped, propagation, a 503 during an outage and
recovery, bounds; and over any coroutine registry without a feed."""

from __future__ import annotations

import asyncio
import random
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from certgate import CertGate, ConfigError, InMemoryRegistry, Reason, Tenant
from certgate.devpki import CA, IssuedCert
from certgate.registry import MISS
from certgate.servers.tenant_contexts import registry_of
from certgate.stores import open_registry
from certgate.stores.async_caching import AsyncCachingRegistry
from certgate.stores.postgres import PostgresRegistry
from tests.conftest import PKI
from tests.pg_server import PgServer
from tests.store_helpers import ISOLATION_TENANTS, REQUEST_HOSTS, UNKNOWN, leaf_facts, reissued
from tests.test_tenant_contexts_store import (
    HANDSHAKE_FAILED,
    allowed,
    get,
    make_pki,
    refused_in_handshake,
    server,
    tenant,
    wait_until,
)

CLOUDFLARE = {"trusted_proxies": ["10.0.0.0/8"], "header_sources": ["cloudflare"]}
WAIT = 20.0
"""Seconds a test waits for a change or an outage to show (the promise is
2 s; a failure here means "never", the figures are measured in bench/)."""


async def await_for(predicate: Callable[[], Awaitable[bool]], seconds: float = WAIT) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.02)
    return False


@dataclass
class Store:
    dsn: str
    devices: dict[str, IssuedCert]
    roots: dict[str, CA]


@pytest.fixture(scope="module")
def store(pg_server: PgServer) -> Store:
    dsn = pg_server.create_database()
    writer = PostgresRegistry(dsn, create=True)
    devices, roots = {}, {}
    for tenant_id, hosts in ISOLATION_TENANTS.items():
        root = CA.root(f"{tenant_id} async root")
        writer.put(Tenant(tenant_id, hosts, (root.cert,)))
        devices[tenant_id] = root.issue(f"async-device-of-{tenant_id}")
        roots[tenant_id] = root
    writer.close()
    return Store(dsn, devices, roots)


def test_isolation_hits_inline_and_bounds(store: Store) -> None:
    """Every cell of the isolation matrix and every unknown host through
    ``adecide``, three times: right every time, the second and third rounds
    from the cache (no store read), the negative cache bounded."""

    async def run() -> None:
        registry = open_registry(store.dsn, asynchronous=True, max_negative=3)
        assert isinstance(registry, AsyncCachingRegistry)
        gate = CertGate(registry, **CLOUDFLARE)  # type: ignore[arg-type]
        try:
            for round_ in range(3):
                loads = registry.stats().loads
                for client, device in store.devices.items():
                    for owner, hosts in REQUEST_HOSTS.items():
                        for host in hosts:
                            decision = await gate.adecide(leaf_facts(host, device))
                            assert decision.tenant_id == owner, (client, host)
                            assert (decision.reason is None) == (client == owner), (client, host)
                for host in UNKNOWN[:3]:
                    decision = await gate.adecide(leaf_facts(host, store.devices["acme"]))
                    assert decision.reason is Reason.UNKNOWN_TENANT
                if round_ and registry.stats().invalidations == 0:
                    assert registry.stats().loads == loads, "a warm round reads nothing"
            stats = registry.stats()
            assert stats.tenants == len(ISOLATION_TENANTS)
            for host in UNKNOWN:  # more unknown names than max_negative
                assert await registry.tenant_for_host(host) is None
            assert registry.stats().negative == 3
            assert registry.peek_tenant_for_host("pay.acme.test") is not MISS
        finally:
            await registry.aclose()

    asyncio.run(run())


def test_a_change_drops_only_the_changed_tenant(store: Store) -> None:
    async def run() -> None:
        registry = open_registry(store.dsn, asynchronous=True, poll_interval=0.05)
        gate = CertGate(registry, **CLOUDFLARE)  # type: ignore[arg-type]
        writer = PostgresRegistry(store.dsn)
        hooli = store.devices["hooli"]
        acme = store.devices["acme"]

        async def reason(host: str, device: IssuedCert) -> Reason | None:
            return (await gate.adecide(leaf_facts(host, device))).reason

        try:
            assert await reason("hooli.test", hooli) is None
            assert await reason("pay.acme.test", acme) is None
            # hooli re-anchored at another root: its device is refused within the wait
            other = CA.root("hooli replacement root")
            await asyncio.to_thread(
                writer.put, Tenant("hooli", ISOLATION_TENANTS["hooli"], (other.cert,))
            )

            async def hooli_refused() -> bool:
                return await reason("hooli.test", hooli) is Reason.UNTRUSTED_CHAIN

            assert await await_for(hooli_refused)
            # acme stayed cached: answered inline, never dropped
            assert registry.peek_tenant_for_host("pay.acme.test") is not MISS
            # put back (same root, re-issued: same anchor for the device)
            back = reissued(store.roots["hooli"])
            await asyncio.to_thread(
                writer.put, Tenant("hooli", ISOLATION_TENANTS["hooli"], (back,))
            )

            async def hooli_allowed() -> bool:
                return await reason("hooli.test", hooli) is None

            assert await await_for(hooli_allowed)
            # removed: unknown on its next lookup
            await asyncio.to_thread(writer.remove, "hooli")

            async def hooli_unknown() -> bool:
                return await reason("hooli.test", hooli) is Reason.UNKNOWN_TENANT

            assert await await_for(hooli_unknown)
            assert registry.peek_tenant_for_host("pay.acme.test") is not MISS
        finally:
            await asyncio.to_thread(
                writer.put,
                Tenant("hooli", ISOLATION_TENANTS["hooli"], (store.roots["hooli"].cert,)),
            )
            writer.close()
            await registry.aclose()

    asyncio.run(run())


def test_sync_view_shares_the_cache(store: Store) -> None:
    """``decide`` (WSGI) and the TLS handshake read the same cache through
    its blocking view; what one looked up the other answers inline."""
    registry = open_registry(store.dsn, asynchronous=True)
    try:
        assert registry_of(registry) is registry.cache
        gate = CertGate(registry, **CLOUDFLARE)  # type: ignore[arg-type]
        assert gate.decide(leaf_facts("shop.test", store.devices["shop"])).reason is None
        assert isinstance(registry.peek_tenant_for_host("shop.test"), Tenant)

        async def run() -> Reason | None:
            loads = registry.stats().loads
            decision = await gate.adecide(leaf_facts("shop.test", store.devices["shop"]))
            assert registry.stats().loads == loads or registry.stats().invalidations
            return decision.reason

        assert asyncio.run(run()) is None
    finally:
        registry.close()


def test_outage_gives_503_and_recovers(pg_private: PgServer, pki: PKI) -> None:
    dsn = pg_private.create_database("tenants")
    writer = PostgresRegistry(dsn, create=True)
    acme = pki["acme"]
    writer.put(Tenant("acme", acme.hosts, (acme.roots[0].cert,), (acme.issuer.cert,)))
    writer.close()
    device = acme.client()
    url = dsn + "?pool_timeout=0.2&heartbeat=0.1"

    async def run() -> None:
        registry = open_registry(url, asynchronous=True, poll_interval=0.05, max_stale=0.3)
        gate = CertGate(registry, **CLOUDFLARE)  # type: ignore[arg-type]

        async def reason(host: str = "pay.acme.test") -> Reason | None:
            return (await gate.adecide(leaf_facts(host, device))).reason

        async def refused() -> bool:
            return await reason() is Reason.TRUST_STORE_UNAVAILABLE

        async def allowed() -> bool:
            return await reason() is None

        try:
            assert await allowed()
            assert await allowed()
            await asyncio.to_thread(pg_private.stop)
            assert await await_for(refused)
            assert await reason("x.acme.test") is Reason.TRUST_STORE_UNAVAILABLE
            for _ in range(3):  # no cached tenant, no remembered decision while down
                assert await refused()
            assert registry.change_token is not registry.change_token
            await asyncio.to_thread(pg_private.start)
            assert await await_for(allowed)

            async def uncached_allowed() -> bool:  # once the async pool reconnects too
                return await reason("x.acme.test") is None

            assert await await_for(uncached_allowed)
        finally:
            await registry.aclose()

    asyncio.run(run())


# -- any coroutine registry (no PostgreSQL) ------------------------------------------


class CoroutineRegistry:
    """A coroutine registry in memory with a ``change_token``; counts reads."""

    def __init__(self, tenants: list[Tenant]) -> None:
        self.tenants = tenants
        self.change_token = object()
        self.reads = 0

    async def tenant_for_host(self, host: str) -> Tenant | None:
        self.reads += 1
        await asyncio.sleep(0)
        return next((t for t in self.tenants if host in t.hosts), None)

    async def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        self.reads += 1
        return next((t for t in self.tenants if t.id == tenant_id), None)


def test_coroutine_registry_without_a_feed() -> None:
    roots = [CA.root(f"coroutine root {i}") for i in range(3)]
    inner = CoroutineRegistry(
        [Tenant(f"c{i}", (f"c{i}.test",), (roots[i].cert,)) for i in range(3)]
    )
    registry = AsyncCachingRegistry(inner, poll_interval=0.02, max_tenants=2, max_negative=4)
    assert registry.sync_registry is None  # no blocking lookups to offer

    async def run() -> None:
        try:
            for i in range(3):
                assert (await registry.tenant_for_host(f"c{i}.test")) is inner.tenants[i]
            assert registry.stats().tenants == 2  # the bound
            reads = inner.reads
            assert (await registry.tenant_for_host("c2.test")) is inner.tenants[2]
            assert inner.reads == reads  # a hit
            rng = random.Random(3)
            for _ in range(20):
                name = "".join(rng.choices(string.ascii_lowercase, k=12)) + ".test"
                assert await registry.tenant_for_host(name) is None
            assert registry.stats().negative == 4
            # a replaced change_token drops everything (the poller sees it)
            token = registry.change_token
            inner.tenants = inner.tenants[:2]
            inner.change_token = object()

            async def gone() -> bool:
                return await registry.tenant_for_host("c2.test") is None

            assert await await_for(gone)
            assert registry.change_token is not token
        finally:
            await registry.aclose()

    asyncio.run(run())
    with pytest.raises(ConfigError, match="coroutine tenant_for_host"):
        AsyncCachingRegistry(InMemoryRegistry())


def test_asynchronous_needs_a_postgresql_url() -> None:
    with pytest.raises(ConfigError, match=r"asynchronous=True needs a postgresql:// registry URL"):
        open_registry("sqlite:////nonexistent/tenants.db", asynchronous=True)


# -- per-tenant handshakes and requests through uvicorn -------------------------------


def test_uvicorn_per_tenant_handshakes_over_the_async_cache(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One uvicorn server: requests decided by ``adecide`` over the async
    cache, handshakes reading the same cache through its blocking view; a
    tenant added while serving is reached, a removed one refused."""
    keys = make_pki(tmp_path_factory.mktemp("async-handshakes"))
    dsn = pg_server.create_database()
    writer = PostgresRegistry(dsn, create=True)
    writer.put(tenant(keys, 0))
    registry = open_registry(dsn, asynchronous=True, poll_interval=0.05)
    gate = CertGate(registry)
    try:
        with server(keys, gate) as (port, contexts):
            assert allowed(keys, port, 0)
            assert contexts.registry is registry.cache
            assert refused_in_handshake(keys, port, 1)
            writer.put(tenant(keys, 1))
            assert wait_until(lambda: allowed(keys, port, 1), WAIT)
            writer.remove("t0")
            assert wait_until(lambda: refused_in_handshake(keys, port, 0), WAIT)
            with pytest.raises(HANDSHAKE_FAILED):
                get(keys, port, "t1", "t0.test")
            assert registry.stats().tenants >= 1
    finally:
        registry.close()
        writer.close()
