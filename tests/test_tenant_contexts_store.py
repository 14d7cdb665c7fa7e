"""Per-tenant handshakes over a SQLite tenant store, through a real uvicorn
server with certgate's adapter: cache hits answered inline, misses bounded,
tenants added and removed while serving, made-up SNI names, outages and a
hung store."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import ssl
import string
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from certgate import CertGate, Tenant
from certgate.asgi import CertGateMiddleware
from certgate.devpki import CA
from certgate.servers.tenant_contexts import TenantContexts
from certgate.stores import open_registry
from certgate.stores.caching import CachingRegistry
from certgate.stores.sqlite import SqliteRegistry
from tests.store_helpers import new_store, url_of
from tests.test_servers_sni import uvicorn_in_thread

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HANDSHAKE_FAILED = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)
PROPAGATION_WAIT = 10.0
"""Seconds a test waits for a change to reach the server (the promise is
2 s - measured in bench/, not asserted here: a loaded machine is slower)."""


@dataclass
class PKI:
    directory: Path
    roots: list[CA]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("store-handshakes"))


def make_pki(directory: Path) -> PKI:
    """Four tenants t0..t3 (host tN.test, own root), a device per tenant,
    and a server certificate for their hosts, in ``directory``."""
    roots = [CA.root(f"Store Tenant {i} Root", organization=f"S{i}") for i in range(4)]
    for i, root in enumerate(roots):
        root.issue(f"device-{i}").write_files(directory, f"t{i}")
    server_ca = CA.root("store handshakes server CA")
    server_ca.server([f"t{i}.test" for i in range(4)]).write_files(directory, "server")
    (directory / "server-ca.pem").write_bytes(server_ca.cert_pem)
    return PKI(directory, roots)


def tenant(pki: PKI, i: int) -> Tenant:
    return Tenant(id=f"t{i}", hosts=(f"t{i}.test",), roots=(pki.roots[i].cert,))


def get(pki: PKI, port: int, identity: str, sni: str) -> httpx.Response:
    """One request with ``identity``'s certificate, SNI = Host = ``sni``."""
    context = ssl.create_default_context(cafile=str(pki.directory / "server-ca.pem"))
    context.load_cert_chain(
        pki.directory / f"{identity}-chain.pem", pki.directory / f"{identity}.key"
    )
    with httpx.Client(verify=context, timeout=10) as client:
        return client.get(
            f"https://127.0.0.1:{port}/", headers={"Host": sni}, extensions={"sni_hostname": sni}
        )


