"""The cache of :mod:`certgate.stores.caching` in front of a coroutine registry.

:class:`AsyncCachingRegistry` gives a coroutine registry (such as
:class:`~certgate.stores.postgres.AsyncPostgresRegistry`) the same memory as
:class:`~certgate.stores.caching.CachingRegistry` - it *is* one such cache,
not a copy: bounded LRU of tenants and hosts, the negative cache, inline
``peek_*`` hits, change-driven invalidation, a ``change_token`` for the
gate's decision memo, fail closed after ``max_stale`` - and differs only in
where a miss is read:

* on the ASGI path (:meth:`AsyncCachingRegistry.tenant_for_host`, awaited
  by the gate's ``adecide``) a miss is awaited on the coroutine registry:
  no thread, the event loop goes on;
* everywhere a coroutine cannot be awaited - a WSGI gate (``decide``), the
  TLS handshake (:class:`~certgate.servers.TenantContexts`) - a miss is
  read through the blocking store given as ``feed`` (on the gate's lookup
  threads, under ``registry_timeout``), into the same cache.

**Changes** are polled by the cache's background thread, exactly as for
:class:`CachingRegistry`: from ``feed`` when it is a
:class:`~certgate.stores.ChangeFeed` (only the tenants that changed are
dropped; PostgreSQL wakes the poller through LISTEN at once), else from the
coroutine registry's ``change_token`` (everything is dropped when it is
replaced), else every ``ttl`` seconds. Reading the feed from a thread keeps
the one tested propagation path; it costs the feed's own connections (for
PostgreSQL one listener and a pool that only the poller and the blocking
misses use).

A stale cache (no successful poll for ``max_stale`` seconds) answers
nothing from memory: an ASGI miss first polls (on a thread of its own, so
the loop does not wait) and a failing store is a 503.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import urllib.parse
from typing import Any

from ..errors import ConfigError, TrustStoreUnavailable
from ..lookups import LookupPool
from ..registry import Miss
from ..tenant import Tenant
from .caching import CacheCounters, CachingRegistry


class _NoFeed:
    """What the cache polls for a coroutine registry given no feed and
    without a ``change_token``: nothing (everything is dropped every
    ``ttl`` seconds). It has no blocking lookups."""

    blocking = True

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    @property
    def has_tenant_modes(self) -> bool:
        return bool(getattr(self._inner, "has_tenant_modes", True))

    def tenant_for_host(self, host: str) -> Tenant | None:
        raise TrustStoreUnavailable("this registry has no blocking lookups: give it a feed")

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        raise TrustStoreUnavailable("this registry has no blocking lookups: give it a feed")


class _TokenOf(_NoFeed):
    """As :class:`_NoFeed`, for a registry with a ``change_token`` (the
    cache drops everything when it is replaced)."""

    @property
    def change_token(self) -> object:
        return self._inner.change_token


class AsyncCachingRegistry:
    """A :class:`CachingRegistry` whose ASGI misses are awaited on
    ``inner`` (a registry with coroutine ``tenant_for_host`` and
    ``tenant_by_id``); see the module docstring. ``feed``: a blocking store
    over the same data (the change feed, and the misses that cannot be
    awaited), or ``None``. ``cache``: :class:`CachingRegistry`'s options."""

    def __init__(self, inner: Any, *, feed: Any | None = None, **cache: Any) -> None:
        for method in ("tenant_for_host", "tenant_by_id"):
            if not inspect.iscoroutinefunction(getattr(inner, method, None)):
                raise ConfigError(
                    f"AsyncCachingRegistry needs a registry with a coroutine {method}() "
                    "(use CachingRegistry for a blocking one)"
                )
        self.inner = inner
        self._own_feed = feed is None
        if feed is None:
            feed = _TokenOf(inner) if hasattr(inner, "change_token") else _NoFeed(inner)
        self.cache = CachingRegistry(feed, **cache)
        """The cache (the memory, the poller)."""
        self.sync_registry: CachingRegistry | None = None if self._own_feed else self.cache
        """The blocking view of the same cache (``None`` without a feed):
        for WSGI and the TLS handshake."""
        self._polls = LookupPool(2, "certgate-async-poll", backlog=8)

    # -- what the gate reads ----------------------------------------------------

    @property
    def change_token(self) -> object:
        return self.cache.change_token

    @property
    def has_tenant_modes(self) -> bool:
        return self.cache.has_tenant_modes

    def peek_tenant_for_host(self, host: str) -> Tenant | Miss | None:
        """The cached answer for ``host`` or :data:`~certgate.registry.MISS`
        (never waits)."""
        return self.cache.peek_tenant_for_host(host)

    def peek_tenant_by_id(self, tenant_id: str) -> Tenant | Miss | None:
        return self.cache.peek_tenant_by_id(tenant_id)

    # -- lookups ------------------------------------------------------------------

    async def tenant_for_host(self, host: str) -> Tenant | None:
        """From the cache, else awaited on ``inner`` (remembered)."""
        found = self.cache.peek_tenant_for_host(host)
        if not isinstance(found, Miss):
            return found
        await self._fresh()
        epoch = self.cache.epoch
        tenant: Tenant | None = await self.inner.tenant_for_host(host)
        self.cache.remember_host(host, tenant, epoch)
        return tenant

    async def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        """From the cache, else awaited on ``inner`` (remembered when found)."""
        found = self.cache.peek_tenant_by_id(tenant_id)
        if not isinstance(found, Miss):
            return found
        await self._fresh()
        epoch = self.cache.epoch
        tenant: Tenant | None = await self.inner.tenant_by_id(tenant_id)
        if tenant is not None:
            self.cache.remember_tenant(tenant, epoch)
        return tenant

    async def _fresh(self) -> None:
        """Poll first when the cache is stale, on a thread (the poll blocks)."""
        if self.cache.is_fresh():
            return
        try:
            future = self._polls.submit(self.cache.ensure_fresh)
        except queue.Full:
            raise TrustStoreUnavailable("change polls of the tenant store do not answer") from None
        await asyncio.wrap_future(future)

    # -- the rest -------------------------------------------------------------------

    def stats(self) -> CacheCounters:
        """:meth:`CachingRegistry.stats` of the cache."""
        return self.cache.stats()

    def clear(self) -> None:
        self.cache.clear()

    def close(self) -> None:
        """Stop the poller and close the feed (``aclose`` closes ``inner``)."""
        self.cache.close()
        close = getattr(self.cache.inner, "close", None)
        if callable(close) and not self._own_feed:
            close()

    async def aclose(self) -> None:
        """:meth:`close`, and ``inner``'s ``aclose`` (its pool, its listener)."""
        self.close()
        aclose = getattr(self.inner, "aclose", None)
        if callable(aclose):
            await aclose()


def open_async_registry(url: str, **cache: Any) -> AsyncCachingRegistry:
    """:func:`certgate.stores.open_registry` with ``asynchronous=True``: a
    PostgreSQL URL only (SQLite has no asynchronous driver: its misses run
    on the lookup threads of ``open_registry(url)``)."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            "asynchronous=True needs a postgresql:// registry URL; for "
            f"{scheme[:20] or 'this'}:// use open_registry(url) (misses run on lookup threads)"
        )
    from . import open_store  # noqa: PLC0415
    from .postgres import AsyncPostgresRegistry  # noqa: PLC0415 - the postgres extra

    feed = open_store(url)
    return AsyncCachingRegistry(AsyncPostgresRegistry(url, follow_loop=True), feed=feed, **cache)
