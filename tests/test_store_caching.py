"""The caching layer (:class:`certgate.stores.caching.CachingRegistry`): its
bounds, what a change drops, fail-closed staleness, inline cache hits, and
the verifier's per-tenant builder memo (evicted one at a time)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import string
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from certgate import CertGate, ConfigError, InMemoryRegistry, Reason, Tenant
from certgate.devpki import CA
from certgate.errors import TrustStoreUnavailable
from certgate.lookups import LookupPool
from certgate.registry import MISS
from certgate.stores import open_registry
from certgate.stores.caching import CachingRegistry
from certgate.stores.sqlite import SqliteRegistry
from certgate.verifier import ChainVerifier
from tests.store_helpers import leaf_facts, new_store, url_of, wait_for


@pytest.fixture(scope="module")
def roots() -> list[CA]:
    return [CA.root(f"Cache Root {i}") for i in range(8)]


def filled(tmp_path: Path, roots: list[CA], count: int = 5) -> SqliteRegistry:
    store = new_store(tmp_path)
    for i in range(count):
        store.put(Tenant(f"t{i}", (f"t{i}.test", f"*.t{i}.test"), (roots[i].cert,)))
    return store


def cache_of(store: SqliteRegistry, **options: Any) -> CachingRegistry:
    options.setdefault("poll_interval", 0.02)
    options.setdefault("max_stale", 5.0)
    return CachingRegistry(SqliteRegistry(store.path), **options)


# -- bounds ----------------------------------------------------------------------


def test_random_hosts_do_not_grow_memory_beyond_the_bound(tmp_path: Path, roots: list[CA]) -> None:
    """A flood of random Host names: the negative cache stays at its bound,
    cached tenants stay cached, and memory stops growing."""
    cache = cache_of(filled(tmp_path, roots), max_negative=200)
    assert cache.tenant_for_host("t0.test") is not None
    rng = random.Random(7)

    def flood(count: int) -> None:
        for _ in range(count):
            name = "".join(rng.choices(string.ascii_lowercase, k=30)) + ".evil.test"
            assert cache.tenant_for_host(name) is None

    flood(1000)
    tracemalloc.start()
    try:
        flood(500)
        before = tracemalloc.get_traced_memory()[0]
        flood(5000)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    stats = cache.stats()
    assert stats.negative == 200
    assert stats.tenants == 1
    assert after - before < 64 * 1024, (before, after)
    assert cache.peek_tenant_for_host("t0.test") is not MISS  # not displaced


def test_tenants_are_evicted_one_at_a_time_least_recently_used_first(
    tmp_path: Path, roots: list[CA]
) -> None:
    cache = cache_of(filled(tmp_path, roots), max_tenants=3, max_hosts=100)
    for i in range(3):
        assert cache.tenant_for_host(f"t{i}.test") is not None
    assert cache.tenant_for_host("t0.test") is not None  # t0 used again: t1 is oldest
    cache.tenant_for_host("t3.test")
    assert cache.peek_tenant_by_id("t1") is MISS
    assert cache.peek_tenant_for_host("t1.test") is MISS  # its hosts went with it
    for kept in ("t0", "t2", "t3"):
        assert cache.peek_tenant_by_id(kept) is not MISS
    assert cache.stats().tenants == 3


def test_hosts_are_bounded_too(tmp_path: Path, roots: list[CA]) -> None:
    cache = cache_of(filled(tmp_path, roots), max_tenants=10, max_hosts=5)
    for i in range(50):
        assert cache.tenant_for_host(f"h{i}.t0.test") is not None
    stats = cache.stats()
    assert stats.hosts == 5
    assert stats.tenants == 1
    assert cache.peek_tenant_for_host("h49.t0.test") is not MISS
    assert cache.peek_tenant_for_host("h0.t0.test") is MISS


@pytest.mark.parametrize(
    "options",
    [
        {"max_tenants": 0},
        {"max_tenants": True},
        {"max_negative": 1.5},
        {"negative_ttl": float("nan")},
        {"poll_interval": -1},
        {"poll_interval": 1.0, "max_stale": 0.5},
    ],
)
def test_bad_settings_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        CachingRegistry(InMemoryRegistry(), **options)


# -- what a change drops -----------------------------------------------------------------


def test_a_change_drops_only_the_changed_tenant(tmp_path: Path, roots: list[CA]) -> None:
    store = filled(tmp_path, roots)
    cache = cache_of(store)
    first = {i: cache.tenant_for_host(f"t{i}.test") for i in range(3)}
    loads = cache.stats().loads
    store.put(Tenant("t1", ("t1.test",), (roots[6].cert,)))
    assert wait_for(lambda: cache.peek_tenant_by_id("t1") is MISS)
    assert cache.tenant_for_host("t0.test") is first[0]  # untouched, same object
    assert cache.tenant_for_host("t2.test") is first[2]
    changed = cache.tenant_for_host("t1.test")
    assert changed is not None
    assert changed.roots == (roots[6].cert,)
    assert cache.stats().loads == loads + 1
    assert cache.tenant_for_host("x.t1.test") is None  # its wildcard is gone


def test_an_exact_host_claimed_elsewhere_replaces_a_wildcard_answer(
    tmp_path: Path, roots: list[CA]
) -> None:
    store = filled(tmp_path, roots)
    cache = cache_of(store)
    found = cache.tenant_for_host("vip.t0.test")
    assert found is not None
    assert found.id == "t0"
    store.put(Tenant("vip", ("vip.t0.test",), (roots[7].cert,)))
    assert wait_for(lambda: cache.peek_tenant_for_host("vip.t0.test") is MISS)
    moved = cache.tenant_for_host("vip.t0.test")
    assert moved is not None
    assert moved.id == "vip"


def test_a_new_host_is_found_despite_the_negative_cache(tmp_path: Path, roots: list[CA]) -> None:
    store = filled(tmp_path, roots)
    cache = cache_of(store, negative_ttl=3600)
    assert cache.tenant_for_host("new.test") is None
    assert cache.peek_tenant_for_host("new.test") is None  # remembered as unknown
    store.put(Tenant("new", ("new.test",), (roots[7].cert,)))
    assert wait_for(lambda: cache.peek_tenant_for_host("new.test") is MISS)
    tenant = cache.tenant_for_host("new.test")
    assert tenant is not None


def test_each_change_replaces_the_change_token(tmp_path: Path, roots: list[CA]) -> None:
    store = filled(tmp_path, roots)
    cache = cache_of(store)
    cache.tenant_for_host("t0.test")
    token = cache.change_token
    assert cache.change_token is token  # stable while nothing changes
    store.remove("t4")
    assert wait_for(lambda: cache.change_token is not token)


def test_a_lookup_that_started_before_a_change_is_not_cached(
    tmp_path: Path, roots: list[CA]
) -> None:
    """The store answered with the old trust while the change was applied:
    the answer is returned (it was true when read) but never cached."""
    store = filled(tmp_path, roots)
    inner = SqliteRegistry(store.path)
    entered, release = threading.Event(), threading.Event()
    real = inner.tenant_for_host

    def slow(host: str) -> Tenant | None:
        tenant = real(host)
        entered.set()
        release.wait(10)
        return tenant

    inner.tenant_for_host = slow  # type: ignore[method-assign]
    inner.tenant_id_for_host = None  # type: ignore[assignment,method-assign]
    cache = CachingRegistry(inner, poll_interval=0.02, max_stale=5)
    cache._id_for_host = None
    result: list[Tenant | None] = []
    thread = threading.Thread(target=lambda: result.append(cache.tenant_for_host("t0.test")))
    thread.start()
    assert entered.wait(10)
    store.put(Tenant("t0", ("t0.test",), (roots[6].cert,)))
    assert wait_for(lambda: cache.stats().invalidations >= 2)
    release.set()
    thread.join()
    assert result[0] is not None
    assert result[0].roots == (roots[0].cert,)
    assert cache.peek_tenant_for_host("t0.test") is MISS
    fresh = cache.tenant_for_host("t0.test")
    assert fresh is not None
    assert fresh.roots == (roots[6].cert,)


def test_in_memory_registry_behind_the_cache(roots: list[CA]) -> None:
    inner = InMemoryRegistry([Tenant("a", ("a.test",), (roots[0].cert,))])
    cache = CachingRegistry(inner, poll_interval=0.02)
    assert cache.tenant_for_host("a.test") is not None
    inner.put(Tenant("a", ("a.test",), (roots[1].cert,)))
    assert wait_for(lambda: cache.peek_tenant_for_host("a.test") is MISS)
    tenant = cache.tenant_for_host("a.test")
    assert tenant is not None
    assert tenant.roots == (roots[1].cert,)


class _Plain:
    """A registry with neither a change feed nor a change token."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant

    def tenant_for_host(self, host: str) -> Tenant | None:
        return self.tenant if host in self.tenant.hosts else None

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return self.tenant if tenant_id == self.tenant.id else None


