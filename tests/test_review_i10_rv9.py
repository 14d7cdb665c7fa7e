"""Adversarial review of per-tenant handshakes over a store and the async
cache (issue 10, reviewer rv9): each finding is a test against real parts
(a real PostgreSQL, real SQLite stores, real TLS) that failed before its fix."""

from __future__ import annotations

import asyncio
import logging
import random
import string
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certgate import CertGate, Reason, Tenant
from certgate.devpki import CA
from certgate.stores import open_registry
from certgate.stores.async_caching import AsyncCachingRegistry
from certgate.stores.postgres import PostgresRegistry
from tests.conftest import PKI
from tests.pg_server import PgServer
from tests.store_helpers import leaf_facts, new_store, url_of
from tests.test_review_i10_rv7 import FreezingProxy, _through
from tests.test_tenant_contexts_store import (
    aborted,
    allowed,
    make_pki,
    server,
    tenant,
    wait_until,
)

CLOUDFLARE = {"trusted_proxies": ["10.0.0.0/8"], "header_sources": ["cloudflare"]}


@pytest.fixture
def proxy(pg_server: PgServer) -> Iterator[FreezingProxy]:
    made = FreezingProxy(pg_server.port)
    yield made
    made.close()


# -- finding 1: a silent network held an ASGI miss ~10 s past registry_timeout ------


def test_an_async_miss_on_a_silent_network_answers_at_registry_timeout(
    pg_dsn: str, proxy: FreezingProxy, pki: PKI
) -> None:
    """A miss awaited on the async pool when the network path goes silent
    (no RST, no FIN): the gate's deadline cancels the lookup, but psycopg
    catches the cancellation to cancel the query on the server (up to 5 s
    to connect for it) and then waits up to 5 s more for the query to end -
    so the request hung about registry_timeout + 10 s before its 503."""
    writer = PostgresRegistry(pg_dsn, create=True)
    writer.put(pki["globex"].tenant())
    writer.close()
    device = pki["globex"].client()

    async def run() -> tuple[Reason | None, float]:
        registry = open_registry(_through(pg_dsn, proxy.port), asynchronous=True)
        assert isinstance(registry, AsyncCachingRegistry)
        gate = CertGate(registry, registry_timeout=1.0, **CLOUDFLARE)  # type: ignore[arg-type]
        try:
            warm = await gate.adecide(leaf_facts("api.globex.test", device))
            assert warm.reason is None, warm
            proxy.frozen.set()
            started = time.monotonic()
            decision = await gate.adecide(leaf_facts("uncached.globex.test", device))
            return decision.reason, time.monotonic() - started
        finally:
            proxy.close()  # a dead path fails fast: closing does not wait out the freeze
            await registry.aclose()

    reason, took = asyncio.run(run())
    assert reason is Reason.TRUST_STORE_UNAVAILABLE
    assert took < 4.0, f"503 after {took:.1f} s (registry_timeout 1 s)"


# -- finding 2: with max_stale=None every made-up SNI blocked the loop during an outage


