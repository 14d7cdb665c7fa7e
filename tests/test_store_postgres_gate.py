"""The async PostgreSQL registry behind a gate, against a real server:
tenant isolation, a database outage (503 ``trust_store_unavailable``, then
recovery when the server is back), one event loop only, and a change made
by one process enforced by another (LISTEN/NOTIFY); pg_dump and a live
pg_restore.

The sync registry's isolation, outage and propagation run against both
backends in tests/test_store_backends.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from certgate import CertGate, Reason, Tenant
from certgate.devpki import CA, IssuedCert
from certgate.errors import TrustStoreUnavailable
from certgate.stores import open_registry
from certgate.stores.caching import CachingRegistry
from certgate.stores.postgres import AsyncPostgresRegistry, PostgresRegistry
from tests.conftest import PKI
from tests.pg_server import PgServer
from tests.store_helpers import (
    CELLS,
    CLOUDFLARE,
    UNKNOWN,
    WAIT,
    Worker,
    isolation_store,
    leaf_facts,
    wait_for,
    watch_changes,
)


async def await_for(predicate: Callable[[], Awaitable[bool]], seconds: float = WAIT) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.02)
    return False


# -- isolation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def isolation(pg_server: PgServer) -> tuple[str, dict[str, IssuedCert]]:
    """The isolation tenants in a database of their own; a device of each."""
    dsn = pg_server.create_database()
    return dsn, isolation_store(dsn)


def _expect(decision_reason: Reason | None, tenant_id: str | None, client: str, owner: str) -> str:
    """'' when the decision is right for ``client``'s device on ``owner``'s host."""
    if tenant_id != owner:
        return f"tenant {tenant_id!r}, expected {owner!r}"
    wanted = None if client == owner else Reason.UNTRUSTED_CHAIN
    return "" if decision_reason is wanted else f"reason {decision_reason}, expected {wanted}"


def test_isolation_matrix_async(isolation: tuple[str, dict[str, IssuedCert]]) -> None:
    """Every cell of the matrix, and every unknown host, through the async
    registry (one event loop), twice each."""

    dsn, devices = isolation

    async def run() -> list[str]:
        registry = AsyncPostgresRegistry(dsn)
        gate = CertGate(registry, **CLOUDFLARE)  # type: ignore[arg-type]
        wrong = []
        try:
            for _ in range(2):
                for client, owner, host in CELLS:
                    decision = await gate.adecide(leaf_facts(host, devices[client]))
                    problem = _expect(decision.reason, decision.tenant_id, client, owner)
                    if problem:
                        wrong.append(f"{client} on {host}: {problem}")
                for host in UNKNOWN:
                    for device in devices.values():
                        decision = await gate.adecide(leaf_facts(host, device))
                        if decision.reason is not Reason.UNKNOWN_TENANT:
                            wrong.append(f"{host}: {decision.reason}")
        finally:
            await registry.aclose()
        return wrong

    assert asyncio.run(run()) == []


# -- outages ------------------------------------------------------------------------------


@pytest.fixture
def outage_db(pg_private: PgServer, pki: PKI) -> tuple[PgServer, str, IssuedCert]:
    dsn = pg_private.create_database("tenants")
    store = PostgresRegistry(dsn, create=True)
    acme = pki["acme"]
    store.put(Tenant("acme", acme.hosts, (acme.roots[0].cert,), (acme.issuer.cert,)))
    store.close()
    return pg_private, dsn + "?pool_timeout=0.2&heartbeat=0.1", acme.client()


def test_outage_gives_503_and_recovers_async(outage_db: tuple[PgServer, str, IssuedCert]) -> None:
    server, dsn, device = outage_db

    async def run() -> None:
        registry = AsyncPostgresRegistry(dsn)
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
            await asyncio.to_thread(server.stop)
            assert await await_for(refused)
            assert await reason("x.acme.test") is Reason.TRUST_STORE_UNAVAILABLE
            assert registry.change_token is not registry.change_token  # listener down
            await asyncio.to_thread(server.start)
            assert await await_for(allowed)
            assert await await_for(lambda: _settled(registry))
        finally:
            await registry.aclose()

    asyncio.run(run())


async def _settled(registry: AsyncPostgresRegistry) -> bool:
    return registry.change_token is registry.change_token


def test_async_registry_is_bound_to_one_running_loop(pg_dsn: str) -> None:
    PostgresRegistry(pg_dsn, create=True).close()
    registry = AsyncPostgresRegistry(pg_dsn)
    started = threading.Event()
    release = threading.Event()

    async def hold() -> None:
        assert await registry.tenant_for_host("a.test") is None
        started.set()
        await asyncio.to_thread(release.wait)
        await registry.aclose()

    holder = threading.Thread(target=lambda: asyncio.run(hold()))
    holder.start()
    assert started.wait(WAIT)
    try:
        with pytest.raises(TrustStoreUnavailable, match="serves the event loop of its first"):
            asyncio.run(registry.tenant_for_host("a.test"))
    finally:
        release.set()
        holder.join()


def test_async_registry_under_wsgi_is_a_503_naming_the_fix(pg_server: PgServer, pki: PKI) -> None:
    """WSGI runs a coroutine registry through async_to_sync, a new event loop
    per lookup: the first lookup binds the registry to a loop that then
    closes; every later one is refused (503) with the fix in the detail -
    never a new pool per request. (A database of its own, not dropped: the
    pool's connection attempt cut off with the first loop leaves a server
    process waiting out authentication_timeout, and a DROP DATABASE waits
    for it: tests/pg_server.py sets 5 s, the default is 60 s.)"""
    pg_dsn = pg_server.create_database()
    store = PostgresRegistry(pg_dsn, create=True)
    acme = pki["acme"]
    store.put(Tenant("acme", acme.hosts, (acme.roots[0].cert,), (acme.issuer.cert,)))
    registry = AsyncPostgresRegistry(pg_dsn)
    gate = CertGate(registry, **CLOUDFLARE)  # type: ignore[arg-type]
    device = acme.client()
    gate.decide(leaf_facts("pay.acme.test", device))
    decision = gate.decide(leaf_facts("pay.acme.test", device))
    assert decision.reason is Reason.TRUST_STORE_UNAVAILABLE
    assert "open_registry" in decision.detail
    store.close()


# -- propagation across processes ------------------------------------------------------


def test_a_change_in_one_process_is_enforced_by_the_async_registry_of_another(
    pg_dsn: str, pki: PKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another process decides a device's requests in a loop through the
    async registry; this one replaces the tenant's root, removes the tenant
    and puts it back: each change is enforced there - the old trust is
    never used again. (The sync registry: tests/test_store_backends.py.)"""
    store = PostgresRegistry(pg_dsn, create=True)
    acme = pki["acme"]
    good = Tenant("acme", acme.hosts, (acme.roots[0].cert,), (acme.issuer.cert,))
    other = CA.root("Acme Root CA 2027", organization="Acme")
    store.put(good)
    leaf = tmp_path / "leaf.der"
    leaf.write_bytes(acme.client().der)
    worker = Worker("awatch", pg_dsn, "pay.acme.test", str(leaf), "3")
    try:
        latencies = watch_changes(
            worker,
            [
                (lambda: store.put(Tenant("acme", acme.hosts, (other.cert,))),
                 Reason.UNTRUSTED_CHAIN.value),
                (lambda: store.remove("acme"), Reason.UNKNOWN_TENANT.value),
                (lambda: store.put(good), "None"),
            ],
        )  # fmt: skip
        assert worker.proc.wait(30) == 0
    finally:
        worker.stop()
        store.close()
    with capsys.disabled():
        print("\n[async] change -> enforced in another process: ", end="")
        print(", ".join(f"{s * 1000:.0f} ms" for s in latencies))


