"""certgate's framework-agnostic core: facts in, decision out.

:class:`CertGate` takes :class:`~certgate.facts.RequestFacts` and returns a
:class:`~certgate.decision.Decision`. It does not know about ASGI, WSGI,
Flask or Starlette; the adapters in :mod:`certgate.asgi` and
:mod:`certgate.wsgi` translate requests into facts and decisions into
responses.

The order of checks:

1. exempt path -> allowed without identity;
2. pick the certificate: from a **trusted proxy** peer, only the configured
   header sources count (the transport certificate on such a connection is
   the proxy's own); from any other peer, only the TLS transport counts
   (its forwarded headers were already stripped by the adapter);
3. no certificate -> ``no_certificate``;
4. find the tenant: by the ``Host`` header, or by a custom resolver;
5. verify (cache first) against that tenant's trust, at the time of the
   request; check a forwarded fingerprint against the leaf.

A registry lookup that does not answer within ``registry_timeout`` seconds
is a ``503 trust_store_unavailable`` (see :mod:`certgate.lookups`). Any
unexpected exception inside this pipeline is logged and turned into an
``internal_error`` rejection: certgate fails closed, never open and never
with a 500, and a bug is never counted as an attack (``untrusted_chain``).

Nothing a request carries outlives it in the gate: remembered refusals are
:class:`~certgate.cache.Refusal` records of three strings, never exceptions
(see :mod:`certgate.cache`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from .cache import REFUSAL_TTL, Refusal, ValidationCache
from .decision import Decision
from .errors import ConfigError, RegistryTimeout, Rejected
from .exempt import ExemptPaths
from .facts import Presented, RequestFacts
from .hosts import normalize_host
from .identity import ClientIdentity
from .lookups import DEFAULT_REGISTRY_TIMEOUT, bind_registry, check_timeout
from .proxies import TrustedProxies
from .reasons import Reason
from .registry import AsyncTrustRegistry, TrustRegistry
from .sources.base import HeaderSource, header_source
from .sources.known_headers import KNOWN_CERTIFICATE_HEADERS
from .tenant import Tenant
from .verifier import ChainVerifier

logger = logging.getLogger("certgate")

TenantResolver = Callable[[RequestFacts], str | None]
"""Returns the id of the tenant a request is addressed to, or ``None``."""

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


_REMEMBERED_REFUSALS = frozenset(
    {
        Reason.UNTRUSTED_CHAIN,
        Reason.EXPIRED,
        Reason.WRONG_USAGE,
        Reason.WEAK_KEY,
        Reason.MALFORMED_CERTIFICATE,
    }
)
"""Refusals that depend only on the presented bytes, the tenant's trust and a
time that only moves forward - and so may be remembered briefly.
``not_yet_valid`` may turn valid any second, and ``fingerprint_mismatch``
depends on a header outside the cache key."""


class _Pending(NamedTuple):
    presented: Presented
    by_id: bool
    key: str


class CertGate:
    """Verifies client certificates against the trust of the addressed tenant.

    ``registry`` finds tenants (see :mod:`certgate.registry`).
    ``trusted_proxies`` lists the CIDR ranges of socket peers whose
    ``header_sources`` headers are believed; both are empty by default, so
    out of the box only the TLS transport certificate counts.
    ``transport`` enables the TLS transport source. ``exempt_paths`` are
    served without a certificate. ``strip_known_headers`` removes the
    certificate headers of every well-known proxy (not only the configured
    ones) from requests of untrusted peers. ``trust_reported_peer`` lets the
    adapters take the peer address the server reports (``scope["client"]``,
    ``REMOTE_ADDR``) as the socket peer when they cannot see the socket
    themselves - only correct when nothing rewrites that address from
    ``X-Forwarded-For`` (see :func:`certgate.asgi.socket_peer`).
    ``tenant_resolver`` replaces Host-based
    tenant selection (it returns a tenant id). ``cache_size`` bounds the
    verification cache (0 disables it). ``registry_timeout`` (seconds) bounds
    every lookup of a blocking or coroutine registry: past it the request gets
    ``503 trust_store_unavailable`` (see :mod:`certgate.lookups`).
    """

    def __init__(
        self,
        registry: TrustRegistry | AsyncTrustRegistry,
        *,
        trusted_proxies: Iterable[str] = (),
        header_sources: Iterable[HeaderSource | str] = (),
        transport: bool = True,
        exempt_paths: Iterable[str] = (),
        strip_known_headers: bool = True,
        trust_reported_peer: bool = False,
        tenant_resolver: TenantResolver | None = None,
        cache_size: int = 10_000,
        max_chain_depth: int = 8,
        min_rsa_bits: int = 2048,
        registry_timeout: float = DEFAULT_REGISTRY_TIMEOUT,
        clock: Clock = utc_now,
    ) -> None:
        self.registry = registry
        self.registry_timeout = check_timeout(registry_timeout)
        self.proxies = TrustedProxies(trusted_proxies)
        self.header_sources: tuple[HeaderSource, ...] = tuple(
            header_source(s) if isinstance(s, str) else s for s in header_sources
        )
        if self.header_sources and not self.proxies:
            raise ConfigError(
                "header sources are configured but trusted_proxies is empty: the headers "
                "would never be believed. List the CIDR ranges of the proxies that set them."
            )
        if self.proxies and not self.header_sources:
            raise ConfigError(
                "trusted_proxies is set but no header source is configured: requests from "
                "those proxies could never carry a client certificate. Add header_sources."
            )
        self.transport = transport
        self.trust_reported_peer = trust_reported_peer
        self._warned_unknown_peer = False
        self.exempt = ExemptPaths(exempt_paths)
        self.tenant_resolver = tenant_resolver
        self.cache: ValidationCache[ClientIdentity] = ValidationCache(cache_size)
        # Every refusal lives REFUSAL_TTL: insertion order is expiry order.
        self.refusals: ValidationCache[Refusal] = ValidationCache(
            max(1, cache_size // 4) if cache_size else 0, lru=False
        )
        self.verifier = ChainVerifier(max_chain_depth=max_chain_depth, min_rsa_bits=min_rsa_bits)
        self.clock = clock
        names: list[str] = []
        for source in self.header_sources:
            names.extend(n.lower() for n in source.header_names)
        self.header_names: tuple[str, ...] = tuple(dict.fromkeys(names))
        """The forwarded-certificate headers certgate reads, lowercase."""
        strip = set(self.header_names)
        if strip_known_headers:
            strip |= KNOWN_CERTIFICATE_HEADERS
        self.strip_names: frozenset[str] = frozenset(strip)
        """Every header removed from requests of untrusted peers: the ones read,
        plus (by default) every well-known proxy certificate header."""
        self._lookup_host, self._lookup_id, self._alookup_host, self._alookup_id = bind_registry(
            registry, self.registry_timeout
        )

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **overrides: Any) -> CertGate:
        """Build a gate from a TOML file (see the README for the format)."""
        from .config import load_config  # noqa: PLC0415

        config = load_config(path)
        kwargs: dict[str, Any] = dict(config.gate_kwargs)
        kwargs.update(overrides)
        return cls(config.registry, **kwargs)

    # -- public API -------------------------------------------------------

    def peer_is_trusted(self, peer: str | None) -> bool:
        """Whether ``peer`` (the socket peer's IP) may set certificate headers."""
        return self.proxies.contains(peer)

    def note_unknown_peer(self, where: str) -> None:
        """Warn (once) that forwarded headers are ignored because the socket
        peer cannot be known."""
        if self._warned_unknown_peer or not self.proxies:
            return
        self._warned_unknown_peer = True
        logger.warning(
            "certgate: trusted_proxies is set but the socket peer is unknown (%s), so no "
            "forwarded certificate header is believed. Under uvicorn use certgate's protocol "
            "classes (python -m certgate.servers.uvicorn, or certgate.servers.uvicorn.run); if "
            "the reported client address really is the TCP peer (no X-Forwarded-For "
            "rewriting), set trust_reported_peer = true.",
            where,
        )

    def note_stripped(self, peer: str | None, names: Iterable[str]) -> None:
        """Log that certificate headers from an untrusted peer were removed
        (a forgery attempt, or a proxy missing from ``trusted_proxies``)."""
        logger.warning(
            "certgate: removed forwarded certificate header(s) %r from untrusted peer %r",
            sorted(set(names)),
            peer,
            extra={"certgate": {"stripped": sorted(set(names)), "peer": peer}},
        )

    def decide(self, facts: RequestFacts) -> Decision:
        """Decide on a request, calling the registry synchronously."""
        try:
            step = self._begin(facts)
            if isinstance(step, Decision):
                return self.log_decision(step, facts)
            try:
                tenant = self._lookup_id(step.key) if step.by_id else self._lookup_host(step.key)
            except RegistryTimeout as exc:  # a hung registry: fail closed (503)
                return self.log_decision(_timed_out(exc), facts, logging.ERROR)
            except Exception as exc:  # noqa: BLE001 - a registry outage: fail closed (503)
                return self.log_decision(self._registry_failure(exc, facts), facts)
            return self.log_decision(self._finish(step, tenant), facts)
        except Exception as exc:  # noqa: BLE001 - any bug fails closed, never a 500
            return self.log_decision(self._internal_failure(exc, facts), facts)

    async def adecide(self, facts: RequestFacts) -> Decision:
        """Decide on a request without blocking the event loop on the registry."""
        try:
            step = self._begin(facts)
            if isinstance(step, Decision):
                return self.log_decision(step, facts)
            try:
                lookup = self._alookup_id if step.by_id else self._alookup_host
                if lookup is None:  # in-memory registry: no coroutine, no thread hop
                    tenant = (self._lookup_id if step.by_id else self._lookup_host)(step.key)
                else:
                    tenant = await lookup(step.key)
            except RegistryTimeout as exc:  # a hung registry: fail closed (503)
                return self.log_decision(_timed_out(exc), facts, logging.ERROR)
            except Exception as exc:  # noqa: BLE001 - a registry outage: fail closed (503)
                return self.log_decision(self._registry_failure(exc, facts), facts)
            return self.log_decision(self._finish(step, tenant), facts)
        except Exception as exc:  # noqa: BLE001 - any bug fails closed, never a 500
            return self.log_decision(self._internal_failure(exc, facts), facts)

    def check(
        self,
        host: str,
        ders: Sequence[bytes],
        *,
        at: datetime | None = None,
        source: str = "cli",
    ) -> Decision:
        """Verify a certificate chain for ``host`` at ``at`` (default: now).

        For operators and tests: no proxy logic, no cache.
        """
        tenant: Tenant | None = None
        try:
            tenant = self._lookup_host(normalize_host(host, allow_unicode=True))
            if tenant is None:
                raise Rejected(Reason.UNKNOWN_TENANT, f"no tenant for host {host!r}")
            identity = self.verifier.verify(tenant, ders, source=source, now=at or self.clock())
        except Rejected as exc:
            fingerprint = hashlib.sha256(ders[0]).hexdigest() if ders else None
            return Decision(
                reason=exc.reason,
                detail=exc.detail,
                source=source,
                tenant_id=tenant.id if tenant else None,
                fingerprint=fingerprint,
            )
        return Decision(
            identity=identity,
            tenant_id=tenant.id,
            source=source,
            fingerprint=identity.fingerprint_sha256,
        )

    # -- pipeline ---------------------------------------------------------

    def _begin(self, facts: RequestFacts) -> Decision | _Pending:
        if self.exempt and self.exempt.matches(facts.path):
            return Decision(exempt=True)
        presented: Presented | None = None
        try:
            presented = self._select(facts)
            if presented is None:
                raise Rejected(Reason.NO_CERTIFICATE)
            verdict = presented.verdict
            if verdict is not None:  # read, never raised: it is the source's object
                return Decision(
                    reason=verdict.reason, detail=verdict.detail, source=presented.source
                )
            if self.tenant_resolver is not None:
                tenant_id = self.tenant_resolver(facts)
                if tenant_id is None:
                    raise Rejected(Reason.UNKNOWN_TENANT, "resolver returned no tenant")
                return _Pending(presented, True, tenant_id)
            return _Pending(presented, False, normalize_host(facts.host))
        except Rejected as exc:
            return Decision(
                reason=exc.reason, detail=exc.detail, source=presented.source if presented else None
            )

    def _select(self, facts: RequestFacts) -> Presented | None:
        if self.proxies.contains(facts.peer):
            for source in self.header_sources:
                presented = source.extract(facts.headers)
                if presented is not None:
                    return presented
            return None
        return facts.transport if self.transport else None

    def _finish(self, step: _Pending, tenant: Tenant | None) -> Decision:
        presented = step.presented
        if tenant is None:
            what = "tenant id" if step.by_id else "host"
            return Decision(
                reason=Reason.UNKNOWN_TENANT,
                source=presented.source,
                fingerprint=_fingerprint(presented),
                detail=f"no tenant for {what} {step.key!r}",
            )
        try:
            identity = self._verify(tenant, presented)
        except Rejected as exc:
            return Decision(
                reason=exc.reason,
                detail=exc.detail,
                tenant_id=tenant.id,
                source=presented.source,
                fingerprint=exc.fingerprint,
            )
        return Decision(
            identity=identity,
            tenant_id=tenant.id,
            source=presented.source,
            fingerprint=identity.fingerprint_sha256,
            host=None if step.by_id else step.key,
        )

    def _verify(self, tenant: Tenant, presented: Presented) -> ClientIdentity:
        # The validation time is read per request; on the (hot) cache-hit path
        # only a float is needed, so the datetime is built on a miss.
        if self.clock is utc_now:
            stamp = time.time()
            now = None
        else:
            now = self.clock()
            stamp = now.timestamp()
        caching = self.cache.maxsize > 0
        key = b""
        identity = None
        if caching:
            key = (
                tenant.trust_id
                + presented.source.encode()
                + b"\0"
                + hashlib.sha256(presented.material).digest()
            )
            identity = self.cache.get(key, stamp)
            if identity is None:
                refusal = self.refusals.get(key, stamp)
                if refusal is not None:
                    raise refusal.rejected()
        if identity is None:
            try:
                identity = self._verify_cold(tenant, presented, now, stamp)
            except Rejected as exc:
                if caching and exc.reason in _REMEMBERED_REFUSALS:
                    # The record, never the exception: its traceback holds the
                    # request's frames (environ/scope, every header).
                    self.refusals.put(key, Refusal.of(exc), stamp + REFUSAL_TTL, stamp)
                raise
            if caching:
                expires = min([cert.not_valid_after_utc for cert in identity.chain]).timestamp()
                self.cache.put(key, identity, expires, stamp)
        elif (
            presented.expected_sha256 is not None
            and identity.fingerprint_sha256 != presented.expected_sha256
        ):
            raise Rejected(
                Reason.FINGERPRINT_MISMATCH,
                "forwarded SHA-256 differs",
                identity.fingerprint_sha256,
            )
        return identity

    def _verify_cold(
        self, tenant: Tenant, presented: Presented, now: datetime | None, stamp: float
    ) -> ClientIdentity:
        ders = presented.decode()
        leaf_sha256 = hashlib.sha256(ders[0]).hexdigest() if ders else None
        if presented.expected_sha256 is not None and leaf_sha256 != presented.expected_sha256:
            raise Rejected(Reason.FINGERPRINT_MISMATCH, "forwarded SHA-256 differs", leaf_sha256)
        try:
            return self.verifier.verify(
                tenant,
                ders,
                source=presented.source,
                now=now or datetime.fromtimestamp(stamp, UTC),
                leaf_sha256=leaf_sha256,
            )
        except Rejected as exc:
            exc.fingerprint = leaf_sha256
            raise

    def _registry_failure(self, exc: Exception, facts: RequestFacts) -> Decision:
        if isinstance(exc, Rejected):  # a registry may refuse on purpose
            return Decision(reason=exc.reason, detail=exc.detail)
        logger.error(
            "certgate: trust registry failed, request refused (host=%.255r): %.500r",
            facts.host,
            exc,
            exc_info=exc,
        )
        return Decision(reason=Reason.TRUST_STORE_UNAVAILABLE, detail=type(exc).__name__)

    def _internal_failure(self, exc: Exception, facts: RequestFacts) -> Decision:
        if isinstance(exc, Rejected):  # e.g. raised by a custom tenant resolver
            return Decision(reason=exc.reason, detail=exc.detail)
        logger.error(
            "certgate: internal error, request refused (path=%.255r peer=%r): %r",
            facts.path,
            facts.peer,
            exc,
            exc_info=exc,
        )
        detail = f"internal error: {type(exc).__name__}"
        return Decision(reason=Reason.INTERNAL_ERROR, detail=detail)

    def log_decision(
        self, decision: Decision, facts: RequestFacts, level: int | None = None
    ) -> Decision:
        """Log ``decision`` the way certgate logs every decision (``DEBUG``
        per allow; ``WARNING`` per refusal, ``INFO`` for ``no_certificate``,
        or ``level``) and return it. For adapters that refuse a request
        before the gate runs; every text field is ``repr``-escaped."""
        if decision.reason is None:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "certgate: allowed tenant=%s source=%s fingerprint=%s exempt=%s path=%.255r",
                    decision.tenant_id,
                    decision.source,
                    decision.fingerprint,
                    decision.exempt,
                    facts.path,
                )
            return decision
        if level is None:
            level = logging.INFO if decision.reason is Reason.NO_CERTIFICATE else logging.WARNING
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "certgate: rejected reason=%s tenant=%s source=%s fingerprint=%s "
                "host=%.255r peer=%.64r path=%.255r detail=%.500r",
                decision.reason.value,
                decision.tenant_id,
                decision.source,
                decision.fingerprint,
                facts.host,
                facts.peer,
                facts.path,
                decision.detail,
                extra={
                    "certgate": {
                        "reason": decision.reason.value,
                        "tenant": decision.tenant_id,
                        "source": decision.source,
                        "fingerprint": decision.fingerprint,
                        "peer": facts.peer,
                    }
                },
            )
        return decision


def _fingerprint(presented: Presented) -> str | None:
    """SHA-256 of the presented leaf for logs, if it decodes."""
    try:
        ders = presented.decode()
    except Rejected:
        return None
    return hashlib.sha256(ders[0]).hexdigest() if ders else None


def _timed_out(exc: RegistryTimeout) -> Decision:
    """The decision for a registry lookup past its deadline (logged once, at
    ERROR, by the rejection line itself)."""
    return Decision(reason=exc.reason, detail=exc.detail)
