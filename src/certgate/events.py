"""Decision events: the one observer point for every decision certgate makes.

Every decision - the middleware's, and every route-level check by a FastAPI
dependency, a Starlette or Flask decorator - becomes one
:class:`DecisionEvent`, handed to each observer of the gate
(``CertGate(observers=[...])``). certgate's own log lines come from
:class:`LogObserver`, which every gate has first; metrics
(:mod:`certgate.prometheus`) and your own audit trail are observers too.

A presented client certificate that expires within ``expiry_warning_days``
(30 by default) also gives one :class:`ExpiryEvent`, once per verification
(a cached verification does not repeat it).

A gate loaded from a TOML file also reports its configuration's life
(observers that define these optional methods get them):

* ``on_reload(event)`` - a :class:`ReloadEvent` per load or reload of the
  file, successful or not (see :mod:`certgate.reload`);
* ``on_trust_expiry(event)`` - a :class:`TrustExpiryEvent` listing every
  tenant CA and CRL with the time it has left, at load, at each reload and periodically.

Events hold strings and numbers only - never the request, the certificate,
a key or an exception - so an observer may keep them.

An observer must be fast and must not raise: it runs on the request path
(on the event loop under ASGI). An observer that raises is logged (once per
observer and exception type) and otherwise ignored: observing never changes
a decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

logger = logging.getLogger("certgate")

STAGE_REQUEST = "request"
"""The middleware's decision on a request."""

STAGE_ROUTE = "route"
"""A route-level check (a decorator or dependency with a policy)."""


class DecisionEvent(NamedTuple):
    """One decision, allowed or refused.

    ``reason`` is ``None`` for an allow; ``mode`` is ``"enforce"`` or
    ``"report"`` (a report-only refusal let the request through);
    ``policy`` is the label of the policy that failed (or ``None``);
    ``access`` the path's access mode (``require``, ``optional``,
    ``exempt``); ``latency_s`` the time the decision took (verification
    included). ``detail`` is for logs only: never show it to clients.

    An immutable ``NamedTuple`` (one is built per decision).
    """

    stage: str
    reason: str | None
    mode: str
    access: str
    tenant: str | None
    source: str | None
    fingerprint: str | None
    subject: str | None
    policy: str | None
    host: str | None
    path: str
    peer: str | None
    detail: str
    latency_s: float
    exempt: bool = False

    @property
    def allowed(self) -> bool:
        """True for an allow (a report-only refusal is not an allow)."""
        return self.reason is None

    @property
    def blocked(self) -> bool:
        """True when the request was refused (a refusal in enforce mode)."""
        return self.reason is not None and self.mode == "enforce"

    def as_dict(self) -> dict[str, object]:
        """Every field, JSON-ready (the ``extra["certgate"]`` of log records)."""
        return {
            "stage": self.stage,
            "reason": self.reason,
            "mode": self.mode,
            "access": self.access,
            "tenant": self.tenant,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "subject": self.subject,
            "policy": self.policy,
            "host": self.host,
            "path": self.path,
            "peer": self.peer,
            "detail": self.detail,
            "latency_s": self.latency_s,
            "exempt": self.exempt,
        }


@dataclass(frozen=True, slots=True)
class ExpiryEvent:
    """A verified client certificate expires within the warning window."""

    tenant: str
    source: str
    fingerprint: str
    subject: str
    not_after: str
    """ISO 8601, UTC."""
    days_left: float

    def as_dict(self) -> dict[str, object]:
        return {
            "tenant": self.tenant,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "subject": self.subject,
            "not_after": self.not_after,
            "days_left": self.days_left,
        }


class ReloadEvent(NamedTuple):
    """One load or reload of a gate's TOML file.

    ``ok``: whether the new configuration was swapped in (when not, the gate
    kept serving ``version``, and ``error`` says what to fix). ``trigger``:
    ``"load"`` (the first), ``"call"`` (:meth:`CertGate.reload`),
    ``"watch"`` (a file changed) or ``"signal"``. ``version``: the
    configuration served afterwards (0 for the first load, one more per
    successful reload). ``settings_changed``: whether ``[certgate]``
    changed (else the settings' parts, verification cache included, were
    kept). ``tenants``: how many the served configuration has.
    """

    ok: bool
    trigger: str
    config: str
    version: int
    error: str | None
    settings_changed: bool
    tenants: int
    duration_s: float
    at: float
    """POSIX time of the outcome."""

    def as_dict(self) -> dict[str, object]:
        return dict(self._asdict())