def test_a_registry_without_change_news_is_flushed_every_ttl(roots: list[CA]) -> None:
    inner = _Plain(Tenant("a", ("a.test",), (roots[0].cert,)))
    cache = CachingRegistry(inner, poll_interval=0.02, ttl=0.1)
    assert cache.tenant_for_host("a.test") is not None
    inner.tenant = Tenant("a", ("a.test",), (roots[1].cert,))
    assert wait_for(lambda: cache.peek_tenant_for_host("a.test") is MISS)


# -- fail closed ----------------------------------------------------------------------


class _FlakyFeed:
    """A store whose change feed can be switched off (an outage)."""

    def __init__(self, inner: SqliteRegistry) -> None:
        self.inner = inner
        self.down = False

    def tenant_for_host(self, host: str) -> Tenant | None:
        if self.down:
            raise TrustStoreUnavailable("down")
        return self.inner.tenant_for_host(host)

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return self.inner.tenant_by_id(tenant_id)

    def change_position(self) -> int:
        if self.down:
            raise TrustStoreUnavailable("down")
        return self.inner.change_position()

    def changes_since(self, position: int) -> tuple[int, frozenset[str] | None]:
        if self.down:
            raise TrustStoreUnavailable("down")
        return self.inner.changes_since(position)


def test_a_stale_cache_is_not_used(tmp_path: Path, roots: list[CA]) -> None:
    feed = _FlakyFeed(SqliteRegistry(filled(tmp_path, roots).path))
    cache = CachingRegistry(feed, poll_interval=0.02, max_stale=0.2)
    assert cache.tenant_for_host("t0.test") is not None
    feed.down = True
    assert wait_for(lambda: cache.peek_tenant_for_host("t0.test") is MISS)
    assert cache.change_token is not cache.change_token  # no memo entry can match
    with pytest.raises(TrustStoreUnavailable):
        cache.tenant_for_host("t0.test")
    assert cache.stats().poll_failures > 0
    feed.down = False
    assert wait_for(lambda: cache.peek_tenant_for_host("t0.test") is not MISS)
    assert cache.change_token is cache.change_token


