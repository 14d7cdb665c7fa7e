"""The success cache's admission and eviction policy (scan resistance), its
statistics, thread safety, and what a cached identity keeps in memory."""

from __future__ import annotations

import threading
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certgate import CertGate, InMemoryRegistry, RequestFacts, Tenant
from certgate.cache import SCAN_SAMPLE, ValidationCache
from certgate.devpki import CA
from certgate.sources.asgi_tls import from_scope
from tests.conftest import PKI

GateFactory = Callable[..., CertGate]
FAR = 1e12  # an expiry far in the future


def key(n: int) -> bytes:
    return b"key-%08d" % n


def warm(cache: ValidationCache[int], keys: range) -> None:
    """Insert and use each key once (it is then protected)."""
    for n in keys:
        cache.put(key(n), n, FAR, 0.0)
        assert cache.get(key(n), 1.0) == n


def test_a_scan_does_not_flush_the_hot_set() -> None:
    cache: ValidationCache[int] = ValidationCache(100)
    hot = range(50)
    warm(cache, hot)
    for n in range(1_000, 11_000):  # a scan: 100x the cache, each key once
        assert cache.get(key(n), 1.0) is None
        cache.put(key(n), n, FAR, 1.0)
        assert len(cache) <= 100
    assert [cache.get(key(n), 2.0) for n in hot] == list(hot)


def test_one_hit_wonders_do_not_evict_hot_entries() -> None:
    cache: ValidationCache[int] = ValidationCache(10)
    warm(cache, range(8))  # the protected segment's share (80 %)
    for n in range(100, 130):  # one-hit wonders, interleaved with the hot set
        cache.put(key(n), n, FAR, 1.0)
        assert cache.get(key(n % 8), 1.0) == n % 8
    assert all(cache.get(key(n), 1.0) == n for n in range(8))
    assert cache.get(key(100), 1.0) is None  # evicted from probation


def test_second_use_promotes_and_the_protected_segment_is_bounded() -> None:
    cache: ValidationCache[int] = ValidationCache(10)
    warm(cache, range(20))  # more than the protected share
    stats = cache.stats()
    assert stats.protected == 8
    assert stats.entries == 10
    assert stats.promotions == 20
    assert len(cache) == 10


def test_under_a_scan_new_keys_are_sampled_yet_a_new_working_set_gets_in() -> None:
    cache: ValidationCache[int] = ValidationCache(100)
    for n in range(10_000):  # a long scan
        if cache.admits(key(n)):
            cache.put(key(n), n, FAR, 1.0)
    stats = cache.stats()
    assert stats.declined > 0  # most scan keys were not even inserted
    assert stats.admissions < 10_000 // 2
    # a new working set presented repeatedly still gets cached
    for _ in range(4 * SCAN_SAMPLE):
        for n in range(50_000, 50_010):
            if cache.get(key(n), 1.0) is None and cache.admits(key(n)):
                cache.put(key(n), n, FAR, 1.0)
    assert [cache.get(key(n), 1.0) for n in range(50_000, 50_010)] == list(range(50_000, 50_010))


def test_stats_count_every_outcome() -> None:
    cache: ValidationCache[int] = ValidationCache(4)
    assert cache.get(b"a", 0.0) is None
    cache.put(b"a", 1, 100.0, 0.0)
    assert cache.get(b"a", 1.0) == 1  # hit + promotion
    assert cache.get(b"a", 2.0) == 1  # protected hit
    for n in range(6):
        cache.put(key(n), n, 100.0, 0.0)
    assert cache.get(b"a", 100.0) is None  # expired: a miss, and dropped
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (2, 2)
    assert stats.admissions == 7
    assert stats.promotions == 1
    assert stats.evictions == 3  # 7 admitted, 4 fit
    assert stats.expirations == 1
    assert stats.entries == len(cache) == 3
    assert stats.hit_rate == 0.5