def handshake(port: int, sni: str) -> str | None:
    """A bare handshake (no certificate, no HTTP) sending ``sni``: ``None``
    when it completes, else the alert's name as the ssl module reports it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=sni):
                return None
        except ssl.SSLError as exc:
            return str(exc.reason)


def aborted(port: int, sni: str) -> bool:
    """Whether a handshake without a certificate fails: with the default
    ``unknown_sni`` ("no_anchors") only a failed lookup aborts it (the
    asyncio transport does not always deliver the alert itself)."""
    return handshake(port, sni) is not None


def wait_until(predicate: Callable[[], bool], seconds: float = PROPAGATION_WAIT) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


async def tenant_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """Answers the tenant certgate allowed the request for."""
    decision = scope.get("certgate.decision")
    body = json.dumps({"tenant_id": getattr(decision, "tenant_id", None)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def server(
    pki: PKI, gate: CertGate, unknown_sni: str = "no_anchors"
) -> Iterator[tuple[int, TenantContexts]]:
    app = CertGateMiddleware(tenant_app, gate)
    with uvicorn_in_thread(
        app,
        ssl_certfile=str(pki.directory / "server.pem"),
        ssl_keyfile=str(pki.directory / "server.key"),
        per_tenant=gate,
        per_tenant_unknown_sni=unknown_sni,
    ) as running:
        contexts = running.config.ssl_context_factory.contexts
        assert isinstance(contexts, TenantContexts)
        yield running.config.port, contexts


def store_gate(store: SqliteRegistry, **cache: Any) -> tuple[CachingRegistry, CertGate]:
    cache.setdefault("poll_interval", 0.05)
    registry = open_registry(url_of(store), **cache)
    return registry, CertGate(registry)


def allowed(pki: PKI, port: int, i: int) -> bool:
    try:
        response = get(pki, port, f"t{i}", f"t{i}.test")
    except HANDSHAKE_FAILED:
        return False
    return response.status_code == 200 and response.json()["tenant_id"] == f"t{i}"


def refused_in_handshake(pki: PKI, port: int, i: int) -> bool:
    try:
        get(pki, port, f"t{i}", f"t{i}.test")
    except HANDSHAKE_FAILED:
        return True
    return False


def test_tenant_added_then_removed_while_serving(tmp_path: Path, pki: PKI) -> None:
    store = new_store(tmp_path)
    store.put(tenant(pki, 0))
    registry, gate = store_gate(store)
    with server(pki, gate) as (port, contexts):
        assert allowed(pki, port, 0)
        lookups = contexts.lookups
        assert allowed(pki, port, 0)
        assert contexts.lookups == lookups, "a cached tenant is answered without a lookup"
        # t1 is not in the store: its device's certificate meets no anchors
        assert refused_in_handshake(pki, port, 1)
        assert registry.stats().negative >= 1
        store.put(tenant(pki, 1))
        assert wait_until(lambda: allowed(pki, port, 1))
        store.remove("t0")
        assert wait_until(lambda: refused_in_handshake(pki, port, 0))
        assert allowed(pki, port, 1)
        # devices never cross tenants, through the store either
        with pytest.raises(HANDSHAKE_FAILED):
            get(pki, port, "t1", "t0.test")
        assert contexts._hosts == {}, "with a cached registry the handshake keeps no host memory"


def test_made_up_sni_names_are_refused_and_memory_stays_bounded(tmp_path: Path, pki: PKI) -> None:
    store = new_store(tmp_path)
    store.put(tenant(pki, 0))
    registry, gate = store_gate(store, max_negative=20, negative_ttl=60.0)
    rng = random.Random(10)
    names = ["".join(rng.choices(string.ascii_lowercase, k=20)) + ".evil.test" for _ in range(50)]
    with server(pki, gate, unknown_sni="refuse") as (port, contexts):
        assert allowed(pki, port, 0)
        for name in names:
            assert handshake(port, name) is not None
        stats = registry.stats()
        assert stats.negative == 20  # the bound, not the 50 names
        assert stats.tenants == 1
        assert contexts._hosts == {}
        # the 20 names most recently refused are answered from the negative cache
        lookups, negative_hits = contexts.lookups, stats.negative_hits
        for name in names[-20:]:
            assert handshake(port, name) is not None
        if registry.stats().invalidations == stats.invalidations:  # no drop meanwhile
            assert contexts.lookups == lookups
            assert registry.stats().negative_hits == negative_hits + 20
        # and the cached tenant still is
        assert allowed(pki, port, 0)
        assert len(contexts) == 1


def test_store_outage_aborts_handshakes_then_recovers(
    tmp_path: Path, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    store = new_store(tmp_path)
    store.put(tenant(pki, 0))
    registry, gate = store_gate(store, max_stale=0.3)
    backup = tmp_path / "backup.db"
    with server(pki, gate) as (port, contexts):
        assert allowed(pki, port, 0)
        assert not aborted(port, "t0.test")
        assert not aborted(port, "unknown.test")
        store.backup(backup)
        store.close()
        registry.inner.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{store.path}{suffix}").unlink(missing_ok=True)
        caplog.set_level(logging.WARNING, logger="certgate")
        assert wait_until(lambda: aborted(port, "t0.test"))
        lookups = contexts.lookups
        for name in ("t0.test", "t1.test", "made-up.test", "t0.test"):
            assert aborted(port, name)
        assert contexts.lookups == lookups, "while down, a miss does not wait for the store"
        logged = [r for r in caplog.records if "per-tenant handshake aborted" in r.message]
        assert len(logged) == 1, "one log line per outage"
        os.replace(backup, store.path)
        assert wait_until(lambda: allowed(pki, port, 0))


class HungRegistry:
    """A blocking registry whose lookups hang until ``release`` is set."""

    def __init__(self, tenants: list[Tenant]) -> None:
        self.tenants = {h: t for t in tenants for h in t.hosts}
        self.release = threading.Event()
        self.calls = 0

    def tenant_for_host(self, host: str) -> Tenant | None:
        self.calls += 1
        self.release.wait(30)
        return self.tenants.get(host)

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        self.release.wait(30)
        return next((t for t in self.tenants.values() if t.id == tenant_id), None)


def test_hung_store_blocks_one_handshake_for_the_timeout_then_none(pki: PKI) -> None:
    registry = HungRegistry([tenant(pki, 0)])
    gate = CertGate(registry, registry_timeout=0.3)
    try:
        with server(pki, gate) as (port, contexts):
            assert aborted(port, "t0.test")
            assert aborted(port, "t0.test")
            assert aborted(port, "t1.test")
            # only the first waited: the others saw its lookup still stuck
            assert contexts.lookups == 1
            assert registry.calls == 1
            registry.release.set()
            assert wait_until(lambda: allowed(pki, port, 0))
    finally:
        registry.release.set()