def test_max_stale_none_serves_the_cache_through_an_outage(tmp_path: Path, roots: list[CA]) -> None:
    feed = _FlakyFeed(SqliteRegistry(filled(tmp_path, roots).path))
    cache = CachingRegistry(feed, poll_interval=0.02, max_stale=None)
    assert cache.tenant_for_host("t0.test") is not None
    feed.down = True
    time.sleep(0.2)
    assert cache.peek_tenant_for_host("t0.test") is not MISS


# -- through the gate ---------------------------------------------------------------------


def test_a_changed_trust_is_enforced_and_no_remembered_decision_reused(
    tmp_path: Path, roots: list[CA]
) -> None:
    store = filled(tmp_path, roots)
    registry = open_registry(url_of(store), poll_interval=0.05)
    gate = CertGate(registry, trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])
    device = roots[0].issue("device-0")
    facts = leaf_facts("t0.test", device)
    for _ in range(3):  # remembered by the decision memo from the second allow on
        assert gate.decide(facts).reason is None
    store.put(Tenant("t0", ("t0.test",), (roots[6].cert,)))  # another root: device untrusted
    assert wait_for(lambda: gate.decide(facts).reason is Reason.UNTRUSTED_CHAIN)
    store.remove("t0")
    assert wait_for(lambda: gate.decide(facts).reason is Reason.UNKNOWN_TENANT)


