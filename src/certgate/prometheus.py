"""Prometheus metrics for certgate's decisions: an observer.

::

    from certgate import CertGate
    from certgate.prometheus import PrometheusObserver

    gate = CertGate(registry, observers=[PrometheusObserver()])

Needs the optional extra: ``pip install 'certgate[prometheus]'``
(``prometheus-client``). Serving the metrics (``prometheus_client.make_asgi_app``,
``make_wsgi_app``, ``start_http_server``) is up to the application.

Metrics (with the default ``namespace="certgate"``):

``certgate_decisions_total`` (counter), labels ``tenant``, ``reason``,
``mode``, ``stage``, ``source``
    One per decision event.
``certgate_decision_latency_seconds`` (histogram), labels ``stage``, ``outcome``
    How long the decision took, verification included (a cached verification
    is fast, a cold one is not). Exempt paths are not timed (nothing is
    checked on them).
``certgate_expiring_certificates_total`` (counter), label ``tenant``
    One per :class:`~certgate.events.ExpiryEvent`: a verified client
    certificate expiring within the gate's warning window (counted once per
    verification, not per request served from the verification cache).
``certgate_trust_expiry_seconds`` (gauge), labels ``tenant``, ``kind``, ``fingerprint``
    Seconds until each tenant CA's notAfter (or CRL's nextUpdate), computed
    when scraped;
    negative once expired. Set from each
    :class:`~certgate.events.TrustExpiryEvent` (load, reload, periodic
    check); a CA no longer configured loses its series at the next one.
    ``kind``: ``root``, ``intermediate``, ``crl``, ``other`` for
    anything else; ``fingerprint``: the SHA-256 of the certificate (or CRL),
    64 hex digits - configured objects, so the series are as many as the
    configuration's CAs.
``certgate_config_reloads_total`` (counter), label ``outcome``
    One per load or reload of a gate's TOML file: ``ok`` (the first load
    included) or ``failed`` (the gate kept its configuration).
``certgate_config_last_reload_success_timestamp_seconds`` (gauge)
    POSIX time of the last successful load or reload.

Label values - every one from a small fixed set or from configuration,
never from free text:

``reason``
    ``allowed`` (a verified certificate was accepted), ``exempt`` (an exempt
    path: nothing was checked), ``anonymous`` (let through without a
    certificate, e.g. on an optional path), a refusal's reason code
    (:class:`~certgate.reasons.Reason`, e.g. ``untrusted_chain``,
    ``policy_denied``), or ``other`` for any other text.
``mode``
    ``enforce`` or ``report`` (a report-only refusal let the request
    through; its ``reason`` is still the refusal's), else ``other``.
``stage``
    ``request`` (the middleware) or ``route`` (a decorator or dependency),
    else ``other``.
``outcome``
    ``allowed`` or ``refused`` (a report-only refusal counts as ``refused``:
    it is what enforcing would do).
``source``
    The certificate source's name (``asgi_tls``, ``wsgi_environ``,
    ``cloudflare`` or a custom header source's - names chosen in code or
    configuration), ``none`` when no certificate was
    presented, ``other`` for a name that is not a short identifier.
``tenant``
    The id of the tenant the certificate was checked against - only ids of
    configured tenants, which follow the tenant id grammar; ``_none`` when
    no tenant was found (``unknown_tenant``, ``invalid_host``, ...);
    ``_invalid`` for a value outside the grammar; ``_all`` for every tenant
    when ``tenant_label=False``. The underscore never starts a tenant id, so
    these cannot collide with one.

What is deliberately **not** a label: host, path, peer address, subject,
fingerprint, policy label and detail. They are chosen by clients (or are
unbounded) and each distinct value would make a new time series: a client
sending random paths or Host headers could grow the process's memory and
the Prometheus server's index without bound. They are in every
:class:`~certgate.events.DecisionEvent` and in the log record's
``extra["certgate"]`` instead.

Cardinality: ``certgate_decisions_total`` has up to tenants x reasons x
modes x stages x sources series. With a few hundred tenants that is fine; with
many thousands (or millions) of tenants a per-tenant label is too much for
Prometheus - pass ``tenant_label=False`` to fold all tenants into
``tenant="_all"`` and keep per-tenant detail in logs or events.

The observer is cheap per event: the ``.labels(...)`` children are bound
once and kept in a bounded dictionary (:data:`MAX_BOUND_CHILDREN` entries;
past that, children are looked up through ``prometheus-client`` each time -
still correct, a little slower).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from typing import Final, Generic, TypeVar

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
except ImportError as exc:  # tested with the import blocked
    raise ImportError(
        "certgate.prometheus needs prometheus-client: pip install 'certgate[prometheus]'"
    ) from exc

from .events import (
    STAGE_REQUEST,
    STAGE_ROUTE,
    DecisionEvent,
    ExpiryEvent,
    ReloadEvent,
    TrustExpiryEvent,
)
from .reasons import Reason

__all__ = [
    "DEFAULT_BUCKETS",
    "MAX_BOUND_CHILDREN",
    "PrometheusObserver",
]

DEFAULT_BUCKETS: Final[tuple[float, ...]] = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Latency buckets in seconds, 10 microseconds to 5 seconds: a decision from
the verification cache takes about ten microseconds, a cold verification tens
to hundreds of microseconds, a slow trust registry up to its timeout."""

