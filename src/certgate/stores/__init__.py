"""Tenant stores: many tenants in a database, shared by every worker.

Design (the interfaces every store follows; the SQLite store is the first,
the PostgreSQL store builds on the same ones):

* **Schema** (:mod:`certgate.stores.schema`): one dialect-neutral
  description of the tables, rendered per dialect, with versioned
  migrations (a ``certgate_schema`` table, ordered steps, each in a
  transaction; a database newer than the code is refused).
* **Records** (:mod:`certgate.stores.records`): a tenant as data
  (:class:`TenantRecord`: DER certificates and CRLs, the policy in its
  TOML/JSON form) - what is stored, exported (JSON lines) and imported.
* **The SQL store** (:mod:`certgate.stores.sql`): every statement, once,
  over a :class:`~certgate.stores.schema.SqlSession` (``execute``,
  ``executemany``, ``transaction``, ``snapshot``).
  :class:`~certgate.stores.sql.SqlTenantStore` gives the writer API
  (``put``, ``remove``, ``import_tenants``, ``export``, ``list``, ``get``,
  ``count``), the registry reads (``tenant_for_host``, ``tenant_by_id``,
  ``id_for_host``) and the change feed (:class:`ChangeFeed`). Tenants are
  vetted once, when written; the anchor-sharing rule is enforced at write
  time with indexed queries (:mod:`certgate.stores.anchors`); reads build
  tenants from stored DER without vetting again. A store only supplies
  ``session()`` (a session for the calling thread) and maps its driver's
  errors to :class:`~certgate.errors.TrustStoreUnavailable` (503) on the
  read side.
* **Caching** (:mod:`certgate.stores.caching`):
  :class:`~certgate.stores.caching.CachingRegistry` in front of any
  registry - bounded LRU of tenants by host and by id, a bounded short
  negative cache, cache hits answered inline (no thread hop), and change
  propagation from a :class:`ChangeFeed` polled by a background thread
  (invalidating only the tenants that changed) with a ``change_token`` for
  the gate's decision memo.
  :class:`~certgate.stores.async_caching.AsyncCachingRegistry` is that
  same cache in front of a coroutine registry (ASGI misses awaited on the
  loop; ``open_registry(url, asynchronous=True)``).
* **URLs** (:func:`open_registry`, :func:`open_store`): ``sqlite:///path``
  (and ``postgresql://...`` once that store registers its scheme with
  :func:`register_scheme`).

Nothing per tenant happens at start-up: opening a store checks its schema
version; tenants are read when a request names them.
"""

from __future__ import annotations

import importlib
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload, runtime_checkable

from ..errors import ConfigError
from ..text import safe_text
from .records import TenantRecord
from .schema import SCHEMA_VERSION, SchemaError
from .sql import ImportResult, SqlTenantStore, TenantSummary

if TYPE_CHECKING:
    from .async_caching import AsyncCachingRegistry
    from .caching import CachingRegistry


@runtime_checkable
class ChangeFeed(Protocol):
    """A registry that can say which tenants changed (polled by
    :class:`~certgate.stores.caching.CachingRegistry` off the request path).

    ``change_position()``: the position (sequence number) of the last
    change. ``changes_since(position)``: ``(new position, ids of the
    tenants changed since position)``, or ``None`` in place of the ids when
    that cannot be told (then every cached tenant is dropped). Both may
    block (I/O) and raise :class:`~certgate.errors.TrustStoreUnavailable`.
    """

    def change_position(self) -> int: ...

    def changes_since(self, position: int) -> tuple[int, frozenset[str] | None]: ...


_SCHEMES: dict[str, str] = {
    "sqlite": "certgate.stores.sqlite:open_url",
    "postgresql": "certgate.stores.postgres:open_url",
    "postgres": "certgate.stores.postgres:open_url",
}
"""URL scheme -> ``module:function`` building a store from a URL."""


def register_scheme(scheme: str, factory: str) -> None:
    """Make ``open_store`` accept URLs of ``scheme`` (``factory``: a
    ``"module:function"`` taking ``(url, create=bool)`` and returning a
    :class:`SqlTenantStore`; imported on first use)."""
    _SCHEMES[scheme] = factory


def _factory(url: str) -> Callable[..., SqlTenantStore]:
    try:
        scheme = urllib.parse.urlsplit(url).scheme
    except ValueError:  # "Invalid IPv6 URL": a "[" or "]" left unencoded (never echo the URL)
        raise ConfigError(
            "not a valid registry URL: a user name or password holding / ? # [ ] @ or : must "
            "percent-encode it (sqlite:////var/lib/certgate/tenants.db, "
            "postgresql://user@host/db)"
        ) from None
    if scheme in ("postgresql", "postgres") and scheme not in _SCHEMES:
        raise ConfigError(f"{scheme}:// registries are not available in this certgate")
    target = _SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        shown = safe_text(scheme, 40) or "(none)"  # never the rest: it may hold a password
        raise ConfigError(f"unknown registry URL scheme {shown!r} (known: {known})")
    module, _, name = target.partition(":")
    factory: Callable[..., SqlTenantStore] = getattr(importlib.import_module(module), name)
    return factory


def open_store(url: str, *, create: bool = False) -> SqlTenantStore:
    """The store at ``url`` (uncached: for writing and tools). ``create``:
    create and migrate it when missing or older than this code."""
    return _factory(url)(url, create=create)


@overload
def open_registry(
    url: str, *, asynchronous: Literal[False] = False, **cache: Any
) -> CachingRegistry: ...


@overload
def open_registry(
    url: str, *, asynchronous: Literal[True], **cache: Any
) -> AsyncCachingRegistry: ...


@overload
def open_registry(
    url: str, *, asynchronous: bool, **cache: Any
) -> CachingRegistry | AsyncCachingRegistry: ...


def open_registry(
    url: str, *, asynchronous: bool = False, **cache: Any
) -> CachingRegistry | AsyncCachingRegistry:
    """A :class:`~certgate.stores.caching.CachingRegistry` over the store at
    ``url``, ready for :class:`~certgate.CertGate`; ``cache``: its options
    (``max_tenants``, ``negative_ttl``, ``poll_interval``, ...).

    ``asynchronous=True`` (``postgresql://`` only): an
    :class:`~certgate.stores.async_caching.AsyncCachingRegistry` - the same
    cache, whose misses on the ASGI path are awaited on an
    :class:`~certgate.stores.postgres.AsyncPostgresRegistry` instead of
    waiting for a lookup thread."""
    if asynchronous:
        from .async_caching import open_async_registry  # noqa: PLC0415

        return open_async_registry(url, **cache)
    from .caching import CachingRegistry  # noqa: PLC0415

    return CachingRegistry(open_store(url), **cache)


__all__ = [
    "SCHEMA_VERSION",
    "ChangeFeed",
    "ImportResult",
    "SchemaError",
    "SqlTenantStore",
    "TenantRecord",
    "TenantSummary",
    "open_registry",
    "open_store",
    "register_scheme",
]