class TrustExpiry(NamedTuple):
    """How long one CA (or CRL) of one tenant has left.

    ``kind``: ``"root"``, ``"intermediate"`` or ``"crl"``. ``not_after``:
    ISO 8601 UTC (a CRL's nextUpdate). ``level``: ``"expired"``,
    ``"critical"``, ``"warning"`` or ``"ok"`` (a CRL: ``"expired"`` when
    stale, else ``"ok"``; see :mod:`certgate.expiry`).
    ``fingerprint``: SHA-256 of the DER, hex - certificates and CRLs are
    public; nothing private is ever in an event.
    """

    tenant: str
    kind: str
    subject: str
    fingerprint: str
    not_after: str
    not_after_ts: float
    days_left: float
    level: str

    def as_dict(self) -> dict[str, object]:
        return dict(self._asdict())


class TrustExpiryEvent(NamedTuple):
    """The result of one expiry check of a gate's tenant CAs and CRLs:
    every item, soonest first (``ok`` ones included, so a metric can show
    them all). ``trigger``: ``"load"``, ``"reload"``, ``"periodic"`` or
    ``"call"``. ``config``: the TOML file's path (``""`` without one).

    For a tenant store only the late items are listed, at most
    :data:`certgate.reload.MAX_STORE_EXPIRY_ITEMS` (the soonest);
    ``omitted`` counts the late ones left out (``certgate expiry
    --registry URL`` lists them all)."""

    items: tuple[TrustExpiry, ...]
    warning_days: float
    critical_days: float
    trigger: str
    config: str
    at: float
    omitted: int = 0

    @property
    def late(self) -> tuple[TrustExpiry, ...]:
        """The items that are not ``ok``."""
        return tuple(item for item in self.items if item.level != "ok")


@runtime_checkable
class Observer(Protocol):
    """Receives every decision event and expiry warning of a gate."""

    def on_decision(self, event: DecisionEvent) -> None: ...

    def on_expiring(self, event: ExpiryEvent) -> None: ...


