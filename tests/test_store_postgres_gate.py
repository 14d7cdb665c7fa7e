"""The PostgreSQL registries behind a gate, against a real server: tenant
isolation (sync cache and async registry), a database outage (503
``trust_store_unavailable``, then recovery when the server is back), and a
change made by one process enforced by another (LISTEN/NOTIFY).
"""

from __future__ import annotations

import asyncio
import base64
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
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
from tests.store_helpers import leaf_facts
from tests.test_store_sqlite import ISOLATION_TENANTS, REQUEST_HOSTS, UNKNOWN

ROOT = Path(__file__).resolve().parents[1]
CLOUDFLARE = {"trusted_proxies": ["10.0.0.0/8"], "header_sources": ["cloudflare"]}
WAIT = 20.0
"""Seconds a test waits for an outage or a change to show (a failure means
"never", not "slow": the figures are measured in bench/bench_scale.py)."""


def wait_for(predicate: Callable[[], bool], seconds: float = WAIT) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


async def await_for(predicate: Callable[[], Awaitable[bool]], seconds: float = WAIT) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.02)
    return False


# -- isolation -------------------------------------------------------------------------


@dataclass
class Isolation:
    dsn: str
    devices: dict[str, IssuedCert]
    gate: CertGate


@pytest.fixture(scope="module")
def isolation(pg_server: PgServer) -> Iterator[Isolation]:
    dsn = pg_server.create_database()
    store = PostgresRegistry(dsn, create=True)
    devices = {}
    for tenant_id, hosts in ISOLATION_TENANTS.items():
        root = CA.root(f"{tenant_id} root")
        issuing = root.intermediate(f"{tenant_id} issuing")
        store.put(Tenant(tenant_id, hosts, (root.cert,), (issuing.cert,)))
        devices[tenant_id] = issuing.issue(f"device-of-{tenant_id}")
    store.close()
    registry = open_registry(dsn)
    yield Isolation(dsn, devices, CertGate(registry, **CLOUDFLARE))  # type: ignore[arg-type]
    registry.close()
    registry.inner.close()


CELLS = [
    (client, owner, host)
    for client in ISOLATION_TENANTS
    for owner, hosts in REQUEST_HOSTS.items()
    for host in hosts
]


def _expect(decision_reason: Reason | None, tenant_id: str | None, client: str, owner: str) -> str:
    """'' when the decision is right for ``client``'s device on ``owner``'s host."""
    if tenant_id != owner:
        return f"tenant {tenant_id!r}, expected {owner!r}"
    wanted = None if client == owner else Reason.UNTRUSTED_CHAIN
    return "" if decision_reason is wanted else f"reason {decision_reason}, expected {wanted}"


@pytest.mark.parametrize(("client", "owner", "host"), CELLS)
def test_isolation_matrix_sync(isolation: Isolation, client: str, owner: str, host: str) -> None:
    for _ in range(3):  # cold, then from the cache and the decision memo
        decision = isolation.gate.decide(leaf_facts(host, isolation.devices[client]))
        assert _expect(decision.reason, decision.tenant_id, client, owner) == ""
        assert (decision.identity is not None) == (client == owner)


@pytest.mark.parametrize("host", UNKNOWN)
def test_isolation_unknown_hosts_sync(isolation: Isolation, host: str) -> None:
    for device in isolation.devices.values():
        for _ in range(2):
            assert isolation.gate.decide(leaf_facts(host, device)).reason is Reason.UNKNOWN_TENANT


def test_isolation_matrix_async(isolation: Isolation) -> None:
    """Every cell of the matrix, and every unknown host, through the async
    registry (one event loop), twice each."""

    async def run() -> list[str]:
        registry = AsyncPostgresRegistry(isolation.dsn)
        gate = CertGate(registry, **CLOUDFLARE)  # type: ignore[arg-type]
        wrong = []
        try:
            for _ in range(2):
                for client, owner, host in CELLS:
                    decision = await gate.adecide(leaf_facts(host, isolation.devices[client]))
                    problem = _expect(decision.reason, decision.tenant_id, client, owner)
                    if problem:
                        wrong.append(f"{client} on {host}: {problem}")
                for host in UNKNOWN:
                    for device in isolation.devices.values():
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