MAX_BOUND_CHILDREN: Final = 4096
"""How many label combinations keep a pre-bound child per metric."""

ALLOWED: Final = "allowed"
EXEMPT: Final = "exempt"
ANONYMOUS: Final = "anonymous"
OTHER: Final = "other"
REFUSED: Final = "refused"
NO_TENANT: Final = "_none"
ALL_TENANTS: Final = "_all"
INVALID_TENANT: Final = "_invalid"
NO_SOURCE: Final = "none"

_REASONS: Final = frozenset({r.value for r in Reason} | {"policy_denied"})
_MODES: Final = frozenset({"enforce", "report"})
_STAGES: Final = frozenset({STAGE_REQUEST, STAGE_ROUTE})
_TENANT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
"""The tenant id grammar (:data:`certgate.tenant.TENANT_ID_RULE`)."""
_SOURCE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
_KIND: Final = re.compile(r"[a-z][a-z_]{0,31}")
_FINGERPRINT: Final = re.compile(r"[0-9a-f]{64}")

_Series = tuple[str, str, str]


def _reason_label(event: DecisionEvent) -> str:
    """The ``reason`` label of ``event`` (see the module docs)."""
    if event.reason is None:
        if event.exempt or event.access == "exempt":
            return EXEMPT
        if event.fingerprint is None:
            return ANONYMOUS
        return ALLOWED
    return event.reason if event.reason in _REASONS else OTHER


def _tenant_label(tenant: str | None) -> str:
    """The ``tenant`` label for a tenant id (grammar-checked)."""
    if tenant is None:
        return NO_TENANT
    return tenant if _TENANT_ID.fullmatch(tenant) else INVALID_TENANT


def _source_label(source: str | None) -> str:
    """The ``source`` label for a certificate source name."""
    if source is None:
        return NO_SOURCE
    return source if _SOURCE.fullmatch(source) else OTHER


