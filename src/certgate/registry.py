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
``blocking = False`` (pure in-memory lookups); otherwise they run on a small
worker pool (ASGI and WSGI alike), so a slow store cannot stall the event
loop and a hung one cannot hang the request. Coroutine methods are awaited
by the ASGI middleware and run through ``asgiref.sync.async_to_sync`` by the
WSGI middleware. Every lookup that is not inline is bounded by the gate's
``registry_timeout`` (503 ``trust_store_unavailable`` when it fires; see
:mod:`certgate.lookups`).

Shared trust anchors: :meth:`HostIndex.build` (so :class:`InMemoryRegistry`,
its ``put()`` and the TOML registry) refuses a set of tenants in which two
tenants trust the same anchor - the same certificate, or the same subject
and public key - because a device of either would then be accepted on the
other's hosts. It also refuses a tenant whose anchor was issued by another
tenant's anchor (directly, through CA certificates in the configuration, or
as a configured cross-certificate with the anchor's subject and key): the
issuing tenant would accept every device of the other. Both are allowed
only when *every* tenant involved sets ``shared_anchors``. Not detected: an
issuing link that exists only in certificates the clients send (they are not
known at load time), and a cross-certificate of a CA below a tenant's anchor;
a custom registry does its own checking.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import Encoding

from .errors import ConfigError
from .hosts import parent_domain
from .tenant import Anchor, Tenant

_SHA256 = SHA256()
_MAX_ISSUER_HOPS = 8
"""How many configured CA certificates the issued-by check walks up."""


@runtime_checkable
class TrustRegistry(Protocol):
    """A synchronous registry. Set ``blocking = False`` only if lookups never
    wait on I/O."""

    def tenant_for_host(self, host: str) -> Tenant | None: ...

    def tenant_by_id(self, tenant_id: str) -> Tenant | None: ...


class Miss(enum.Enum):
    """The type of :data:`MISS`."""

    MISS = "miss"


MISS = Miss.MISS
"""What a cache's ``peek_*`` method answers when it does not know (see
:class:`CachedTrustRegistry`)."""


@runtime_checkable
class CachedTrustRegistry(Protocol):
    """A registry that can answer some lookups from memory without waiting
    (:class:`certgate.stores.caching.CachingRegistry`): the gate calls
    ``peek_tenant_for_host`` / ``peek_tenant_by_id`` inline and runs the
    blocking method only when they answer :data:`MISS`."""

    def peek_tenant_for_host(self, host: str) -> Tenant | Miss | None: ...

    def peek_tenant_by_id(self, tenant_id: str) -> Tenant | Miss | None: ...


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
    has_tenant_modes: bool = False
    """Whether any tenant sets its own ``mode`` (see :class:`Tenant`)."""

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
        check_anchor_sharing(list(index.by_id.values()))
        object.__setattr__(
            index, "has_tenant_modes", any(t.mode is not None for t in index.by_id.values())
        )
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


def check_anchor_sharing(tenants: list[Tenant]) -> None:
    """Refuse tenants that share a trust anchor or whose anchor another's issued.

    Raises :class:`ConfigError` naming both tenants, the anchor's subject and
    SHA-256 fingerprint, and how to fix it, unless both tenants set
    ``shared_anchors``.
    """
    owner: dict[bytes, tuple[Tenant, Anchor]] = {}
    for tenant in tenants:
        for anchor in tenant.anchors:
            for key in (anchor.fingerprint, anchor.name_key):
                first = owner.setdefault(key, (tenant, anchor))
                if first[0] is not tenant and not _declared(first[0], tenant):
                    raise ConfigError(
                        _shared_message(first[0], tenant, anchor, key == anchor.fingerprint)
                    )
    _check_issued_anchors(tenants)


def _declared(a: Tenant, b: Tenant) -> bool:
    return a.shared_anchors and b.shared_anchors


def _fingerprint(cert: x509.Certificate) -> str:
    return str(cert.fingerprint(_SHA256).hex())


def _fix(a: Tenant, b: Tenant) -> str:
    return (
        'Anchor each tenant at its own issuing CA (roots = ["customer-issuing-ca.pem"]), '
        f"or, if the sharing is intended, set shared_anchors = true on both {a.id!r} "
        f"and {b.id!r}."
    )


def _shared_message(a: Tenant, b: Tenant, anchor: Anchor, same_cert: bool) -> str:
    how = "the same certificate" if same_cert else "the same subject and public key"
    return (
        f"tenants {a.id!r} and {b.id!r} share the trust anchor {anchor.subject!r} "
        f"(SHA-256 {_fingerprint(anchor.cert)}; {how}): a device of either would be "
        f"accepted on the other's hosts. {_fix(a, b)}"
    )