def test_outage_gives_503_and_recovers_sync(outage_db: tuple[PgServer, str, IssuedCert]) -> None:
    """The server stops: within max_stale the cached tenant is no longer
    used and every request is a 503; the server starts again: allowed again,
    with no restart of the application."""
    server, dsn, device = outage_db
    registry = open_registry(dsn, poll_interval=0.05, max_stale=0.3)
    gate = CertGate(registry, **CLOUDFLARE)  # type: ignore[arg-type]

    def reason() -> Reason | None:
        return gate.decide(leaf_facts("pay.acme.test", device)).reason

    assert reason() is None
    assert reason() is None  # now cached (and remembered)
    server.stop()
    assert wait_for(lambda: reason() is Reason.TRUST_STORE_UNAVAILABLE)
    decision = gate.decide(leaf_facts("x.acme.test", device))  # never cached
    assert decision.reason is Reason.TRUST_STORE_UNAVAILABLE
    assert gate.refusal(Reason.TRUST_STORE_UNAVAILABLE).status == 503
    for _ in range(3):  # no remembered allow leaks through while it is down
        assert reason() is Reason.TRUST_STORE_UNAVAILABLE
    with pytest.raises(TrustStoreUnavailable, match="tenants"):
        registry.inner.tenant_for_host("pay.acme.test")
    server.start()
    assert wait_for(lambda: reason() is None)
    assert gate.decide(leaf_facts("x.acme.test", device)).reason is None
    registry.close()
    registry.inner.close()


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


def test_async_registry_under_wsgi_is_a_503_naming_the_fix(pg_dsn: str, pki: PKI) -> None:
    """WSGI runs a coroutine registry through async_to_sync, a new event loop
    per lookup: the first lookup binds the registry to a loop that then
    closes; every later one is refused (503) with the fix in the detail -
    never a new pool per request."""
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

CHILD = textwrap.dedent(
    """
    import asyncio, base64, sys, time
    from certgate import CertGate
    from certgate.devpki import IssuedCert
    from certgate.stores import open_registry
    from certgate.stores.postgres import AsyncPostgresRegistry
    from tests.store_helpers import leaf_facts

    mode, dsn, host, der = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    leaf = type("Leaf", (), {"der": base64.b64decode(der)})()
    options = dict(trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])

    def report(last, decision):
        now = str(decision.reason.value if decision.reason else "allowed")
        if now != last:
            print(f"{time.time():.6f} {now}", flush=True)
        return now

    def sync():
        gate = CertGate(open_registry(dsn), **options)
        last = None
        while True:
            last = report(last, gate.decide(leaf_facts(host, leaf)))
            time.sleep(0.002)

    async def run_async():
        gate = CertGate(AsyncPostgresRegistry(dsn), **options)
        last = None
        while True:
            last = report(last, await gate.adecide(leaf_facts(host, leaf)))
            await asyncio.sleep(0.002)

    sync() if mode == "sync" else asyncio.run(run_async())
    """
)


class Child:
    """A process deciding one device's requests in a loop, printing each
    change of outcome with its time."""

    def __init__(self, mode: str, dsn: str, host: str, device: IssuedCert, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        der = base64.b64encode(device.der).decode()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, mode, dsn, host, der],
            stdout=subprocess.PIPE,
            stderr=log.open("w"),  # its refusals are logged: a pipe nobody reads would fill
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def next(self) -> tuple[float, str]:
        try:
            line = self.lines.get(timeout=WAIT)
        except queue.Empty:
            self.close()
            err = self.log.read_text()[-2000:]
            raise AssertionError(f"the child reported nothing in {WAIT} s: {err}") from None
        stamp, outcome = line.split(" ", 1)
        return float(stamp), outcome

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_change_in_one_process_is_enforced_by_another(
    pg_dsn: str, pki: PKI, mode: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Another process decides a device's requests in a loop (through the
    cache and the decision memo, or the async registry); this one replaces
    the tenant's root, removes the tenant and puts it back: each change is
    enforced there - the old trust is never used again."""
    store = PostgresRegistry(pg_dsn, create=True)
    acme = pki["acme"]
    good = Tenant("acme", acme.hosts, (acme.roots[0].cert,), (acme.issuer.cert,))
    other = CA.root("Acme Root CA 2027", organization="Acme")
    store.put(good)
    child = Child(mode, pg_dsn, "pay.acme.test", acme.client(), tmp_path / "child.log")
    try:
        assert child.next()[1] == "allowed"
        latencies = []
        changes: list[tuple[Callable[[], object], str]] = [
            (lambda: store.put(Tenant("acme", acme.hosts, (other.cert,))), "untrusted_chain"),
            (lambda: store.remove("acme"), "unknown_tenant"),
            (lambda: store.put(good), "allowed"),
        ]
        for change, expected in changes:
            time.sleep(0.3)  # the child is warm: cached tenant, remembered decision
            started = time.time()
            change()
            stamp, outcome = child.next()
            assert outcome == expected
            latencies.append(stamp - started)
    finally:
        child.close()
        store.close()
    with capsys.disabled():
        print(f"\n[{mode}] change -> enforced in another process: ", end="")
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
    server process waiting out authentication_timeout, 60 s, while the
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
