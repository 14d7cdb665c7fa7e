"""Adversarial review of per-tenant handshakes over a store and the async
cache (issue 10, reviewer rv9): each finding is a test against real parts
(a real PostgreSQL, real SQLite stores, real TLS) that failed before its fix."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from certgate import CertGate, Reason
from certgate.stores import open_registry
from certgate.stores.async_caching import AsyncCachingRegistry
from certgate.stores.postgres import PostgresRegistry
from tests.conftest import PKI
from tests.pg_server import PgServer
from tests.store_helpers import leaf_facts
from tests.test_review_i10_rv7 import FreezingProxy, _through

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