def _check_issued_anchors(tenants: list[Tenant]) -> None:
    """Refuse an anchor of tenant A issued by an anchor of tenant B.

    Walks up from each anchor, and from every configured CA certificate
    with the anchor's subject and public key (a cross-certificate, the same
    CA to the verifier), that is not self-issued, through the CA
    certificates of the configuration (every tenant's roots and
    intermediates), matching issuer names and checking each signature with
    ``cryptography`` (``verify_directly_issued_by``). This is a load-time
    configuration check, not path validation: a device is still verified
    only by the verifier, against the addressed tenant's anchors.
    """
    by_subject: dict[bytes, list[x509.Certificate]] = {}
    by_identity: dict[bytes, list[x509.Certificate]] = {}
    anchored: dict[bytes, list[Tenant]] = {}
    for tenant in tenants:
        for anchor in tenant.anchors:
            anchored.setdefault(anchor.name_key, []).append(tenant)
        for cert, identity in tenant.ca_name_keys:
            by_subject.setdefault(cert.subject.public_bytes(), []).append(cert)
            by_identity.setdefault(identity, []).append(cert)
    for tenant in tenants:
        for anchor in tenant.anchors:
            for form in _forms_of(anchor, by_identity):
                if form.issuer == form.subject:
                    continue  # self-issued: nothing in the configuration issued it
                issuer = _anchor_above(form, tenant, by_subject, anchored)
                if issuer is not None:
                    raise ConfigError(_issued_message(issuer, tenant, anchor, form))


def _forms_of(
    anchor: Anchor, by_identity: dict[bytes, list[x509.Certificate]]
) -> list[x509.Certificate]:
    """The anchor and every configured CA certificate with its subject and
    public key (a cross-certificate of it, say): each is the same anchor to
    the verifier, so each is walked up."""
    forms = [anchor.cert]
    forms.extend(c for c in by_identity.get(anchor.name_key, ()) if c != anchor.cert)
    return forms


def _issued_message(
    issuer: tuple[Tenant, Anchor], tenant: Tenant, anchor: Anchor, form: x509.Certificate
) -> str:
    other, above = issuer
    what = (
        f"issued tenant {tenant.id!r}'s anchor {anchor.subject!r} (SHA-256 "
        f"{_fingerprint(anchor.cert)})"
    )
    fix = _fix(other, tenant)
    if form != anchor.cert:
        what += (
            f" as the cross-certificate SHA-256 {_fingerprint(form)} in the configuration "
            "(same subject and public key)"
        )
        fix = (
            "Remove that cross-certificate from the configuration, or, if the sharing is "
            f"intended, set shared_anchors = true on both {other.id!r} and {tenant.id!r}."
        )
    return (
        f"tenant {other.id!r}'s trust anchor {above.subject!r} (SHA-256 "
        f"{_fingerprint(above.cert)}) {what}: {other.id!r} would accept every device of "
        f"{tenant.id!r}. {fix}"
    )


def _anchor_above(
    cert: x509.Certificate,
    tenant: Tenant,
    by_subject: dict[bytes, list[x509.Certificate]],
    anchored: dict[bytes, list[Tenant]],
) -> tuple[Tenant, Anchor] | None:
    """The first anchor of another (undeclared) tenant above ``cert``, if any."""
    frontier = [cert]
    seen = {cert.public_bytes(Encoding.DER)}
    for _ in range(_MAX_ISSUER_HOPS):
        upper: list[x509.Certificate] = []
        for child in frontier:
            for candidate in by_subject.get(child.issuer.public_bytes(), ()):
                der = candidate.public_bytes(Encoding.DER)
                if der in seen or not _issued_by(child, candidate):
                    continue
                seen.add(der)
                above = Anchor.of(candidate)
                for other in anchored.get(above.name_key, ()):
                    if other is not tenant and not _declared(other, tenant):
                        return other, above
                upper.append(candidate)
        if not upper:
            return None
        frontier = upper
    return None


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


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

    @property
    def change_token(self) -> object:
        """An object that is replaced whenever any lookup could answer
        differently (the immutable index itself): the gate's decision memo
        is valid only while the token is the same object."""
        return self._index

    @property
    def has_tenant_modes(self) -> bool:
        """Whether any tenant sets its own ``mode``: only then does the gate
        look up the tenant of a request without a certificate (see
        :class:`~certgate.gate.CertGate`)."""
        return self._index.has_tenant_modes

    def tenants(self) -> list[Tenant]:
        """All tenants, in insertion order."""
        return list(self._index.by_id.values())

    def put(self, tenant: Tenant) -> None:
        """Add ``tenant``, or replace the tenant with the same id."""
        with self._lock:
            others = [t for t in self._index.by_id.values() if t.id != tenant.id]
            self._index = HostIndex.build([*others, tenant])

    def swap(self, old: Tenant, new: Tenant) -> bool:
        """Replace ``old`` by ``new`` (same id) only if ``old`` is still the
        registered tenant; returns whether it was. For updates derived from
        a tenant (a refreshed CRL, see :mod:`certgate.crlfetch`) that must
        not undo a replacement made meanwhile (a reload)."""
        if new.id != old.id:
            raise ValueError("swap() replaces a tenant by one with the same id")
        with self._lock:
            if self._index.by_id.get(old.id) is not old:
                return False
            others = [t for t in self._index.by_id.values() if t.id != old.id]
            self._index = HostIndex.build([*others, new])
            return True

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
