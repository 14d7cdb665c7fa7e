"""Trust registries: where certgate finds the tenant a request is addressed to.

A registry answers two questions, one tenant at a time, so it never needs to
hold every tenant in memory (a database-backed registry looks each one up):

* ``tenant_for_host(host)`` - the tenant serving a normalised host name;
* ``tenant_by_id(tenant_id)`` - the tenant a custom resolver named.

Both return ``None`` for "no such tenant" and raise for "could not tell" (a
database outage); certgate turns the latter into a 503
``trust_store_unavailable``, never into an allow.

A registry may implement the two methods as plain functions or as coroutine
functions. Plain methods are called directly when the registry says
``blocking = False`` (pure in-memory lookups); otherwise the ASGI middleware
runs them in a worker thread so a slow store cannot stall the event loop.
Coroutine methods are awaited by the ASGI middleware and run through
``asgiref.sync.async_to_sync`` by the WSGI middleware.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .errors import ConfigError
from .hosts import parent_domain
from .tenant import Tenant


@runtime_checkable
class TrustRegistry(Protocol):
    """A synchronous registry. Set ``blocking = False`` only if lookups never
    wait on I/O."""

    def tenant_for_host(self, host: str) -> Tenant | None: ...

    def tenant_by_id(self, tenant_id: str) -> Tenant | None: ...


@runtime_checkable
class AsyncTrustRegistry(Protocol):
    """An asynchronous registry (for example one backed by an async DB driver)."""

    def tenant_for_host(self, host: str) -> Awaitable[Tenant | None]: ...

    def tenant_by_id(self, tenant_id: str) -> Awaitable[Tenant | None]: ...


@dataclass(frozen=True)
class HostIndex:
    """An immutable host -> tenant index with O(1) exact and wildcard lookups."""

    by_id: dict[str, Tenant] = field(default_factory=dict)
    exact: dict[str, Tenant] = field(default_factory=dict)
    wildcard: dict[str, Tenant] = field(default_factory=dict)

    @classmethod
    def build(cls, tenants: Iterable[Tenant]) -> HostIndex:
        """Index ``tenants``; raises :class:`ConfigError` on a duplicate id or
        a host claimed by two tenants."""
        index = cls()
        for tenant in tenants:
            if tenant.id in index.by_id:
                raise ConfigError(f"duplicate tenant id {tenant.id!r}")
            index.by_id[tenant.id] = tenant
            for pattern in tenant.hosts:
                table, key = (
                    (index.wildcard, pattern[2:])
                    if pattern.startswith("*.")
                    else (index.exact, pattern)
                )
                other = table.get(key)
                if other is not None:
                    raise ConfigError(
                        f"host {pattern!r} is claimed by tenants {other.id!r} and {tenant.id!r}"
                    )
                table[key] = tenant
        return index

    def lookup(self, host: str) -> Tenant | None:
        """Exact match first, then a one-label wildcard (``*.example.com``
        matches ``a.example.com``, not ``example.com`` or ``a.b.example.com``)."""
        tenant = self.exact.get(host)
        if tenant is None:
            parent = parent_domain(host)
            if parent is not None:
                tenant = self.wildcard.get(parent)
        return tenant


class InMemoryRegistry:
    """A registry held in memory, filled and changed through the Python API.

    Reads take no lock (they see one immutable index); writers build a new
    index under a lock and swap it in, so readers on other threads always see
    either the old or the new set of tenants, never a mix.
    """

    blocking = False

    def __init__(self, tenants: Iterable[Tenant] = ()) -> None:
        self._lock = threading.Lock()
        self._index = HostIndex.build(tenants)

    def tenant_for_host(self, host: str) -> Tenant | None:
        return self._index.lookup(host)

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return self._index.by_id.get(tenant_id)

    def tenants(self) -> list[Tenant]:
        """All tenants, in insertion order."""
        return list(self._index.by_id.values())

    def put(self, tenant: Tenant) -> None:
        """Add ``tenant``, or replace the tenant with the same id."""
        with self._lock:
            others = [t for t in self._index.by_id.values() if t.id != tenant.id]
            self._index = HostIndex.build([*others, tenant])

    def remove(self, tenant_id: str) -> None:
        """Remove a tenant; unknown ids are ignored."""
        with self._lock:
            self._index = HostIndex.build(
                t for t in self._index.by_id.values() if t.id != tenant_id
            )

    def replace_all(self, tenants: Iterable[Tenant]) -> None:
        """Swap in a whole new set of tenants atomically."""
        index = HostIndex.build(tenants)
        with self._lock:
            self._index = index
