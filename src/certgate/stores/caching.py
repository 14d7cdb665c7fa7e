"""A bounded cache in front of any trust registry, with change propagation.

:class:`CachingRegistry` wraps a registry (a database store, or any
:class:`~certgate.registry.TrustRegistry` with plain methods) and keeps:

* **tenants by id**, least recently used evicted first, at most
  ``max_tenants`` (each with its parsed certificates: the bulk of the
  memory);
* **host -> tenant id**, LRU, at most ``max_hosts`` (a host whose tenant
  was evicted is looked up again);
* **unknown hosts**, a negative cache of at most ``max_negative`` hosts,
  each for ``negative_ttl`` seconds, LRU. A client chooses the Host: a
  flood of random names costs one indexed query each (bounded by the
  gate's lookup threads, ``LOOKUP_THREADS``) and can only displace other
  unknown names, never a cached tenant. Memory is bounded by these three
  settings, not by the number of tenants or hosts in the store.

**Cache hits never wait.** :meth:`CachingRegistry.peek_tenant_for_host` and
:meth:`~CachingRegistry.peek_tenant_by_id` answer from memory or say
:data:`~certgate.registry.MISS`; :func:`certgate.lookups.bind_registry`
calls them inline (no thread hop, no deadline needed) and runs only misses
on the gate's lookup threads, under ``registry_timeout``.

**Changes.** A background thread (one per process; started on first use,
again in a forked worker) polls the inner registry every
``poll_interval`` seconds, and at once when an inner registry with
``wait_for_change`` (PostgreSQL, through LISTEN) hears of a change:

* a :class:`~certgate.stores.ChangeFeed` (the SQL stores): the tenants
  changed since the last position are dropped - their entry, their cached
  hosts - and so are every unknown host and every host found through a
  wildcard pattern (a changed tenant may now own it exactly); anything
  else stays cached. When the feed cannot tell (log pruned, restored
  backup), everything is dropped.
* a registry with a ``change_token`` (in memory): everything is dropped
  when the token is replaced;
* any other registry: everything is dropped every ``ttl`` seconds.

Each drop replaces :attr:`CachingRegistry.change_token`, so the gate's
decision memo (and the per-host memory of
:class:`~certgate.servers.TenantContexts`) never reuses a decision made
under the old trust; the verification cache is keyed by the tenant's
``trust_id``, which changes with its certificates and CRLs. A lookup that
started before a drop does not put what it read into the cache.

**Fail closed.** When no poll has succeeded for ``max_stale`` seconds (the
store is unreachable), cached answers are not used: every lookup goes to
the store (a 503 ``trust_store_unavailable`` while it fails) and
``change_token`` changes on every read, so no remembered decision is
reused. ``max_stale=None`` keeps answering from the cache through an
outage (availability over the 2-second promise).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, TrustStoreUnavailable
from ..registry import MISS, Miss
from ..tenant import Tenant
from . import ChangeFeed

logger = logging.getLogger("certgate")

DEFAULT_MAX_TENANTS = 10_000
DEFAULT_MAX_NEGATIVE = 10_000
DEFAULT_NEGATIVE_TTL = 5.0
DEFAULT_POLL_INTERVAL = 0.5
DEFAULT_MAX_STALE = 2.0
DEFAULT_TTL = 2.0

_POLL_LOG_EVERY = 30.0


@dataclass(frozen=True)
class CacheCounters:
    """A snapshot of :meth:`CachingRegistry.stats`."""

    tenants: int
    hosts: int
    negative: int
    hits: int
    negative_hits: int
    misses: int
    loads: int
    evictions: int
    invalidations: int
    polls: int
    poll_failures: int


def _positive(value: object, name: str, *, integer: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
        or (integer and not isinstance(value, int))
    ):
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{name} must be {kind}, not {value!r:.40}")
    return float(value)


class CachingRegistry:
    """A bounded, change-aware cache in front of ``inner`` (see the module
    docstring). ``inner`` has plain (blocking) ``tenant_for_host`` and
    ``tenant_by_id``; it may also offer ``tenant_id_for_host`` (a cheaper
    query, used when the tenant itself is cached), the change feed
    (``change_position``/``changes_since``) and ``tenant_modes_present``."""

    blocking = True
    """Misses wait on the inner registry (hits are answered inline through
    the ``peek_*`` methods)."""

    def __init__(
        self,
        inner: Any,
        *,
        max_tenants: int = DEFAULT_MAX_TENANTS,
        max_hosts: int | None = None,
        max_negative: int = DEFAULT_MAX_NEGATIVE,
        negative_ttl: float = DEFAULT_NEGATIVE_TTL,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_stale: float | None = DEFAULT_MAX_STALE,
        ttl: float = DEFAULT_TTL,
    ) -> None:
        for method in ("tenant_for_host", "tenant_by_id"):
            if not callable(getattr(inner, method, None)):
                raise ConfigError(f"CachingRegistry needs a registry with {method}()")
        self.inner = inner
        self.max_tenants = int(_positive(max_tenants, "max_tenants", integer=True))
        self.max_hosts = int(
            _positive(
                max_hosts if max_hosts is not None else 4 * max_tenants, "max_hosts", integer=True
            )
        )
        self.max_negative = int(_positive(max_negative, "max_negative", integer=True))
        self.negative_ttl = _positive(negative_ttl, "negative_ttl")
        self.poll_interval = _positive(poll_interval, "poll_interval")
        self.max_stale = None if max_stale is None else _positive(max_stale, "max_stale")
        if self.max_stale is not None and self.max_stale < self.poll_interval:
            raise ConfigError(
                f"max_stale ({max_stale:g} s) must be at least poll_interval ({poll_interval:g} s)"
            )
        self.ttl = _positive(ttl, "ttl")
        self._feed: ChangeFeed | None = inner if isinstance(inner, ChangeFeed) else None
        self._id_for_host = getattr(inner, "tenant_id_for_host", None)
        self._modes_present = getattr(inner, "tenant_modes_present", None)
        self._reset_process_state()

    def _reset_process_state(self) -> None:
        """Everything that belongs to one process (again after a fork: the
        parent's locks may have been held by threads that do not exist here)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._tenants: OrderedDict[str, Tenant] = OrderedDict()
        self._hosts: OrderedDict[str, str] = OrderedDict()
        self._hosts_of: dict[str, set[str]] = {}
        self._wild: dict[str, int] = {}
        """Hosts found through a wildcard pattern: the ``_wild_gen`` they were
        found in (valid while it is current; see :meth:`_drop`)."""
        self._wild_gen = 0
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._epoch = 0
        self._token = object()
        self._fresh_until = 0.0 if self.max_stale is not None else math.inf
        self._polled = False
        self._position: int | None = None
        self._inner_token: object = getattr(self.inner, "change_token", None)
        self._flushed_at = time.monotonic()
        self._modes = True
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._poll_logged = 0.0
        self._hits = self._negative_hits = self._misses = self._loads = 0
        self._evictions = self._invalidations = self._polls = self._poll_failures = 0

    # -- what the gate reads ----------------------------------------------------

    @property
    def change_token(self) -> object:
        """Replaced whenever cached tenants are dropped; a new object on every
        read while the cache is stale (no decision memo entry then matches)."""
        if time.monotonic() >= self._fresh_until:
            return object()
        return self._token

    @property
    def has_tenant_modes(self) -> bool:
        """Whether some tenant of the inner registry sets its own mode (as of
        the last poll; ``True`` until known, or if the registry cannot say)."""
        return self._modes

    # -- lookups ----------------------------------------------------------------

    def peek_tenant_for_host(self, host: str) -> Tenant | Miss | None:
        """The cached answer for normalised ``host`` - a tenant, or ``None``
        for a known-unknown host - or :data:`MISS`. Never waits on I/O."""
        if self._pid != os.getpid() or self._poller is None:
            self._start()
        now = time.monotonic()
        if now >= self._fresh_until:
            return MISS
        with self._lock:
            tenant_id = self._hosts.get(host)
            if tenant_id is not None and self._wild.get(host, self._wild_gen) != self._wild_gen:
                self._forget_host(host)  # found through a wildcard before a change
                tenant_id = None
            if tenant_id is not None:
                tenant = self._tenants.get(tenant_id)
                if tenant is not None:
                    self._hosts.move_to_end(host)
                    self._tenants.move_to_end(tenant_id)
                    self._hits += 1
                    return tenant
            else:
                expires = self._negative.get(host)
                if expires is not None:
                    if now < expires:
                        self._negative_hits += 1
                        return None
                    del self._negative[host]
            self._misses += 1
        return MISS

    def peek_tenant_by_id(self, tenant_id: str) -> Tenant | Miss | None:
        """The cached tenant ``tenant_id``, or :data:`MISS`."""
        if self._pid != os.getpid() or self._poller is None:
            self._start()
        if time.monotonic() >= self._fresh_until:
            return MISS
        with self._lock:
            tenant = self._tenants.get(tenant_id)
            if tenant is not None:
                self._tenants.move_to_end(tenant_id)
                self._hits += 1
                return tenant
            self._misses += 1
        return MISS

    def tenant_for_host(self, host: str) -> Tenant | None:
        """:class:`~certgate.registry.TrustRegistry`: from the cache, else
        from the inner registry (blocking; remembered)."""
        found = self.peek_tenant_for_host(host)
        if not isinstance(found, Miss):
            return found
        self._ensure_fresh()
        epoch = self._epoch
        if self._id_for_host is not None:
            tenant_id = self._id_for_host(host)
            if tenant_id is None:
                self._remember_host(host, None, epoch)
                return None
            with self._lock:
                tenant = self._tenants.get(tenant_id)
            if tenant is not None:
                self._remember_host(host, tenant, epoch)
                return tenant
        tenant = self.inner.tenant_for_host(host)
        self._loads += 1
        self._remember_host(host, tenant, epoch)
        return tenant  # type: ignore[no-any-return]

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        """:class:`~certgate.registry.TrustRegistry`: from the cache, else
        from the inner registry (blocking; remembered when found)."""
        found = self.peek_tenant_by_id(tenant_id)
        if not isinstance(found, Miss):
            return found
        self._ensure_fresh()
        epoch = self._epoch
        tenant: Tenant | None = self.inner.tenant_by_id(tenant_id)
        self._loads += 1
        if tenant is not None:
            with self._lock:
                if self._epoch == epoch:
                    self._keep_tenant(tenant)
        return tenant

    # -- for a registry that reads misses elsewhere (AsyncCachingRegistry) ------

    @property
    def epoch(self) -> int:
        """Bumped by every drop: read it before a lookup of a miss and hand
        it to :meth:`remember_host` / :meth:`remember_tenant`, which keep
        nothing read before a drop (it may be the old trust)."""
        return self._epoch

    def is_fresh(self) -> bool:
        """Whether a poll succeeded within ``max_stale`` seconds."""
        return time.monotonic() < self._fresh_until

    def ensure_fresh(self) -> None:
        """Poll now if the cache is stale (blocking; raises
        :class:`TrustStoreUnavailable` when the store cannot answer)."""
        self._ensure_fresh()

    def remember_host(self, host: str, tenant: Tenant | None, epoch: int) -> None:
        """Cache what a lookup of ``host`` made elsewhere found (a tenant,
        or ``None``: unknown), unless a drop happened since ``epoch``."""
        self._loads += 1
        self._remember_host(host, tenant, epoch)

    def remember_tenant(self, tenant: Tenant, epoch: int) -> None:
        """Cache a tenant found by id elsewhere (see :meth:`remember_host`)."""
        self._loads += 1
        with self._lock:
            if self._epoch == epoch:
                self._keep_tenant(tenant)

    # -- the cache --------------------------------------------------------------

    def _remember_host(self, host: str, tenant: Tenant | None, epoch: int) -> None:
        now = time.monotonic()
        with self._lock:
            if self._epoch != epoch:
                return  # dropped meanwhile: what was read may be the old trust
            if tenant is None:
                self._negative[host] = now + self.negative_ttl
                self._negative.move_to_end(host)
                while len(self._negative) > self.max_negative:
                    self._negative.popitem(last=False)
                    self._evictions += 1
                return
            self._negative.pop(host, None)
            tenant = self._keep_tenant(tenant)
            previous = self._hosts.get(host)
            if previous is not None and previous != tenant.id:
                self._forget_host(host)
            self._hosts[host] = tenant.id
            self._hosts.move_to_end(host)
            self._hosts_of.setdefault(tenant.id, set()).add(host)
            if host not in tenant.hosts:
                self._wild[host] = self._wild_gen  # found through *.parent: see _drop
            else:
                self._wild.pop(host, None)
            while len(self._hosts) > self.max_hosts:
                oldest = next(iter(self._hosts))
                self._forget_host(oldest)
                self._evictions += 1

    def _keep_tenant(self, tenant: Tenant) -> Tenant:
        """Cache ``tenant`` (lock held); the cached object for its id."""
        kept = self._tenants.get(tenant.id)
        if kept is not None:
            self._tenants.move_to_end(tenant.id)
            return kept
        self._tenants[tenant.id] = tenant
        while len(self._tenants) > self.max_tenants:
            oldest, _ = self._tenants.popitem(last=False)
            for host in self._hosts_of.pop(oldest, ()):
                self._hosts.pop(host, None)
                self._wild.pop(host, None)
            self._evictions += 1
        return tenant

    def _forget_host(self, host: str) -> None:
        tenant_id = self._hosts.pop(host, None)
        self._wild.pop(host, None)
        if tenant_id is not None:
            hosts = self._hosts_of.get(tenant_id)
            if hosts is not None:
                hosts.discard(host)
                if not hosts:
                    del self._hosts_of[tenant_id]

    def _drop(self, tenant_ids: frozenset[str] | None) -> None:
        """Drop the cached entries of ``tenant_ids`` (``None``: everything),
        every unknown host and every host found through a wildcard; a new
        change token and epoch."""
        with self._lock:
            self._epoch += 1
            self._invalidations += 1
            if tenant_ids is None:
                self._tenants.clear()
                self._hosts.clear()
                self._hosts_of.clear()
                self._wild.clear()
            else:
                for tenant_id in tenant_ids:
                    self._tenants.pop(tenant_id, None)
                    for host in self._hosts_of.pop(tenant_id, ()):
                        self._hosts.pop(host, None)
                        self._wild.pop(host, None)
                # every host found through a wildcard, at once (an attacker
                # can make max_hosts of them: forgetting each here held the
                # lock - every cache hit - for ~100 ms at 40,000); each is
                # forgotten when next read or evicted
                self._wild_gen += 1
            self._negative.clear()
            self._token = object()

    def clear(self) -> None:
        """Drop everything cached."""
        self._drop(None)

    def stats(self) -> CacheCounters:
        """Sizes and counters (for metrics and tests)."""
        with self._lock:
            return CacheCounters(
                tenants=len(self._tenants),
                hosts=len(self._hosts),
                negative=len(self._negative),
                hits=self._hits,
                negative_hits=self._negative_hits,
                misses=self._misses,
                loads=self._loads,
                evictions=self._evictions,
                invalidations=self._invalidations,
                polls=self._polls,
                poll_failures=self._poll_failures,
            )

    # -- change propagation -----------------------------------------------------

    def poll(self) -> None:
        """Ask the inner registry what changed and drop it (blocking; raises
        what the registry raises, e.g. :class:`TrustStoreUnavailable`)."""
        with self._poll_lock:
            self._poll_locked()

    def _poll_locked(self) -> None:
        started = time.monotonic()
        changed = not self._polled
        feed = self._feed
        if feed is not None:
            if self._position is None:
                position = feed.change_position()
                self._drop(None)  # cached before the first poll: of unknown age
                self._position = position
            else:
                since_at = getattr(feed, "changes_since_at", None)
                if since_at is not None:  # an answer older than this poll (PostgreSQL's listener)
                    # no older than keeps the cache fresh until the next poll
                    max_age = None
                    if self.max_stale is not None:
                        max_age = max(self.max_stale - self.poll_interval, 0.0)
                    position, ids, as_of = since_at(self._position, max_age)
                    started = min(started, as_of)
                else:
                    position, ids = feed.changes_since(self._position)
                if ids is None or ids:
                    self._drop(ids)
                    changed = True
                self._position = position
        elif hasattr(self.inner, "change_token"):
            token = self.inner.change_token
            if token is not self._inner_token:
                self._inner_token = token
                self._drop(None)
                changed = True
        elif started - self._flushed_at >= self.ttl:
            self._flushed_at = started
            self._drop(None)
            changed = True
        if changed and self._modes_present is not None:
            self._modes = bool(self._modes_present())
        elif changed:
            self._modes = bool(getattr(self.inner, "has_tenant_modes", True))
        self._polled = True
        self._polls += 1
        if self.max_stale is not None:
            self._fresh_until = started + self.max_stale

    def _ensure_fresh(self) -> None:
        """Poll now if the cache is stale (a lookup thread, before a miss is
        read from the store): a failing store raises here - 503."""
        if time.monotonic() < self._fresh_until:
            return
        with self._poll_lock:
            if time.monotonic() < self._fresh_until:
                return
            try:
                self._poll_locked()
            except TrustStoreUnavailable:
                self._poll_failures += 1
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the store: 503
                self._poll_failures += 1
                raise TrustStoreUnavailable(
                    f"change poll failed: {type(exc).__name__}: {exc}"[:500]
                ) from None

    def _start(self) -> None:
        """Start this process's poller thread (again after a fork)."""
        with _START_LOCK:
            if self._pid != os.getpid():
                self._reset_process_state()
            if self._poller is not None:
                return
            thread = threading.Thread(
                target=_poll_loop,
                args=(
                    weakref.ref(self),
                    self.poll_interval,
                    self._stop,
                    self._pid,
                    getattr(self.inner, "wait_for_change", None),
                ),
                name="certgate-registry-poll",
                daemon=True,
            )
            self._poller = thread
            thread.start()

    def _poll_failed(self, exc: BaseException) -> None:
        self._poll_failures += 1
        now = time.monotonic()
        if now - self._poll_logged >= _POLL_LOG_EVERY:
            self._poll_logged = now
            logger.warning(
                "certgate: polling the tenant store for changes failed (cached tenants are "
                "used %s): %.300r",
                "until it answers again (max_stale=None)"
                if self.max_stale is None
                else f"for at most max_stale={self.max_stale:g} s more",
                exc,
            )

    def close(self) -> None:
        """Stop the poller thread (the cache still answers; nothing is polled)."""
        self._stop.set()


_START_LOCK = threading.Lock()


def _new_start_lock() -> None:
    global _START_LOCK  # noqa: PLW0603 - a forked child must not inherit a held lock
    _START_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_start_lock)


def _poll_loop(
    ref: weakref.ReferenceType[CachingRegistry],
    interval: float,
    stop: threading.Event,
    pid: int,
    wait_for_change: Callable[[int, float], int] | None = None,
) -> None:
    """Poll every ``interval`` seconds until the registry is gone, closed,
    or this is a forked copy of the thread's process. An inner registry
    with ``wait_for_change(seen, timeout)`` (PostgreSQL: LISTEN) wakes the
    poller as soon as it hears of a change."""
    seen = 0
    while True:
        if wait_for_change is None:
            if stop.wait(interval):
                return
        else:
            try:
                seen = wait_for_change(seen, interval)
            except Exception:  # noqa: BLE001 - then poll at the interval
                stop.wait(interval)
            if stop.is_set():
                return
        registry = ref()
        if registry is None or registry._pid != pid or os.getpid() != pid:
            return
        try:
            registry.poll()
        except Exception as exc:  # noqa: BLE001 - logged; lookups fail closed after max_stale
            registry._poll_failed(exc)
        del registry
