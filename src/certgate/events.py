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

Events hold strings and numbers only - never the request, the certificate
or an exception - so an observer may keep them.

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


_LEVELS = {
    "no_certificate": logging.INFO,
    "internal_error": logging.ERROR,
    "trust_store_unavailable": logging.ERROR,
}


class Observers:
    """The gate's observers, called in order; a raising observer is logged
    once per (observer, exception type) and skipped."""

    __slots__ = ("_failed", "items")

    def __init__(self, items: tuple[Observer, ...]) -> None:
        self.items = items
        self._failed: set[tuple[int, type[BaseException]]] = set()

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