class LogObserver:
    """certgate's log lines, one per decision, on the ``certgate`` logger.

    Allows at ``DEBUG``; refusals at ``WARNING`` (``no_certificate`` at
    ``INFO``, ``internal_error`` and ``trust_store_unavailable`` at
    ``ERROR``); report-only refusals at ``WARNING`` with ``mode=report``.
    Every record's ``extra["certgate"]`` holds every field of the event
    (:meth:`DecisionEvent.as_dict`). Text fields are ``repr``-escaped and
    truncated in the message.
    """

    def on_decision(self, event: DecisionEvent) -> None:
        if event.reason is None:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "certgate: allowed tenant=%s source=%s fingerprint=%s exempt=%s "
                    "path=%.255r stage=%s access=%s",
                    event.tenant,
                    event.source,
                    event.fingerprint,
                    event.exempt,
                    event.path,
                    event.stage,
                    event.access,
                    extra={"certgate": event.as_dict()},
                )
            return
        level = _LEVELS.get(event.reason, logging.WARNING)
        if event.mode == "report":
            level = max(level, logging.WARNING)
        if not logger.isEnabledFor(level):
            return
        verb = "would reject (report-only)" if event.mode == "report" else "rejected"
        logger.log(
            level,
            "certgate: %s reason=%s tenant=%s source=%s fingerprint=%s host=%.255r "
            "peer=%.64r path=%.255r detail=%.500r stage=%s access=%s policy=%.200r",
            verb,
            event.reason,
            event.tenant,
            event.source,
            event.fingerprint,
            event.host,
            event.peer,
            event.path,
            event.detail,
            event.stage,
            event.access,
            event.policy,
            extra={"certgate": event.as_dict()},
        )

    def on_expiring(self, event: ExpiryEvent) -> None:
        logger.warning(
            "certgate: client certificate expires in %.1f days: tenant=%s fingerprint=%s "
            "subject=%.300r not_after=%s",
            event.days_left,
            event.tenant,
            event.fingerprint,
            event.subject,
            event.not_after,
            extra={"certgate": event.as_dict()},
        )

    def on_reload(self, event: ReloadEvent) -> None:
        """``INFO`` for a (re)load, ``ERROR`` for a reload that failed."""
        if event.ok:
            logger.info(
                "certgate: configuration %s %s (version %d, %d tenants, settings %s, %.3f s)",
                event.config,
                "loaded" if event.trigger == "load" else f"reloaded ({event.trigger})",
                event.version,
                event.tenants,
                "changed" if event.settings_changed else "unchanged",
                event.duration_s,
                extra={"certgate": event.as_dict()},
            )
            return
        logger.error(
            "certgate: reload (%s) of %s failed, still serving version %d: %s",
            event.trigger,
            event.config,
            event.version,
            event.error,
            extra={"certgate": event.as_dict()},
        )

    _logged_levels: dict[tuple[str, str, str], str] | None = None

    def on_trust_expiry(self, event: TrustExpiryEvent) -> None:
        """A ``WARNING`` per CA or CRL inside the warning window (``ERROR``
        once expired); nothing for the others. A check made by a reload
        (``trigger == "reload"``) logs only the items whose level differs
        from the previous check's - a watched CRL file rewritten hourly does
        not repeat every warning; the periodic checks (daily by default)
        and the first one still log them all."""
        before = self._logged_levels
        self._logged_levels = {(i.tenant, i.kind, i.fingerprint): i.level for i in event.items}
        for item in event.late:
            if (
                event.trigger == "reload"
                and before is not None
                and before.get((item.tenant, item.kind, item.fingerprint)) == item.level
            ):
                continue
            logger.log(
                logging.ERROR if item.level == "expired" else logging.WARNING,
                "certgate: tenant %s %s %s: %.1f days left (%s): fingerprint=%s "
                "subject=%.300r not_after=%s",
                item.kind,
                "has expired" if item.level == "expired" else "expires soon",
                item.tenant,
                item.days_left,
                item.level,
                item.fingerprint,
                item.subject,
                item.not_after,
                extra={"certgate": {**item.as_dict(), "trigger": event.trigger}},
            )
        if event.omitted:
            logger.warning(
                "certgate: %d more late tenant CAs or CRLs not listed (%d shown); "
                "`certgate expiry` lists them all",
                event.omitted,
                len(event.items),
            )


_LEVELS = {
    "no_certificate": logging.INFO,
    "internal_error": logging.ERROR,
    "trust_store_unavailable": logging.ERROR,
}


class Observers:
    """The gate's observers, called in order; a raising observer is logged
    once per (observer, exception type) and skipped. ``on_reload`` and
    ``on_trust_expiry`` go to the observers that define them."""

    __slots__ = ("_failed", "items")

    def __init__(self, items: tuple[Observer, ...]) -> None:
        self.items = items
        self._failed: set[tuple[int, type[BaseException]]] = set()

    def reloaded(self, event: ReloadEvent) -> None:
        self._optional("on_reload", event)

    def trust_expiry(self, event: TrustExpiryEvent) -> None:
        self._optional("on_trust_expiry", event)

    def _optional(self, method: str, event: object) -> None:
        for observer in self.items:
            call = getattr(observer, method, None)
            if call is None:
                continue
            try:
                call(event)
            except Exception as exc:  # noqa: BLE001 - observing never changes anything
                self._failure(observer, exc)

    def decision(self, event: DecisionEvent) -> None:
        for observer in self.items:
            try:
                observer.on_decision(event)
            except Exception as exc:  # noqa: BLE001 - observing never changes a decision
                self._failure(observer, exc)

    def expiring(self, event: ExpiryEvent) -> None:
        for observer in self.items:
            try:
                observer.on_expiring(event)
            except Exception as exc:  # noqa: BLE001
                self._failure(observer, exc)

    def _failure(self, observer: Observer, exc: Exception) -> None:
        key = (id(observer), type(exc))
        if key in self._failed or len(self._failed) > 256:
            return
        self._failed.add(key)
        logger.error(
            "certgate: observer %s raised %s; ignored (logged once)",
            type(observer).__name__,
            type(exc).__name__,
            exc_info=exc,
        )
