"""certgate's framework-agnostic core: facts in, decision out.

:class:`CertGate` takes :class:`~certgate.facts.RequestFacts` and returns a
:class:`~certgate.decision.Decision`. It does not know about ASGI, WSGI,
Flask or Starlette; the adapters in :mod:`certgate.asgi` and
:mod:`certgate.wsgi` translate requests into facts and decisions into
responses. Each concern has its own module, and the gate only puts them in
order:

1. the path's rule (:mod:`certgate.rollout`): an exempt path is allowed
   without a look at the request;
2. header trust (:mod:`certgate.trust`, ``gate.trust``): from a **trusted
   proxy** peer only the configured header sources count (the transport
   certificate on such a connection is the proxy's own); from any other
   peer only the TLS transport counts (its forwarded headers were already
   stripped by the adapter);
3. no certificate -> ``no_certificate`` (on an optional path: allowed, no
   identity);
4. the tenant: by the ``Host`` header, or by a custom resolver; where the
   TLS server name (SNI) is known and the certificate came with the TLS
   connection, the SNI's tenant must be that tenant (``sni_mismatch``);
5. cached verification (:mod:`certgate.verification`) against that
   tenant's trust, at the time of the request;
6. authorization (:mod:`certgate.policy`): the tenant's default policy (or
   the gate's ``policy``) and the route's policy -> ``policy_denied``;
7. the mode (:mod:`certgate.rollout`): in report-only mode a refusal is
   recorded but does not block;
8. the observer point (:mod:`certgate.events`): one
   :class:`~certgate.events.DecisionEvent` per decision to every observer -
   certgate's log lines, metrics, your audit trail.

A registry lookup that does not answer within ``registry_timeout`` seconds
is a ``503 trust_store_unavailable`` (see :mod:`certgate.lookups`). Any
unexpected exception inside this pipeline is logged and turned into an
``internal_error`` rejection: certgate fails closed, never open and never
with a 500, and a bug is never counted as an attack (``untrusted_chain``).

Nothing a request carries outlives it in the gate: remembered refusals are
:class:`~certgate.cache.Refusal` records of three strings, never exceptions
(see :mod:`certgate.cache`).

Everything configured lives in one immutable-by-reference
:class:`GateSnapshot` (registry, header trust, rollout, policy, cached
verification, refusal format, decision memo); a :class:`CertGate` holds its
current snapshot and hands every call to it. A request reads that reference
once and decides with it alone, so a reload (:mod:`certgate.reload`) that
swaps in a new snapshot never mixes two configurations in one decision.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from .cache import Refusal, ValidationCache
from .decision import Decision
from .errors import ConfigError, Rejected
from .events import (
    STAGE_REQUEST,
    STAGE_ROUTE,
    DecisionEvent,
    ExpiryEvent,
    LogObserver,
    Observer,
    Observers,
)
from .expiry import CRL_CRITICAL_DAYS, CRL_WARNING_DAYS
from .facts import Presented, RequestFacts
from .hosts import normalize_host
from .identity import ClientIdentity
from .lookups import DEFAULT_REGISTRY_TIMEOUT, bind_registry, check_timeout
from .problem import BodyMaker, RefusalResponse, Refusals
from .proxies import ProxyCA
from .reasons import Reason
from .registry import AsyncTrustRegistry, TrustRegistry
from .rollout import Access, Mode, PathRule, Rollout, Route
from .sources.base import HeaderSource
from .tenant import Tenant
from .trust import HeaderTrust
from .verification import CachedVerification, Clock, leaf_fingerprint, utc_now
from .verifier import ChainVerifier

if TYPE_CHECKING:
    from .events import ReloadEvent, TrustExpiryEvent
    from .policy import Policy
    from .reload import Reloader

logger = logging.getLogger("certgate")

TenantResolver = Callable[[RequestFacts], str | None]
"""Returns the id of the tenant a request is addressed to, or ``None``."""

__all__ = ["CertGate", "Clock", "GateSettings", "GateSnapshot", "TenantResolver", "utc_now"]

_DAY = 86400.0


_RecallKey = tuple[object, ...]

_MEMO_MAX = 4096
"""Most keys the decision memo holds before it is emptied (at most
``cache_size``: the memo never keeps more identities than the cache)."""


class _Recalling(NamedTuple):
    """A request's memo key and what it was checked against."""

    key: _RecallKey
    token: object
    generation: int


_HIT = _Recalling((), None, -1)
"""Stands in for the memo key when :meth:`GateSnapshot._open` found a
remembered decision."""


class _Recall(NamedTuple):
    decision: Decision
    expires: float
    rule: PathRule
    token: object
    generation: int


class _Pending(NamedTuple):
    """A request that needs its tenant looked up. ``preset`` is a decision
    already reached without the tenant (no certificate, a source's verdict):
    the lookup then only names the tenant and its mode."""

    presented: Presented | None
    by_id: bool
    key: str
    rule: PathRule
    preset: Decision | None
    sni: str | None = None
    """The normalized TLS server name whose tenant must be the request's
    (see :meth:`GateSnapshot._sni_check`); ``None``: nothing to compare."""


@dataclass(frozen=True)
class GateSettings:
    """Every setting of a gate: the keyword arguments of :class:`CertGate`
    (see there), as code or a TOML file's ``[certgate]`` table gives them.
    Read once, when a :class:`GateSnapshot` is built from them."""

    trusted_proxies: Iterable[str] = ()
    header_sources: Iterable[HeaderSource | str] = ()
    transport: bool = True
    exempt_paths: Iterable[str] = ()
    routes: Iterable[Route] = ()
    access: Access | str = Access.REQUIRE
    mode: Mode | str = Mode.ENFORCE
    policy: Policy | None = None
    strip_known_headers: bool = True
    trust_reported_peer: bool = False
    trust_unix_socket: bool = False
    proxy_ca: ProxyCA | None = None
    proxy_names: Iterable[str] = ()
    tenant_resolver: TenantResolver | None = None
    cache_size: int = 10_000
    max_chain_depth: int = 8
    min_rsa_bits: int = 2048
    registry_timeout: float = DEFAULT_REGISTRY_TIMEOUT
    clock: Clock = utc_now
    expiry_warning_days: float = 30
    expiry_critical_days: float | None = None
    crl_warning_days: float = CRL_WARNING_DAYS
    crl_critical_days: float = CRL_CRITICAL_DAYS
    refusal_format: str | BodyMaker = "problem+json"