def test_expired_probation_entry_is_neither_returned_nor_promoted() -> None:
    cache: ValidationCache[int] = ValidationCache(10)
    cache.put(b"a", 1, 10.0, 0.0)
    assert cache.get(b"a", 10.0) is None
    assert len(cache) == 0
    assert cache.stats().promotions == 0


def test_gate_exposes_cache_stats(pki: PKI, make_gate: GateFactory) -> None:
    from tests.test_cache import ACME, tls_facts

    gate = make_gate()
    facts = tls_facts(ACME, pki["acme"].client())
    gate.decide(facts)
    gate.decide(facts)
    stats = gate.cache.stats()
    assert (stats.hits, stats.misses, stats.admissions, stats.promotions) == (1, 1, 1, 1)
    assert (gate.cache.hits, gate.cache.misses) == (1, 1)


def test_threads_share_the_cache_safely() -> None:
    cache: ValidationCache[int] = ValidationCache(64)
    errors: list[BaseException] = []
    gets = [0]

    def worker(offset: int) -> None:
        try:
            for i in range(4_000):
                n = (i * 7 + offset) % 200  # overlapping keys, some hot, some not
                value = cache.get(key(n), 1.0)
                gets[0] += 1
                if value is None:
                    cache.put(key(n), n, FAR, 1.0)
                elif value != n:
                    raise AssertionError(f"key {n} returned {value}")
                assert len(cache) <= 64
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = cache.stats()
    assert len(cache) <= 64
    assert stats.entries == len(cache)
    assert stats.hits > 0
    assert stats.protected <= 64 * 80 // 100


# -- what a cached identity keeps -------------------------------------------


def _tls_facts(host: str, ders: list[bytes]) -> RequestFacts:
    pems = [
        x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM).decode()
        for d in ders
    ]
    presented = from_scope({"extensions": {"tls": {"client_cert_chain": pems}}})
    return RequestFacts(host=host, path="/", peer="192.0.2.1", headers={}, transport=presented)


def test_cached_identities_share_the_ca_objects() -> None:
    root = CA.root("sharing root", key_type="ec")
    inter = root.intermediate("sharing intermediate", key_type="ec")
    configured = Tenant("conf", ("conf.test",), (root.cert,), (inter.cert,), shared_anchors=True)
    sent = Tenant("sent", ("sent.test",), (root.cert,), shared_anchors=True)
    gate = CertGate(InMemoryRegistry([configured, sent]))
    inter_der = inter.cert.public_bytes(serialization.Encoding.DER)
    leaves = [inter.issue(f"device-{n}", key_type="ec").der for n in range(2)]

    # tenant-configured intermediate: the chain holds the tenant's own objects
    a = gate.decide(_tls_facts("conf.test", [leaves[0]])).identity
    assert a is not None
    assert a.issuers[0] is configured.intermediates[0]
    assert a.issuers[-1] is configured.roots[0]
    # client-sent intermediate: two identities share one parsed copy
    b = gate.decide(_tls_facts("sent.test", [leaves[0], inter_der])).identity
    c = gate.decide(_tls_facts("sent.test", [leaves[1], inter_der])).identity
    assert b is not None
    assert c is not None
    assert b.chain[1] is c.chain[1]
    assert b.chain[1] == inter.cert
    assert b.chain[-1] is sent.roots[0]


def test_cached_identity_keeps_der_not_the_parsed_leaf(pki: PKI, make_gate: GateFactory) -> None:
    from tests.test_cache import ACME, tls_facts

    client = pki["acme"].client()
    gate = make_gate()
    identity = gate.decide(tls_facts(ACME, client)).identity
    assert identity is not None
    assert "certificate" not in vars(identity)  # parsed on first access only
    assert (
        identity.common_name == client.cert.subject.rfc4514_string().split("=", 1)[1].split(",")[0]
    )
    assert "certificate" not in vars(identity)  # derived fields do not keep it either
    assert identity.certificate == client.cert
    assert identity.chain[0] is identity.certificate
    assert identity.der == client.der
    assert identity.expires_at == min(c.not_valid_after_utc for c in identity.chain).timestamp()
    assert identity.not_after == client.cert.not_valid_after_utc
