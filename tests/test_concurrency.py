"""Many threads and coroutines at once: no cross-tenant mix-ups, no torn state.

The WSGI path runs under threaded servers and the ASGI path interleaves
coroutines; the shared state (verification cache, registry index) must give
every request the answer it would get alone.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import Encoding

from certgate import CertGate, InMemoryRegistry, Reason, RequestFacts, Tenant
from certgate.sources.asgi_tls import from_scope
from tests.conftest import PKI

Case = tuple[RequestFacts, str | None]  # facts, expected tenant (None: untrusted_chain)


def _cases(pki: PKI) -> list[Case]:
    cases: list[Case] = []
    for owner in ("acme", "globex", "initech"):
        for n in range(6):
            client = pki[owner].client(f"{owner}-{n}")
            pems = [client.cert_pem.decode()] + [
                c.public_bytes(Encoding.PEM).decode() for c in client.issuers
            ]
            presented = from_scope({"extensions": {"tls": {"client_cert_chain": pems}}})
            for target in ("acme", "globex", "initech"):
                facts = RequestFacts(
                    host=pki[target].host,
                    path="/",
                    peer="192.0.2.10",
                    headers={},
                    transport=presented,
                )
                cases.append((facts, owner if owner == target else None))
    return cases


def _check(decision_reason: Reason | None, tenant: str | None, expected: str | None) -> bool:
    if expected is None:
        return decision_reason is Reason.UNTRUSTED_CHAIN
    return decision_reason is None and tenant == expected


def test_threads_share_one_gate_without_mixups(pki: PKI) -> None:
    registry = InMemoryRegistry(t.tenant() for t in pki.tenants.values())
    gate = CertGate(registry, cache_size=7)  # tiny: constant eviction under contention
    cases = _cases(pki)
    stop = threading.Event()

    def writer() -> None:  # re-publishes tenants (same trust) while readers run
        tenants = [t.tenant() for t in pki.tenants.values()]
        while not stop.is_set():
            for tenant in tenants:
                registry.put(tenant)
            time.sleep(0.0005)

    def reader(seed: int) -> int:
        rng = random.Random(seed)
        wrong = 0
        for _ in range(250):
            facts, expected = rng.choice(cases)
            decision = gate.decide(facts)
            wrong += not _check(decision.reason, decision.tenant_id, expected)
        return wrong

    background = threading.Thread(target=writer)
    background.start()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            wrong = sum(pool.map(reader, range(8)))
    finally:
        stop.set()
        background.join()
    assert wrong == 0
    assert gate.cache.hits > 0
    assert len(gate.cache) <= 7


def test_rotation_under_load_never_serves_stale_trust(pki: PKI) -> None:
    """While one thread swaps globex's root for an unrelated CA's root and
    back, readers keep deciding on a globex device: every allow must have been
    verified against the genuine root (never a cached allow served while the
    impostor root was in force), and both outcomes must actually occur."""
    genuine = pki["globex"].tenant()
    swapped = Tenant("globex", genuine.hosts, (pki.rogue.cert,))
    registry = InMemoryRegistry([genuine])
    gate = CertGate(registry)
    device = pki["globex"].client("rotating")
    presented = from_scope(
        {"extensions": {"tls": {"client_cert_chain": [device.cert_pem.decode()]}}}
    )
    facts = RequestFacts(
        host="api.globex.test", path="/", peer="192.0.2.1", headers={}, transport=presented
    )
    roots_used: list[bytes] = []
    refusals: list[Reason] = []
    lock = threading.Lock()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            decision = gate.decide(facts)
            with lock:
                if decision.identity is not None:
                    roots_used.append(decision.identity.chain[-1].fingerprint(SHA256()))
                elif decision.reason is not None:
                    refusals.append(decision.reason)

    logging.getLogger("certgate").disabled = True
    threads = [threading.Thread(target=reader) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        # At least 0.5 s, and on until both outcomes were seen (5 s at most,
        # so a loaded machine cannot make the test vacuous or flaky).
        start = time.monotonic()
        while time.monotonic() - start < 5:
            registry.put(swapped)
            time.sleep(0.0005)
            registry.put(genuine)
            time.sleep(0.0005)
            if time.monotonic() - start > 0.5:
                with lock:
                    if roots_used and refusals:
                        break
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        logging.getLogger("certgate").disabled = False
    genuine_root = genuine.roots[0].fingerprint(SHA256())
    assert roots_used, "no request was allowed"
    assert set(roots_used) == {genuine_root}
    assert refusals, "the impostor root was never in force during a decision"
    assert set(refusals) == {Reason.UNTRUSTED_CHAIN}


def test_coroutines_with_a_blocking_registry(pki: PKI) -> None:
    calls: list[str] = []

    class SlowRegistry:
        def __init__(self) -> None:
            self.inner = pki.registry()

        def tenant_for_host(self, host: str) -> Tenant | None:
            calls.append(threading.current_thread().name)
            return self.inner.tenant_for_host(host)

        def tenant_by_id(self, tenant_id: str) -> Tenant | None:
            return self.inner.tenant_by_id(tenant_id)

    gate = CertGate(SlowRegistry())
    cases = _cases(pki)

    async def run_all() -> list[bool]:
        loop_thread = threading.current_thread().name
        results = await asyncio.gather(*(gate.adecide(facts) for facts, _ in cases))
        assert all(name != loop_thread for name in calls)
        return [
            _check(d.reason, d.tenant_id, exp) for d, (_, exp) in zip(results, cases, strict=True)
        ]

    assert all(asyncio.run(run_all()))
    assert len(calls) == len(cases)