def _check_days(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= 100_000  # also refuses NaN
    ):
        raise ConfigError(
            f"{name} must be a number of days from 0 (off) to 100000, not {value!r:.40}"
        )
    return float(value)


class _ExpiryWarner:
    """After a cold verification: an :class:`ExpiryEvent` when the client
    certificate expires within ``days`` (a plain object, not a method of a
    snapshot, so a verification cache carried into a later snapshot keeps
    no earlier snapshot alive)."""

    __slots__ = ("days", "observers")

    def __init__(self, observers: Observers, days: float) -> None:
        self.observers = observers
        self.days = days

    def __call__(self, identity: ClientIdentity, stamp: float) -> None:
        days_left = (identity.not_after.timestamp() - stamp) / _DAY
        if days_left >= self.days:
            return
        self.observers.expiring(
            ExpiryEvent(
                tenant=identity.tenant_id,
                source=identity.source,
                fingerprint=identity.fingerprint_sha256,
                subject=identity.subject,
                not_after=identity.not_after.astimezone(UTC).isoformat(),
                days_left=round(days_left, 2),
            )
        )


class GateSnapshot:
    """One configuration of a :class:`CertGate`: its registry and every part
    built from its :class:`GateSettings` - header trust, rollout, policy,
    cached verification, refusal format and decision memo.

    A request reads its gate's snapshot once (:attr:`CertGate.snapshot`) and
    decides with that snapshot alone, so a reload (:meth:`CertGate.reload`)
    that swaps in another never changes a request in flight. The pipeline
    (:meth:`decide`, :meth:`adecide`, :meth:`recall`, ...) lives here;
    :class:`CertGate` hands each call to its current snapshot.

    ``verification``: a cached verification to keep (a reload whose
    settings did not change keeps its cache: entries are keyed by each
    tenant's ``trust_id``, so none is reused under other trust).
    ``reuse``: a snapshot of the same settings whose header trust, rollout,
    policy, refusal format and verification are kept as they are.
    """

    def __init__(
        self,
        registry: TrustRegistry | AsyncTrustRegistry,
        settings: GateSettings,
        *,
        observers: Observers,
        observed_allows: bool = False,
        version: int = 0,
        reuse: GateSnapshot | None = None,
        handle: CertGate | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.version = version
        """0 for the snapshot a gate was made with, one more per reload."""
        self.registry_timeout = check_timeout(settings.registry_timeout)
        self.expiry_warning_days = _check_days("expiry_warning_days", settings.expiry_warning_days)
        critical = settings.expiry_critical_days
        self.expiry_critical_days = (
            min(14.0, self.expiry_warning_days)
            if critical is None
            else _check_days("expiry_critical_days", critical)
        )
        if self.expiry_critical_days > self.expiry_warning_days:
            raise ConfigError(
                f"expiry_critical_days ({critical}) must not exceed expiry_warning_days "
                f"({settings.expiry_warning_days})"
            )
        self.crl_warning_days = _check_days("crl_warning_days", settings.crl_warning_days)
        self.crl_critical_days = _check_days("crl_critical_days", settings.crl_critical_days)
        if self.crl_critical_days > self.crl_warning_days:
            raise ConfigError(
                f"crl_critical_days ({settings.crl_critical_days}) must not exceed "
                f"crl_warning_days ({settings.crl_warning_days})"
            )
        self.tenant_resolver = settings.tenant_resolver
        self.clock = settings.clock
        self.observers = observers
        """The observer point: certgate's log observer, then the gate's ``observers``."""
        self._observed_allows = observed_allows
        if reuse is not None:
            self.trust: HeaderTrust = reuse.trust
            self.rollout: Rollout = reuse.rollout
            self.policy: Policy | None = reuse.policy
            self.refusal: Callable[[Reason], RefusalResponse] = reuse.refusal
            self.verification: CachedVerification = reuse.verification
        else:
            self._build(settings)
        listed = getattr(registry, "tenants", None)
        if self.trust.proxy_auth is not None and callable(listed):
            # again for every snapshot: a reload may add a tenant under the proxy CA
            self.trust.proxy_auth.check_separate(listed())
        self._lookup_host, self._lookup_id, self._alookup_host, self._alookup_id = bind_registry(
            registry, self.registry_timeout
        )
        self._memo: dict[_RecallKey, _Recall | None] | None = None
        """The decision memo (see :meth:`_recall`): only where every input of
        a warm allow can be checked for change - an in-memory registry (its
        ``change_token``), the verification cache on, the real clock, Host
        selection, and no observer that wants every allow."""
        if (
            settings.cache_size > 0
            and settings.clock is utc_now
            and settings.tenant_resolver is None
            and not observed_allows
            and hasattr(registry, "change_token")
        ):
            self._memo = {}
        self._memo_max = min(_MEMO_MAX, settings.cache_size)
        self._handle = handle
        self._view: CertGate | None = None

    def _build(self, settings: GateSettings) -> None:
        """The parts made from ``settings`` (each validates its own)."""
        self.trust = HeaderTrust(
            settings.trusted_proxies,
            settings.header_sources,
            transport=settings.transport,
            strip_known_headers=settings.strip_known_headers,
            trust_reported_peer=settings.trust_reported_peer,
            trust_unix_socket=settings.trust_unix_socket,
            proxy_ca=settings.proxy_ca,
            proxy_names=settings.proxy_names,
        )
        self.rollout = Rollout(
            [Route(path, access=Access.EXEMPT) for path in settings.exempt_paths]
            + list(settings.routes),
            access=settings.access,
            mode=settings.mode,
        )
        self.policy = settings.policy
        self.refusal = Refusals(settings.refusal_format)
        """Renders a refusal (status, headers, body) in the gate's format."""
        days = self.expiry_warning_days
        self.verification = CachedVerification(
            ChainVerifier(
                max_chain_depth=settings.max_chain_depth, min_rsa_bits=settings.min_rsa_bits
            ),
            cache_size=settings.cache_size,
            clock=settings.clock,
            on_verified=_ExpiryWarner(self.observers, days) if days > 0 else None,
        )

    def derive(self, **changes: Any) -> GateSnapshot:
        """A copy with some parts replaced (``policy``, ``tenant_resolver``,
        ``verification``) and an empty decision memo: what assigning one of
        those on a gate does. The other parts are shared, not copied."""
        new = copy.copy(self)
        for name, value in changes.items():
            if name not in ("policy", "tenant_resolver", "verification"):
                raise AttributeError(f"{name!r} cannot be replaced on a gate")
            setattr(new, name, value)
        settings_changes = {k: v for k, v in changes.items() if k != "verification"}
        new.settings = dataclasses.replace(self.settings, **settings_changes)
        new._memo = None if self._memo is None else {}
        new._view = None
        return new

    def view(self) -> CertGate:
        """A :class:`CertGate` pinned to this snapshot: every call on it
        decides with this snapshot, whatever reloads happen meanwhile (what
        the middleware hands route-level checks)."""
        view = self._view
        if view is None:
            view = self._view = CertGate._pinned(self, self._handle)
        return view

    # -- the parts, for tests and tools ----------------------------------

    @property
    def cache(self) -> ValidationCache[ClientIdentity]:
        """The verification cache (successes)."""
        return self.verification.cache

    @property
    def refusals(self) -> ValidationCache[Refusal]:
        """The verification cache of remembered refusals."""
        return self.verification.refusals

    @property
    def verifier(self) -> ChainVerifier:
        return self.verification.verifier

    # -- deciding ---------------------------------------------------------

    def decide(self, facts: RequestFacts, *, memo_key: Hashable | None = None) -> Decision:
        """Decide on a request, calling the registry synchronously.

        ``memo_key``: an adapter's own key for the decision memo (see
        :meth:`recall`), built from the same request as ``facts``."""
        start = time.perf_counter()
        tenant: Tenant | None = None
        rule: PathRule | None = None
        recall: _Recalling | None = None
        try:
            rule, recall, step = self._open(facts, memo_key)
            if recall is _HIT and isinstance(step, Decision):
                return step  # a remembered decision, as it was
            if isinstance(step, Decision):
                decision = step
            else:
                try:
                    tenant = (
                        self._lookup_id(step.key) if step.by_id else self._lookup_host(step.key)
                    )
                    sni_tenant = (
                        self._lookup_host(step.sni)
                        if step.sni is not None and tenant is not None
                        else None
                    )
                except Exception as exc:  # noqa: BLE001 - a registry outage: fail closed (503)
                    decision = self._registry_failure(exc, facts, step)
                else:
                    mismatch = self._sni_check(step, tenant, sni_tenant)
                    decision = self._finish(step, tenant) if mismatch is None else mismatch
        except Exception as exc:  # noqa: BLE001 - any bug fails closed, never a 500
            decision = self._internal_failure(exc, facts)
        return self._close(decision, facts, rule=rule, tenant=tenant, start=start, recall=recall)

    async def adecide(self, facts: RequestFacts, *, memo_key: Hashable | None = None) -> Decision:
        """Decide on a request without blocking the event loop on the registry
        (``memo_key``: see :meth:`decide`)."""
        start = time.perf_counter()
        tenant: Tenant | None = None
        rule: PathRule | None = None
        recall: _Recalling | None = None
        try:
            rule, recall, step = self._open(facts, memo_key)
            if recall is _HIT and isinstance(step, Decision):
                return step  # a remembered decision, as it was
            if isinstance(step, Decision):
                decision = step
            else:
                try:
                    lookup = self._alookup_id if step.by_id else self._alookup_host
                    if lookup is None:  # in-memory registry: no coroutine, no thread hop
                        tenant = (self._lookup_id if step.by_id else self._lookup_host)(step.key)
                    else:
                        tenant = await lookup(step.key)
                    sni_tenant = None
                    if step.sni is not None and tenant is not None:
                        by_sni = self._alookup_host
                        if by_sni is None:
                            sni_tenant = self._lookup_host(step.sni)
                        else:
                            sni_tenant = await by_sni(step.sni)
                except Exception as exc:  # noqa: BLE001 - a registry outage: fail closed (503)
                    decision = self._registry_failure(exc, facts, step)
                else:
                    mismatch = self._sni_check(step, tenant, sni_tenant)
                    decision = self._finish(step, tenant) if mismatch is None else mismatch
        except Exception as exc:  # noqa: BLE001 - any bug fails closed, never a 500
            decision = self._internal_failure(exc, facts)
        return self._close(decision, facts, rule=rule, tenant=tenant, start=start, recall=recall)

    def _open(
        self, facts: RequestFacts, memo_key: Hashable | None
    ) -> tuple[PathRule, _Recalling | None, Decision | _Pending]:
        """The first half of :meth:`decide` / :meth:`adecide`, up to the
        registry lookup: the path's rule, the memo key, and a decision
        reached without the tenant or the lookup still to do. A remembered
        decision comes back with ``_HIT`` in place of the memo key (the
        caller returns it as it is)."""
        rule = self.rollout.rule(facts.path)
        recall = None
        if self._memo is not None:
            recall = self._recall_key(facts, rule, memo_key)
            if recall is not None:
                remembered = self._recall(recall, rule)
                if remembered is not None:
                    return rule, _HIT, remembered
        return rule, recall, self._begin(facts, rule)

    def _close(
        self,
        decision: Decision,
        facts: RequestFacts,
        *,
        rule: PathRule | None,
        tenant: Tenant | None,
        start: float,
        recall: _Recalling | None,
    ) -> Decision:
        """The second half: mode and access, observers, the memo."""
        decision = self._conclude(decision, facts, rule, tenant, start)
        if recall is not None:
            self._remember(recall, decision, rule, tenant)
        return decision

    # -- the decision memo ----------------------------------------------

    def remembers(self) -> bool:
        """Whether this gate keeps a decision memo (see :meth:`recall`)."""
        return self._memo is not None

    def recall(self, memo_key: Hashable, path: str) -> Decision | None:
        """A remembered warm allow for an adapter's ``memo_key`` on ``path``,
        or ``None`` (then decide with ``decide(facts, memo_key=...)``).

        The key must capture everything of the request the decision depends
        on besides the path - the raw Host, whether the socket peer is a
        trusted proxy, and the presented certificate exactly as presented -
        and be built the same way for both calls. Everything else (the
        rollout, the registry, the cache, the time) is checked here."""
        if self._memo is None:
            return None
        rule = self.rollout.rule(path)
        recalling = self._recall_key(None, rule, memo_key)
        return None if recalling is None else self._recall(recalling, rule)

    def _recall_key(
        self, facts: RequestFacts | None, rule: PathRule, memo_key: Hashable | None = None
    ) -> _Recalling | None:
        """The memo key of a request - its raw Host, whose certificate counts,
        and the presented certificate (the forwarded header values as sent,
        or the TLS connection's chain digest) - with the registry's change
        token and the cache generation read *before* anything is looked up.
        ``None``: never remembered."""
        if rule is not self.rollout.default_rule:
            return None  # a route covers the path: access, mode or policy of its own
        verification = self.verification
        if (
            self.tenant_resolver is not None  # set since construction: decide afresh
            or type(verification) is not CachedVerification  # a custom one decides every time
            or verification.clock is not utc_now  # a clock the memo's expiry cannot follow
        ):
            return None
        if memo_key is not None:
            key: _RecallKey = ("adapter", memo_key)
        elif facts is None:
            return None
        else:
            built = self._facts_key(facts)
            if built is None:
                return None
            key = built
        return _Recalling(
            key,
            getattr(self.registry, "change_token", None),
            verification.cache.generation,
        )

    def _facts_key(self, facts: RequestFacts) -> _RecallKey | None:
        """The memo key built from :class:`RequestFacts` (adapters that pass
        no key of their own): the raw Host, the SNI, whose certificate counts
        and the presented certificate - with ``proxy_ca``, also the digest of
        the proxy's own certificate that made the peer trusted."""
        trusted = facts.trusted
        if trusted is None:
            trusted = self.trust.trusts(facts.peer, facts.transport)
        if trusted:
            parts: list[object] = [facts.host, facts.sni, True]
            if self.trust.reads_proxy_certificate:
                proxy = facts.transport
                if proxy is None or proxy.digest is None:
                    return None
                parts.append(proxy.digest)
            base = len(parts)
            for name, values in facts.headers.items():
                # The count makes the key unambiguous: a header sent three
                # times is never the same key as two headers sent once.
                parts.append(name)
                parts.append(len(values))
                parts.extend(values)
            if len(parts) == base:
                return None
            return tuple(parts)
        transport = facts.transport if self.trust.transport else None
        if transport is None or transport.digest is None or transport.verdict is not None:
            return None
        return (facts.host, facts.sni, False, transport.source, transport.digest)

    def _recall(self, recall: _Recalling, rule: PathRule) -> Decision | None:
        """A remembered warm allow for ``key``, if nothing it depended on has
        changed: the rollout snapshot (``rule`` is still the default rule
        the decision was made under), the registry's ``change_token``, the
        verification cache's generation (cleared: stale), and the time
        (before the earliest notAfter of the verified chain)."""
        memo = self._memo
        assert memo is not None
        entry = memo.get(recall.key)
        if entry is None:
            return None
        if (
            entry.rule is rule
            and entry.token is recall.token
            and entry.generation == recall.generation
            and time.time() < entry.expires
            and self.policy is None  # a default policy set since: decide afresh
            and not logger.isEnabledFor(logging.DEBUG)
        ):
            return entry.decision
        return None

    def _remember(
        self, recall: _Recalling, decision: Decision, rule: PathRule | None, tenant: Tenant | None
    ) -> None:
        """Remember a warm allow: an identity, no policy involved, on a path
        no route covers. A key is remembered on its second allow only (the
        first leaves a marker), so a scan of one-time certificates costs a
        dict insert, not an entry; the memo is emptied when full."""
        memo = self._memo
        if (
            memo is None
            or decision.reason is not None
            or decision.identity is None
            or rule is None
            or not isinstance(tenant, Tenant)
            or tenant.policy is not None
            or self.policy is not None
        ):
            return
        key = recall.key
        if key not in memo:
            if len(memo) >= self._memo_max:
                memo.clear()
            memo[key] = None  # seen once
            return
        # Seen before (a marker, or a stale entry): replaced in place, so the
        # memo does not grow, and a full memo is not emptied by a promotion.
        expires = decision.identity.expires_at
        memo[key] = _Recall(decision, expires, rule, recall.token, recall.generation)

    def observes_allows(self) -> bool:
        """Whether an allow is observed (an observer besides certgate's log,
        or the ``certgate`` logger at ``DEBUG``): when not, an adapter may
        skip building the event of an allow it can decide itself."""
        return self._observed_allows or logger.isEnabledFor(logging.DEBUG)

    def authorize_route(
        self,
        decision: Decision | None,
        policy: Policy | None = None,
        *,
        path: str,
        host: str | None = None,
        peer: str | None = None,
    ) -> Decision:
        """The route-level check of a decorator or dependency.

        ``decision`` is the middleware's decision for this request (``None``
        when the middleware is not installed: ``internal_error``). Without an
        identity (an optional or exempt path) the route refuses with
        ``no_certificate``; a report-only refusal of the middleware stays
        that refusal; ``policy`` (if any) must hold, else ``policy_denied``.
        The result carries the request's mode: refuse iff
        :attr:`~certgate.decision.Decision.blocks`. Logged and observed as a
        ``route`` decision.
        """
        start = time.perf_counter()
        facts = RequestFacts(host, path, peer, {}, None)
        try:
            result = self._route_result(decision, policy)
        except Exception as exc:  # noqa: BLE001 - a broken policy fails closed
            result = self._internal_failure(exc, facts)
            if decision is not None:
                result = result._replace(tenant_id=decision.tenant_id, mode=decision.mode)
        if decision is None or decision.exempt:
            # No mode from the middleware (missing), or an exempt path's: the
            # path's mode, else the global one (report-only never blocks).
            result = result._replace(mode=self.rollout.rule(path).mode_for(None, None))
        return self._observe(result, facts, STAGE_ROUTE, start)

    def _route_result(self, decision: Decision | None, policy: Policy | None) -> Decision:
        if decision is None:
            return Decision(
                reason=Reason.INTERNAL_ERROR,
                detail="certgate's middleware did not see this request: install it in front "
                "of the app (a route check cannot decide without it)",
            )
        if decision.reason is not None:  # a report-only refusal let through: still refused
            return decision
        identity = decision.identity
        if identity is None:
            return decision._replace(
                reason=Reason.NO_CERTIFICATE,
                detail=f"this route needs a client certificate ({decision.access} path)",
            )
        if policy is not None:
            failed = policy.check(identity, self.clock())
            if failed is not None:
                return decision._replace(
                    reason=Reason.POLICY_DENIED, policy=policy.label, detail=failed
                )
        return decision

    def check(
        self,
        host: str,
        ders: Sequence[bytes],
        *,
        at: datetime | None = None,
        source: str = "cli",
    ) -> Decision:
        """Verify a certificate chain for ``host`` at ``at`` (default: now).

        For operators and tests: no proxy logic, no cache, no policy.
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

    def _begin(self, facts: RequestFacts, rule: PathRule) -> Decision | _Pending:
        if rule.access is Access.EXEMPT:  # no tenant: the path's or the global mode
            return Decision(exempt=True, access=Access.EXEMPT, mode=rule.mode_for(None, None))
        presented: Presented | None = None
        preset: Decision | None = None
        try:
            presented = self.trust.select(facts)
            if presented is None:
                if rule.access is Access.OPTIONAL:
                    preset = Decision(access=Access.OPTIONAL)
                else:
                    preset = Decision(reason=Reason.NO_CERTIFICATE)
            elif presented.verdict is not None:  # read, never raised: the source's object
                verdict = presented.verdict
                preset = Decision(
                    reason=verdict.reason, detail=verdict.detail, source=presented.source
                )
            if preset is not None and not self._mode_needs_tenant(rule):
                return preset  # the tenant could not change the decision: no lookup
            sni: str | None = None
            if preset is None and facts.sni is not None and presented is facts.transport:
                # The certificate came with the TLS connection: the tenant
                # its handshake was addressed to must be the request's.
                try:
                    sni = normalize_host(facts.sni)
                except Rejected:
                    raise Rejected(
                        Reason.SNI_MISMATCH, "the TLS server name is not a valid host name"
                    ) from None
            if self.tenant_resolver is not None:
                try:
                    tenant_id = self.tenant_resolver(facts)
                except Exception:
                    if preset is not None:  # it would only have named the tenant
                        return preset
                    raise
                if tenant_id is None:
                    if preset is not None:
                        return preset
                    raise Rejected(Reason.UNKNOWN_TENANT, "resolver returned no tenant")
                return _Pending(presented, True, tenant_id, rule, preset, sni)
            try:
                host = normalize_host(facts.host)
            except Rejected:
                if preset is not None:
                    return preset
                raise
            # The same name needs no second lookup: it names the same tenant.
            return _Pending(presented, False, host, rule, preset, None if sni == host else sni)
        except Rejected as exc:
            return Decision(
                reason=exc.reason, detail=exc.detail, source=presented.source if presented else None
            )

    def _mode_needs_tenant(self, rule: PathRule) -> bool:
        """Whether a decision reached without the tenant (no certificate, a
        source's verdict) depends on the tenant all the same: only through
        its mode, when the path sets none and some tenant may have one of its
        own (a run-time override, or a registry that says so; a registry
        that does not say - no ``has_tenant_modes`` - may)."""
        if rule.mode is not None:
            return False
        if rule.modes.tenant_modes:
            return True
        return bool(getattr(self.registry, "has_tenant_modes", True))

    def _sni_check(
        self, step: _Pending, tenant: Tenant | None, sni_tenant: Tenant | None
    ) -> Decision | None:
        """Host vs SNI (the emissary-ingress #3340 attack: a certificate
        accepted in a handshake addressed to one tenant, sent with the Host
        of another): when the request's certificate came with its TLS
        connection and the connection's server name is known, the tenant of
        that name must be the tenant the request is addressed to - else
        ``sni_mismatch``. A server name that names no tenant while the Host
        does is a mismatch. No known SNI (not sent, or a server adapter that
        does not record it), a certificate forwarded by a trusted proxy, or
        an exempt path: no check. ``None``: the check passed or did not
        apply."""
        if step.sni is None or tenant is None:
            return None
        if sni_tenant is not None and sni_tenant.id == tenant.id:
            return None
        presented = step.presented
        return Decision(
            reason=Reason.SNI_MISMATCH,
            detail=(
                f"TLS server name {step.sni!r} addresses "
                f"{'tenant ' + repr(sni_tenant.id) if sni_tenant else 'no tenant'}, "
                f"the request tenant {tenant.id!r}"
            ),
            tenant_id=tenant.id,
            source=presented.source if presented else None,
            fingerprint=leaf_fingerprint(presented) if presented else None,
        )

    def _finish(self, step: _Pending, tenant: Tenant | None) -> Decision:
        host = None if step.by_id else step.key
        preset = step.preset
        if preset is not None:
            if tenant is None:
                return preset
            return preset._replace(tenant_id=tenant.id, host=host)
        presented = step.presented
        assert presented is not None  # no preset: a certificate was presented
        if tenant is None:
            what = "tenant id" if step.by_id else "host"
            return Decision(
                reason=Reason.UNKNOWN_TENANT,
                source=presented.source,
                fingerprint=leaf_fingerprint(presented),
                detail=f"no tenant for {what} {step.key!r}",
            )
        try:
            identity = self.verification.verify(tenant, presented)
        except Rejected as exc:
            return Decision(
                reason=exc.reason,
                detail=exc.detail,
                tenant_id=tenant.id,
                source=presented.source,
                fingerprint=exc.fingerprint,
            )
        decision = Decision(
            identity=identity,
            tenant_id=tenant.id,
            source=presented.source,
            fingerprint=identity.fingerprint_sha256,
            host=host,
            access=step.rule.access,
        )
        policy = tenant.policy if tenant.policy is not None else self.policy
        route_policy = step.rule.policy
        if policy is None and route_policy is None:
            return decision
        now = self.clock()
        for candidate in (policy, route_policy):
            if candidate is not None:
                failed = candidate.check(identity, now)
                if failed is not None:
                    return decision._replace(
                        reason=Reason.POLICY_DENIED, policy=candidate.label, detail=failed
                    )
        return decision

    def _registry_failure(self, exc: Exception, facts: RequestFacts, step: _Pending) -> Decision:
        if step.preset is not None:  # the lookup only named the tenant: keep the decision
            return step.preset
        if isinstance(exc, Rejected):  # a timeout, or a registry refusing on purpose
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

    def _conclude(
        self,
        decision: Decision,
        facts: RequestFacts,
        rule: PathRule | None,
        tenant: Tenant | None,
        start: float,
    ) -> Decision:
        """Set the decision's access and mode, and hand it to the observers."""
        if not decision.exempt:
            tenant_mode = tenant.mode if isinstance(tenant, Tenant) else None
            if rule is None:  # the path's rule could not be read: the defaults
                access: Access = Access.REQUIRE
                mode = self.rollout.mode_for(decision.tenant_id, None, tenant_mode)
            else:  # as of the snapshot the request started with
                access = rule.access
                mode = rule.mode_for(decision.tenant_id, tenant_mode)
            if mode != decision.mode or access != decision.access:
                decision = decision._replace(mode=mode, access=access)
        return self._observe(decision, facts, STAGE_REQUEST, start)

    # -- observing --------------------------------------------------------

    def conclude(self, decision: Decision, facts: RequestFacts) -> Decision:
        """Give a decision reached outside the gate (an adapter refusing a
        request before the gate runs) its mode, and observe it like every
        other decision. Returns the decision to act on (``blocks``)."""
        return self._conclude(
            decision, facts, self.rollout.rule(facts.path), None, time.perf_counter()
        )

    def log_decision(
        self, decision: Decision, facts: RequestFacts, level: int | None = None
    ) -> Decision:
        """Observe ``decision`` (logged by certgate's log observer) and return
        it: kept for adapters written against earlier versions; see
        :meth:`conclude`. ``level`` is ignored."""
        return self._observe(decision, facts, STAGE_REQUEST, time.perf_counter())

    def _observe(
        self, decision: Decision, facts: RequestFacts, stage: str, start: float
    ) -> Decision:
        if decision.reason is None and not self.observes_allows():
            return decision  # the hot path: nobody wants an allow event
        identity = decision.identity
        event = DecisionEvent(
            stage=stage,
            reason=None if decision.reason is None else decision.reason.value,
            mode=str(decision.mode),
            access=str(decision.access),
            tenant=decision.tenant_id,
            source=decision.source,
            fingerprint=decision.fingerprint,
            subject=identity.subject if identity is not None else None,
            policy=decision.policy,
            host=facts.host,
            path=facts.path,
            peer=facts.peer,
            detail=decision.detail,
            latency_s=time.perf_counter() - start,
            exempt=decision.exempt,
        )
        self.observers.decision(event)
        return decision


class CertGate:
    """Verifies client certificates against the trust of the addressed tenant.

    ``registry`` finds tenants (see :mod:`certgate.registry`).

    Header trust (:class:`~certgate.trust.HeaderTrust`, ``gate.trust``):
    ``trusted_proxies`` lists the CIDR ranges of socket peers whose
    ``header_sources`` headers are believed; both are empty by default, so
    out of the box only the TLS transport certificate counts.
    ``transport`` enables the TLS transport source. ``strip_known_headers``
    removes the certificate headers of every well-known proxy (not only the
    configured ones) from requests of untrusted peers. ``trust_reported_peer``
    lets the adapters take the peer address the server reports
    (``scope["client"]``, ``REMOTE_ADDR``) as the socket peer when they
    cannot see the socket themselves - only correct when nothing rewrites
    that address from ``X-Forwarded-For`` (see :func:`certgate.asgi.socket_peer`).
    ``trust_unix_socket`` trusts a unix-socket peer (``"unix:"``) as a proxy
    (an explicit opt-in). ``proxy_ca`` (a PEM file, PEM bytes or
    certificates) turns on authenticated proxies: headers count only from a
    peer whose TLS client certificate verifies against it and, when
    ``proxy_names`` is set, has one of those names (CN, DNS or URI SAN);
    with ``trusted_proxies`` also set, both must hold (see
    :mod:`certgate.trust`). A proxy CA that is, or issued, a CA of a tenant
    the registry lists (``registry.tenants()``) is refused (``ConfigError``;
    see :meth:`~certgate.proxies.ProxyAuthenticator.check_separate`), at
    load and at every reload.

    Host vs SNI: when the server adapter recorded the TLS server name
    (:mod:`certgate.sni`) and the certificate came with the TLS connection,
    the tenant of that name must be the request's tenant, else ``403
    sni_mismatch`` (see :meth:`_sni_check`); no known SNI, no check.

    Paths and modes (:class:`~certgate.rollout.Rollout`, ``gate.rollout``):
    ``exempt_paths`` are served without a certificate (short for
    ``Route(path, access="exempt")``); ``routes`` set access, mode and policy
    per path; ``access`` is the default access (``require``, or ``optional``
    to authenticate everywhere and let routes decide); ``mode`` the global
    mode (``enforce`` or ``report``).

    Authorization: ``policy`` is the default policy for tenants that have
    none of their own (see :mod:`certgate.policy`).

    Tenants: ``tenant_resolver`` replaces Host-based tenant selection (it
    returns a tenant id). ``registry_timeout`` (seconds) bounds every lookup
    of a blocking or coroutine registry: past it the request gets ``503
    trust_store_unavailable`` (see :mod:`certgate.lookups`).

    Verification (:class:`~certgate.verification.CachedVerification`,
    ``gate.verification``): ``cache_size`` bounds the verification cache (0
    disables it); ``max_chain_depth`` and ``min_rsa_bits`` go to the
    verifier.

    Observing: ``observers`` receive every decision and expiry warning (see
    :mod:`certgate.events`), after certgate's own log observer.
    ``expiry_warning_days``: a verified client certificate with fewer days
    left gives an :class:`~certgate.events.ExpiryEvent` (0 disables).
    ``refusal_format``: ``"problem+json"`` (default), ``"text"``, ``"html"``
    or a callable (see :mod:`certgate.problem`).

    Reloading (see :mod:`certgate.reload`): a gate made by :meth:`from_toml`
    re-reads its file - tenants, CA and CRL files and the ``[certgate]``
    settings - with :meth:`reload`, on a file change (``watch_interval``)
    or on a signal (:meth:`reload_on_signal`), and swaps in the new
    :class:`GateSnapshot` at once; a request in flight keeps the snapshot
    it started with. A file that does not load changes nothing.
    ``expiry_critical_days`` (default 14, at most ``expiry_warning_days``)
    and ``expiry_warning_days`` are the levels of the tenant CA expiry
    checks (:meth:`check_expiry`); ``crl_warning_days`` (3) and
    ``crl_critical_days`` (1) those of each CRL's nextUpdate (a CRL is
    re-issued often - weekly, say - so the CA levels would keep every CRL
    "critical").
    """

    snapshot: GateSnapshot
    """The snapshot requests are decided with now (a plain attribute: one
    read). Read it once per request: a reload swaps in another, and the old
    one stays valid for the requests that read it."""
    _handle: CertGate
    _reloader: Reloader | None

    def __init__(
        self,
        registry: TrustRegistry | AsyncTrustRegistry,
        *,
        trusted_proxies: Iterable[str] = (),
        header_sources: Iterable[HeaderSource | str] = (),
        transport: bool = True,
        exempt_paths: Iterable[str] = (),
        routes: Iterable[Route] = (),
        access: Access | str = Access.REQUIRE,
        mode: Mode | str = Mode.ENFORCE,
        policy: Policy | None = None,
        strip_known_headers: bool = True,
        trust_reported_peer: bool = False,
        trust_unix_socket: bool = False,
        proxy_ca: ProxyCA | None = None,
        proxy_names: Iterable[str] = (),
        tenant_resolver: TenantResolver | None = None,
        cache_size: int = 10_000,
        max_chain_depth: int = 8,
        min_rsa_bits: int = 2048,
        registry_timeout: float = DEFAULT_REGISTRY_TIMEOUT,
        clock: Clock = utc_now,
        observers: Iterable[Observer] = (),
        expiry_warning_days: float = 30,
        expiry_critical_days: float | None = None,
        crl_warning_days: float = CRL_WARNING_DAYS,
        crl_critical_days: float = CRL_CRITICAL_DAYS,
        refusal_format: str | BodyMaker = "problem+json",
    ) -> None:
        extra = tuple(observers)
        for observer in extra:
            if not isinstance(observer, Observer):
                raise TypeError(
                    f"observer {observer!r} lacks on_decision/on_expiring (see certgate.events)"
                )
        self.observers = Observers((LogObserver(), *extra))
        """The observer point: certgate's log observer, then ``observers``
        (shared by every snapshot of the gate)."""
        settings = GateSettings(
            trusted_proxies=trusted_proxies,
            header_sources=header_sources,
            transport=transport,
            exempt_paths=exempt_paths,
            routes=routes,
            access=access,
            mode=mode,
            policy=policy,
            strip_known_headers=strip_known_headers,
            trust_reported_peer=trust_reported_peer,
            trust_unix_socket=trust_unix_socket,
            proxy_ca=proxy_ca,
            proxy_names=proxy_names,
            tenant_resolver=tenant_resolver,
            cache_size=cache_size,
            max_chain_depth=max_chain_depth,
            min_rsa_bits=min_rsa_bits,
            registry_timeout=registry_timeout,
            clock=clock,
            expiry_warning_days=expiry_warning_days,
            expiry_critical_days=expiry_critical_days,
            crl_warning_days=crl_warning_days,
            crl_critical_days=crl_critical_days,
            refusal_format=refusal_format,
        )
        self._handle = self
        self._reloader = None
        self.snapshot = GateSnapshot(
            registry, settings, observers=self.observers, observed_allows=bool(extra), handle=self
        )

    @classmethod
    def _pinned(cls, snapshot: GateSnapshot, handle: CertGate | None) -> CertGate:
        """A gate that always decides with ``snapshot`` (see :meth:`GateSnapshot.view`)."""
        view = cls.__new__(cls)
        view.observers = snapshot.observers
        view.snapshot = snapshot
        view._handle = handle if handle is not None else view
        view._reloader = None
        return view

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **overrides: Any) -> CertGate:
        """Build a gate from a TOML file (see the README for the format).

        ``overrides`` replace settings of the file's ``[certgate]`` table
        (and stay in force across reloads). The gate can :meth:`reload`;
        ``watch_interval`` and ``expiry_check_interval`` (seconds, from the
        file or ``overrides``) start the file watch and the periodic CA and
        CRL expiry check (see :mod:`certgate.reload`)."""
        from .reload import Reloader  # noqa: PLC0415

        return Reloader.load(cls, path, overrides)

    # -- the current snapshot -------------------------------------------

    def current(self) -> CertGate:
        """This gate pinned to its current snapshot (see :meth:`GateSnapshot.view`)."""
        return self.snapshot.view()

    @property
    def version(self) -> int:
        """How many reloads the current snapshot is from the first (0)."""
        return self.snapshot.version

    # -- reloading (a gate made by from_toml) ---------------------------

    def _reloading(self) -> Reloader:
        reloader = self._handle._reloader
        if reloader is None:
            raise ConfigError(
                "this gate was not loaded from a TOML file: only a gate made by "
                "CertGate.from_toml(...) can reload (for a registry of your own, change "
                "its tenants; they take effect on the next request)"
            )
        return reloader

    def reload(self) -> ReloadEvent:
        """Re-read the TOML file and every file it names, validate all of it,
        and swap in the new snapshot (requests in flight keep theirs).
        Raises :class:`~certgate.errors.ConfigError` saying what to fix - the
        gate then keeps its current snapshot; either way the outcome is
        logged and observed (:class:`~certgate.events.ReloadEvent`). Blocks
        while files are read: from a coroutine, ``await gate.areload()``."""
        return self._reloading().reload("call")

    async def areload(self) -> ReloadEvent:
        """:meth:`reload` in a worker thread (never on the event loop)."""
        import asyncio  # noqa: PLC0415

        return await asyncio.to_thread(self.reload)

    def start_monitor(self) -> None:
        """For a gate made by :meth:`from_toml`: check tenant CA and CRL
        expiry now, and start the file watch (``watch_interval``) and the
        periodic expiry checks (``expiry_check_interval``) in certgate's
        monitor thread. Once per gate; certgate's ASGI and WSGI middlewares
        call it when built around the gate. Any other gate: nothing."""
        reloader = self._handle._reloader
        if reloader is not None:
            reloader.start()

    def watch(self, interval: float) -> None:
        """Check the TOML file and every file it names (their size, mtime and
        inode) every ``interval`` seconds in certgate's monitor thread, and
        reload when one changed; ``0`` stops watching. The same as
        ``watch_interval`` in ``[certgate]`` (and starts the monitor, see
        :meth:`start_monitor`)."""
        reloader = self._reloading()
        reloader.set_watch(interval)
        reloader.start()

    def reload_on_signal(self, signum: int | None = None) -> None:
        """Reload on ``signum`` (default ``SIGHUP``): the handler only queues
        the reload, certgate's monitor thread does it. Only from the main
        thread (Python's rule for signal handlers); see the README for
        uvicorn's and gunicorn's own use of SIGHUP."""
        self._reloading().on_signal(signum)

    def check_expiry(self) -> TrustExpiryEvent:
        """Check every tenant CA against ``expiry_warning_days`` and
        ``expiry_critical_days`` and every CRL against its nextUpdate now
        (see :func:`certgate.reload.check_expiry`), hand the result to the
        observers (certgate logs each one not ``ok``) and return it. Needs a
        registry that lists its tenants (``tenants()``)."""
        from .reload import check_expiry  # noqa: PLC0415

        return check_expiry(self.snapshot, "call", self._handle._config_name())

    def _config_name(self) -> str:
        reloader = self._reloader
        return "" if reloader is None else str(reloader.path)

    def close(self) -> None:
        """Stop watching and the registry's CRL refresher (if any); a tenant
        store opened from the TOML file (``[certgate].registry``) closes its
        poller and connections too."""
        from .config import close_registry  # noqa: PLC0415 - config imports gate's parts

        reloader = self._handle._reloader
        if reloader is not None:
            reloader.close()
        close_registry(self.snapshot.registry)

    # -- the parts (of the current snapshot) ----------------------------

    @property
    def registry(self) -> TrustRegistry | AsyncTrustRegistry:
        return self.snapshot.registry

    @property
    def registry_timeout(self) -> float:
        return self.snapshot.registry_timeout

    @property
    def trust(self) -> HeaderTrust:
        """Header trust (:class:`~certgate.trust.HeaderTrust`)."""
        return self.snapshot.trust

    @property
    def rollout(self) -> Rollout:
        """Paths and modes (:class:`~certgate.rollout.Rollout`)."""
        return self.snapshot.rollout

    @property
    def policy(self) -> Policy | None:
        """The default policy of tenants without their own."""
        return self.snapshot.policy

    @policy.setter
    def policy(self, value: Policy | None) -> None:
        self._replace(policy=value)

    @property
    def tenant_resolver(self) -> TenantResolver | None:
        return self.snapshot.tenant_resolver

    @tenant_resolver.setter
    def tenant_resolver(self, value: TenantResolver | None) -> None:
        self._replace(tenant_resolver=value)

    @property
    def verification(self) -> CachedVerification:
        """Cached verification (:class:`~certgate.verification.CachedVerification`)."""
        return self.snapshot.verification

    @verification.setter
    def verification(self, value: CachedVerification) -> None:
        self._replace(verification=value)

    def _replace(self, **changes: Any) -> None:
        """Swap in the current snapshot with ``changes`` (kept across reloads)."""
        if self._handle is not self:
            raise AttributeError("a gate pinned to a snapshot is read-only: change the gate")
        reloader = self._reloader
        if reloader is None:
            self.snapshot = self.snapshot.derive(**changes)
        else:
            reloader.override(**changes)  # under the reload lock: never lost to a reload

    @property
    def clock(self) -> Clock:
        return self.snapshot.clock

    @property
    def expiry_warning_days(self) -> float:
        return self.snapshot.expiry_warning_days

    @property
    def expiry_critical_days(self) -> float:
        return self.snapshot.expiry_critical_days

    @property
    def crl_warning_days(self) -> float:
        return self.snapshot.crl_warning_days

    @property
    def crl_critical_days(self) -> float:
        return self.snapshot.crl_critical_days

    @property
    def refusal(self) -> Callable[[Reason], RefusalResponse]:
        """Renders a refusal (status, headers, body) in the gate's format."""
        return self.snapshot.refusal

    @property
    def cache(self) -> ValidationCache[ClientIdentity]:
        """The verification cache (successes)."""
        return self.snapshot.verification.cache

    @property
    def refusals(self) -> ValidationCache[Refusal]:
        """The verification cache of remembered refusals."""
        return self.snapshot.verification.refusals

    @property
    def verifier(self) -> ChainVerifier:
        return self.snapshot.verification.verifier

    @property
    def _memo(self) -> dict[_RecallKey, _Recall | None] | None:
        return self.snapshot._memo

    # -- deciding (with the current snapshot) ---------------------------

    def decide(self, facts: RequestFacts, *, memo_key: Hashable | None = None) -> Decision:
        """See :meth:`GateSnapshot.decide`."""
        return self.snapshot.decide(facts, memo_key=memo_key)

    async def adecide(self, facts: RequestFacts, *, memo_key: Hashable | None = None) -> Decision:
        """See :meth:`GateSnapshot.adecide`."""
        return await self.snapshot.adecide(facts, memo_key=memo_key)

    def remembers(self) -> bool:
        """Whether this gate keeps a decision memo (see :meth:`recall`)."""
        return self.snapshot.remembers()

    def recall(self, memo_key: Hashable, path: str) -> Decision | None:
        """See :meth:`GateSnapshot.recall`."""
        return self.snapshot.recall(memo_key, path)

    def observes_allows(self) -> bool:
        """See :meth:`GateSnapshot.observes_allows`."""
        return self.snapshot.observes_allows()

    def authorize_route(
        self,
        decision: Decision | None,
        policy: Policy | None = None,
        *,
        path: str,
        host: str | None = None,
        peer: str | None = None,
    ) -> Decision:
        """See :meth:`GateSnapshot.authorize_route`."""
        return self.snapshot.authorize_route(decision, policy, path=path, host=host, peer=peer)

    def check(
        self,
        host: str,
        ders: Sequence[bytes],
        *,
        at: datetime | None = None,
        source: str = "cli",
    ) -> Decision:
        """See :meth:`GateSnapshot.check`."""
        return self.snapshot.check(host, ders, at=at, source=source)

    def conclude(self, decision: Decision, facts: RequestFacts) -> Decision:
        """See :meth:`GateSnapshot.conclude`."""
        return self.snapshot.conclude(decision, facts)

    def log_decision(
        self, decision: Decision, facts: RequestFacts, level: int | None = None
    ) -> Decision:
        """See :meth:`GateSnapshot.log_decision`."""
        return self.snapshot.log_decision(decision, facts, level)