class PrometheusObserver:
    """An :class:`~certgate.events.Observer` that counts and times decisions.

    ``registry``: the ``prometheus_client`` registry to register the metrics
    in (default: the global ``prometheus_client.REGISTRY``). One observer per
    registry and namespace: a second one raises ``ValueError`` (duplicated
    time series). One observer may serve several gates.

    ``tenant_label=False`` folds every tenant into ``tenant="_all"`` (for
    deployments with very many tenants, see the module docs).

    ``buckets``: the latency histogram's buckets in seconds.

    Only fixed-set values and configured names become labels; see the module
    docs for every value.
    """

    __slots__ = (
        "_decisions",
        "_expiring",
        "_expiry_lock",
        "_expiry_series",
        "_last_reload",
        "_latency",
        "_reloads",
        "_tenant_label",
        "_trust_expiry",
    )

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "certgate",
        tenant_label: bool = True,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        reg = REGISTRY if registry is None else registry
        self._tenant_label = tenant_label
        decisions = Counter(
            "decisions",
            "certgate decisions, by tenant, reason ('allowed' for allows), mode, stage "
            "and certificate source",
            ("tenant", "reason", "mode", "stage", "source"),
            namespace=namespace,
            registry=reg,
        )
        latency = Histogram(
            "decision_latency_seconds",
            "Time certgate took to decide (verification included), by stage and outcome",
            ("stage", "outcome"),
            namespace=namespace,
            registry=reg,
            buckets=tuple(buckets),
        )
        expiring = Counter(
            "expiring_certificates",
            "Verified client certificates expiring within the warning window, by tenant "
            "(once per verification)",
            ("tenant",),
            namespace=namespace,
            registry=reg,
        )
        self._decisions = _Bound(decisions)
        self._latency = _Bound(latency)
        self._expiring = _Bound(expiring)
        self._trust_expiry = Gauge(
            "trust_expiry_seconds",
            "Seconds until each tenant CA's notAfter (or CRL's nextUpdate), by tenant, kind "
            "and SHA-256 fingerprint; negative once expired",
            ("tenant", "kind", "fingerprint"),
            namespace=namespace,
            registry=reg,
        )
        self._reloads = Counter(
            "config_reloads",
            "Loads and reloads of certgate's TOML configuration, by outcome (ok, failed)",
            ("outcome",),
            namespace=namespace,
            registry=reg,
        )
        self._last_reload = Gauge(
            "config_last_reload_success_timestamp_seconds",
            "POSIX time of the last successful load or reload of certgate's configuration",
            namespace=namespace,
            registry=reg,
        )
        self._expiry_series: dict[str, dict[_Series, float]] = {}
        self._expiry_lock = threading.Lock()

    def on_decision(self, event: DecisionEvent) -> None:
        """Count the decision and (unless exempt) time it."""
        exempt = event.exempt or event.access == "exempt"
        key = (
            event.tenant if self._tenant_label else None,
            event.reason,
            event.mode,
            event.stage,
            event.source,
            exempt,
            event.fingerprint is None,
        )
        counter = self._decisions.children.get(key)
        if counter is None:
            counter = self._decisions.bind(key, self._decision_labels(event))
        counter.inc()
        if exempt:  # nothing was checked, nothing to time
            return
        timing = (event.stage, event.reason is None)
        histogram = self._latency.children.get(timing)
        if histogram is None:
            stage = event.stage if event.stage in _STAGES else OTHER
            histogram = self._latency.bind(timing, (stage, ALLOWED if timing[1] else REFUSED))
        histogram.observe(max(event.latency_s, 0.0))

    def on_expiring(self, event: ExpiryEvent) -> None:
        """Count the expiring certificate."""
        key = (event.tenant if self._tenant_label else None,)
        counter = self._expiring.children.get(key)
        if counter is None:
            counter = self._expiring.bind(key, (self._tenant(event.tenant),))
        counter.inc()

    def on_reload(self, event: ReloadEvent) -> None:
        """Count the load or reload; note the time of a successful one."""
        self._reloads.labels("ok" if event.ok else "failed").inc()
        if event.ok:
            self._last_reload.set(event.at)

    def on_trust_expiry(self, event: TrustExpiryEvent) -> None:
        """Set a live seconds-until-expiry series per CA (and CRL) of the
        event; drop the series of the same configuration no longer listed."""
        series: dict[_Series, float] = {}
        for item in event.items:
            labels = (
                self._tenant(item.tenant),
                item.kind if _KIND.fullmatch(item.kind) else OTHER,
                item.fingerprint if _FINGERPRINT.fullmatch(item.fingerprint) else OTHER,
            )
            known = series.get(labels)
            series[labels] = item.not_after_ts if known is None else min(known, item.not_after_ts)
        with self._expiry_lock:
            previous = self._expiry_series.get(event.config, {})
            others = {
                labels
                for config, kept in self._expiry_series.items()
                if config != event.config
                for labels in kept
            }
            for labels in previous.keys() - series.keys() - others:
                self._trust_expiry.remove(*labels)
            for labels, not_after in series.items():
                self._trust_expiry.labels(*labels).set_function(_SecondsUntil(not_after))
            self._expiry_series[event.config] = series

    def _tenant(self, tenant: str | None) -> str:
        return _tenant_label(tenant) if self._tenant_label else ALL_TENANTS

    def _decision_labels(self, event: DecisionEvent) -> tuple[str, ...]:
        return (
            self._tenant(event.tenant),
            _reason_label(event),
            event.mode if event.mode in _MODES else OTHER,
            event.stage if event.stage in _STAGES else OTHER,
            _source_label(event.source),
        )


class _SecondsUntil:
    """A gauge's value, computed when scraped: seconds until ``moment``."""

    __slots__ = ("moment",)

    def __init__(self, moment: float) -> None:
        self.moment = moment

    def __call__(self) -> float:
        return self.moment - time.time()


_M = TypeVar("_M", Counter, Histogram)


class _Bound(Generic[_M]):
    """A metric's ``.labels(...)`` children, bound once per key.

    The key is made of the event's raw values (cheaper than computing the
    labels each time); at most :data:`MAX_BOUND_CHILDREN` keys are kept, so
    hostile values can never grow it (the labels themselves come from the
    fixed sets whatever the key).
    """

    __slots__ = ("children", "metric")

    def __init__(self, metric: _M) -> None:
        self.metric: _M = metric
        self.children: dict[tuple[object, ...], _M] = {}

    def bind(self, key: tuple[object, ...], labels: tuple[str, ...]) -> _M:
        child = self.metric.labels(*labels)
        if len(self.children) < MAX_BOUND_CHILDREN:
            self.children[key] = child
        return child