def test_an_outage_costs_the_loop_one_failed_lookup_with_max_stale_none(
    pg_private: PgServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``max_stale=None`` keeps serving cached tenants through an outage -
    and the cache never goes stale, so TenantContexts never saw "the store
    is down": each made-up SNI ran one lookup on the event loop's time
    against the stopped server (up to ``pool_timeout``, 2 s, each), and a
    client without a certificate could hold the loop - every connection of
    the worker - for as long as it kept sending names. And every cache hit
    between two failures re-armed the "logged once" warning: one log line
    per made-up name."""
    caplog.set_level(logging.WARNING, logger="certgate")
    pki = make_pki(tmp_path)
    dsn = pg_private.create_database()
    writer = PostgresRegistry(dsn, create=True)
    writer.put(tenant(pki, 0))
    writer.close()
    registry = open_registry(dsn, max_stale=None, poll_interval=0.2)
    gate = CertGate(registry)
    try:
        with server(pki, gate) as (port, contexts):
            registry.peek_tenant_for_host("t0.test")  # starts the poller
            assert wait_until(lambda: registry.stats().polls > 0)  # the first poll drops all
            assert allowed(pki, port, 0)
            pg_private.stop()
            assert wait_until(lambda: aborted(port, f"{_random_label()}.test"))
            lookups = contexts.lookups
            for _ in range(4):
                assert aborted(port, f"{_random_label()}.test")
                assert allowed(pki, port, 0), "cached tenants are still served (max_stale=None)"
            assert contexts.lookups == lookups, "while down, a miss does not wait for the store"
            logged = [r for r in caplog.records if "per-tenant handshake aborted" in r.message]
            assert len(logged) == 1, "one log line per outage, cache hits between or not"
            pg_private.start()
            polls = registry.stats().polls
            assert wait_until(lambda: registry.stats().polls > polls + 2, 30.0)
            assert allowed(pki, port, 0)  # hits only: no miss tells the contexts it is back
            pg_private.stop()  # a second outage is logged again
            assert wait_until(lambda: aborted(port, f"{_random_label()}.test"))
            logged = [r for r in caplog.records if "per-tenant handshake aborted" in r.message]
            assert len(logged) == 2, "the next outage is logged too"
            pg_private.start()
            assert wait_until(lambda: not aborted(port, f"{_random_label()}.test"), 30.0)
    finally:
        registry.close()
        registry.inner.close()


def _random_label() -> str:
    return "".join(random.choices(string.ascii_lowercase, k=12))


# -- finding 3: a closed first event loop made every later async miss a 503 ----------


def test_the_async_registry_follows_a_new_loop_once_its_first_is_closed(
    pg_dsn: str, pki: PKI
) -> None:
    """The async pool belongs to the loop of the first lookup. A start-up
    check run with ``asyncio.run`` (or a test, or a server restarted in the
    same process) bound it to a loop that then closed: every miss of the
    server's loop was a 503 for good, with a message about WSGI."""
    writer = PostgresRegistry(pg_dsn, create=True)
    writer.put(pki["globex"].tenant())
    writer.close()
    device = pki["globex"].client()
    registry = open_registry(pg_dsn, asynchronous=True)
    gate = CertGate(registry, **CLOUDFLARE)  # type: ignore[arg-type]

    async def miss(host: str) -> Reason | None:
        return (await gate.adecide(leaf_facts(host, device))).reason

    try:
        assert asyncio.run(miss("api.globex.test")) is None  # a start-up check
        assert asyncio.run(miss("nope.globex.test")) is Reason.UNKNOWN_TENANT  # the server
        registry.clear()
        assert asyncio.run(miss("api.globex.test")) is None
    finally:
        asyncio.run(registry.aclose())


# -- sound: cancelled misses neither poison the cache nor leak pool connections ------


def test_cancelled_misses_leave_the_cache_and_the_pool_sound(pg_dsn: str, pki: PKI) -> None:
    """Requests awaiting a miss cancelled at random points (client gone,
    deadline): afterwards the pool (2 connections) still serves every
    lookup, nothing a cancelled lookup read was remembered, and each tenant
    is answered with its own trust only."""
    writer = PostgresRegistry(pg_dsn, create=True)
    for name in ("acme", "globex", "initech"):
        writer.put(pki[name].tenant())
    writer.close()
    device = pki["globex"].client()

    async def run() -> None:
        registry = open_registry(f"{pg_dsn}?pool_max=2&pool_timeout=2", asynchronous=True)
        gate = CertGate(registry, **CLOUDFLARE)  # type: ignore[arg-type]
        answered = 0
        try:
            for round_ in range(5):
                tasks = [
                    asyncio.create_task(registry.tenant_for_host(f"n{round_}-{i}.globex.test"))
                    for i in range(20)
                ]
                await asyncio.sleep(0.001 * round_)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                answered += sum(1 for task in tasks if not task.cancelled())
            assert registry.stats().negative <= answered, "a cancelled lookup remembers nothing"
            for host, owner in (
                ("api.globex.test", "globex"),
                ("pay.acme.test", "acme"),
                ("initech.test", "initech"),
            ):
                decision = await asyncio.wait_for(gate.adecide(leaf_facts(host, device)), 5)
                assert decision.tenant_id == owner
                assert (decision.reason is None) == (owner == "globex"), host
        finally:
            await registry.aclose()

    asyncio.run(run())


# -- finding 4: made-up names under a wildcard made every change hold the cache lock --


def test_a_change_forgets_wildcard_found_hosts_without_a_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random names under a tenant's ``*.parent`` pattern are each a real
    tenant host: a client fills ``max_hosts`` of them (one cheap query
    each), and every later change of any tenant walked them all under the
    cache lock - ~100 ms at 40,000 names, during which every cache hit (the
    event loop's requests and handshakes) waited. They are now forgotten at
    once; and a name another tenant then claims exactly is never answered
    from before the change."""
    store = new_store(tmp_path)
    store.put(Tenant("wild", ("*.wild.test",), (CA.root("wild root").cert,)))
    registry = open_registry(url_of(store), poll_interval=0.05)
    try:
        registry.peek_tenant_for_host("start.test")  # the poller starts
        assert wait_until(lambda: registry.stats().polls > 0)
        names = [f"{_random_label()}.wild.test" for _ in range(2000)]
        for name in names:
            found = registry.tenant_for_host(name)
            assert found is not None
            assert found.id == "wild"
        forgotten = 0
        forget = registry._forget_host

        def counting(host: str) -> None:
            nonlocal forgotten
            forgotten += 1
            forget(host)

        monkeypatch.setattr(registry, "_forget_host", counting)
        invalidations = registry.stats().invalidations
        claimed = names[7]
        store.put(Tenant("exact", (claimed,), (CA.root("exact root").cert,)))
        assert wait_until(lambda: registry.stats().invalidations > invalidations)
        assert forgotten == 0, "a change walked the wildcard-found hosts"
        peeked = registry.peek_tenant_for_host(claimed)
        assert not isinstance(peeked, Tenant), "answered from before the change"
        found = registry.tenant_for_host(claimed)
        assert found is not None
        assert found.id == "exact"
        other = registry.tenant_for_host(names[8])
        assert other is not None
        assert other.id == "wild"
    finally:
        registry.close()