def test_cache_hits_take_no_lookup_thread(
    tmp_path: Path, roots: list[CA], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = filled(tmp_path, roots)
    gate = CertGate(
        open_registry(url_of(store), poll_interval=0.05),
        trusted_proxies=["10.0.0.0/8"],
        header_sources=["cloudflare"],
        cache_size=0,  # no decision memo: every request looks the tenant up
    )
    device = roots[1].issue("device-1")
    assert gate.decide(leaf_facts("t1.test", device)).reason is None  # a miss: one thread hop
    submitted: list[object] = []
    real = LookupPool.submit

    def counting(self: LookupPool, fn: Any) -> Any:
        submitted.append(fn)
        return real(self, fn)

    monkeypatch.setattr(LookupPool, "submit", counting)
    for _ in range(5):
        assert gate.decide(leaf_facts("t1.test", device)).reason is None
        decision = asyncio.run(gate.adecide(leaf_facts("t1.test", device)))
        assert decision.reason is None
    assert submitted == []
    assert gate.decide(leaf_facts("t2.test", device)).reason is Reason.UNTRUSTED_CHAIN
    assert len(submitted) == 1  # t2 was not cached


# -- the verifier's per-tenant memo -------------------------------------------------------


def test_verifier_builders_are_evicted_one_at_a_time(roots: list[CA]) -> None:
    verifier = ChainVerifier(max_tenant_builders=2)
    tenants = [Tenant(f"v{i}", (f"v{i}.test",), (roots[i].cert,)) for i in range(3)]
    devices = [roots[i].issue(f"d{i}") for i in range(3)]
    now = time_now()

    def verify(i: int) -> None:
        verifier.verify(tenants[i], [devices[i].der], source="test", now=now)

    verify(0)
    verify(1)
    kept = verifier._builders[tenants[0].trust_id]
    verify(0)  # v0 used again: v1 is the oldest
    verify(2)
    assert list(verifier._builders) == [tenants[0].trust_id, tenants[2].trust_id]
    assert verifier._builders[tenants[0].trust_id] is kept
    with pytest.raises(ConfigError):
        ChainVerifier(max_tenant_builders=0)


def time_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_a_restored_backup_is_seen_by_running_gates(tmp_path: Path, roots: list[CA]) -> None:
    """Restored in place: the running cache notices (other history, even
    with the same sequence numbers) and drops what it held."""
    store = filled(tmp_path, roots, count=2)
    cache = cache_of(store)
    backup = tmp_path / "backup.db"
    store.backup(backup)
    first = cache.tenant_for_host("t0.test")
    assert first is not None
    store.put(Tenant("t0", ("t0.test",), (roots[6].cert,)))
    assert wait_for(lambda: cache.peek_tenant_by_id("t0") is MISS)
    changed = cache.tenant_for_host("t0.test")
    assert changed is not None
    assert changed.roots == (roots[6].cert,)
    store.restore(backup)
    assert wait_for(lambda: cache.peek_tenant_by_id("t0") is MISS)
    restored = cache.tenant_for_host("t0.test")
    assert restored is not None
    assert restored.roots == (roots[0].cert,)
    # another store's copy with as many changes: a different history
    other = new_store(tmp_path, "other.db")
    other.put(Tenant("t0", ("t0.test",), (roots[7].cert,)))
    store.put(Tenant("t1", ("t1.test",), (roots[5].cert,)))
    for i in range(1, store.change_position()):  # a restore moved the counter past both
        other.put(Tenant(f"o{i}", (f"o{i}.test",), (roots[i % 3 + 2].cert,), shared_anchors=True))
    assert other.change_position() == store.change_position()  # the same position
    assert wait_for(lambda: cache.peek_tenant_by_id("t1") is MISS)
    assert cache.tenant_for_host("t0.test") is restored  # cached again
    copy = tmp_path / "other-copy.db"
    other.backup(copy)
    store.restore(copy)
    assert wait_for(lambda: cache.peek_tenant_by_id("t0") is MISS)
    replaced = cache.tenant_for_host("t0.test")
    assert replaced is not None
    assert replaced.roots == (roots[7].cert,)
