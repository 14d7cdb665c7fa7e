"""The outcome of certgate's check of one request."""

from __future__ import annotations

import logging
from typing import NamedTuple

from .errors import Rejected
from .hosts import normalize_host
from .identity import ClientIdentity
from .reasons import Reason

logger = logging.getLogger("certgate")


class Decision(NamedTuple):
    """Either an allow (``reason`` is ``None``) or a refusal (``reason``
    set). ``detail`` is for logs only, never for clients.

    An allow carries the ``identity``, or none on an exempt path and on an
    optional path without a certificate. A refusal in report-only mode
    (``mode == "report"``) does not block the request, and keeps the
    identity when the certificate itself was valid (a ``policy_denied``).
    ``bool(decision)`` is true only for an allow; :attr:`blocks` says whether
    an adapter must answer with the refusal.

    An immutable ``NamedTuple`` (one is built per request)."""

    identity: ClientIdentity | None = None
    reason: Reason | None = None
    tenant_id: str | None = None
    source: str | None = None
    fingerprint: str | None = None
    detail: str = ""
    exempt: bool = False
    host: str | None = None
    """The normalised Host the tenant was selected by (``None`` with a
    custom tenant resolver)."""
    mode: str = "enforce"
    """``"enforce"``, or ``"report"``: a refusal in report-only mode is logged
    and observed but the request goes through (see :attr:`blocks`)."""
    access: str = "require"
    """The path's access mode: ``require``, ``optional`` or ``exempt``."""
    policy: str | None = None
    """The label of the policy that refused the certificate
    (``policy_denied``), for logs and events only."""

    def identity_for_host(self, raw_host: str | None) -> ClientIdentity | None:
        """The identity, provided the application still sees the Host it was
        verified for.

        A middleware between certgate and the application that rewrites the
        Host (Werkzeug's ``ProxyFix(x_host=...)``, say) would otherwise let a
        certificate verified for one tenant be served another tenant's pages.
        On a mismatch the identity is withheld and the cause logged.
        """
        if self.identity is None or self.host is None:
            return self.identity
        try:
            seen = normalize_host(raw_host)
        except Rejected:
            seen = None
        if seen == self.host:
            return self.identity
        logger.error(
            "certgate: the application sees Host %.255r but the client certificate was "
            "verified for %r: something between certgate and the application rewrote the "
            "Host (ProxyFix(x_host=...)?). The identity is withheld. Put such middleware "
            "outside certgate so both see the same Host.",
            raw_host,
            self.host,
        )
        return None

    @property
    def allowed(self) -> bool:
        return self.reason is None

    def __bool__(self) -> bool:
        """True only for an allow: ``if gate.decide(facts):`` must never let a
        refusal through (a plain tuple is always true)."""
        return self.reason is None

    @property
    def blocks(self) -> bool:
        """True when the request must be refused: a refusal in enforce mode."""
        return self.reason is not None and self.mode == "enforce"

    @property
    def status(self) -> int:
        """HTTP status for a rejection (200 when allowed)."""
        return 200 if self.reason is None else self.reason.status