def test_pg_dump_and_a_live_pg_restore(pg_server: PgServer, pg_dsn: str, pki: PKI) -> None:
    """The README's backup and restore: pg_dump while gates run, then
    pg_restore --clean into the live database: a running cache notices the
    change log went back and drops what it held (a tenant added after the
    dump is unknown again)."""
    store = PostgresRegistry(pg_dsn, create=True)
    store.put(pki["acme"].tenant())
    dump = pg_server.root / "certgate.dump"
    env = {**os.environ, "PGPASSWORD": pg_server.password}
    plain = pg_dsn.replace(f":{pg_server.password}@", "@")
    subprocess.run(
        [str(pg_server.bindir / "pg_dump"), "--format=custom", "--file", str(dump), plain],
        check=True,
        env=env,
        capture_output=True,
    )
    store.put(pki["globex"].tenant())
    cache = open_registry(pg_dsn, poll_interval=0.05)
    assert cache.tenant_for_host("api.globex.test") is not None
    restored = subprocess.run(
        [
            str(pg_server.bindir / "pg_restore"),
            "--clean",
            "--if-exists",
            "--single-transaction",
            "--dbname",
            plain,
            str(dump),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert restored.returncode == 0, restored.stderr
    assert wait_for(lambda: _unknown(cache, "api.globex.test"))
    assert cache.tenant_for_host("pay.acme.test") is not None
    cache.close()
    cache.inner.close()
    store.close()


def _unknown(cache: CachingRegistry, host: str) -> bool:
    try:
        return cache.tenant_for_host(host) is None
    except TrustStoreUnavailable:
        return False


def test_an_event_loop_with_the_async_registry_shuts_down(pg_server: PgServer) -> None:
    """asyncio.run cancels every task when its coroutine returns, the pool's
    included, possibly in the middle of a connection attempt (which the pool
    swallows): the registry closes its pool then, so shutdown never hangs.
    Five loops, each ending right after its first lookup. (A database of
    its own, not dropped: a connection attempt cancelled half-way leaves a
    server process waiting out authentication_timeout (5 s here), while the
    captured log of the test holds the attempt's socket.)"""
    pg_dsn = pg_server.create_database()
    PostgresRegistry(pg_dsn, create=True).close()

    def one() -> None:
        registry = AsyncPostgresRegistry(pg_dsn, pool_min=2)
        assert asyncio.run(registry.tenant_for_host("a.test")) is None

    for _ in range(5):
        runner = threading.Thread(target=one, daemon=True)
        runner.start()
        runner.join(WAIT)
        assert not runner.is_alive(), "the event loop did not shut down"
