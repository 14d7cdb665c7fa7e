"""The outcome of certgate's check of one request."""

from __future__ import annotations

from typing import NamedTuple

from .identity import ClientIdentity
from .reasons import Reason


class Decision(NamedTuple):
    """Either an allow (``identity`` set, or ``exempt``) or a rejection
    (``reason`` set). ``detail`` is for logs only, never for clients.

    An immutable ``NamedTuple`` (one is built per request)."""

    identity: ClientIdentity | None = None
    reason: Reason | None = None
    tenant_id: str | None = None
    source: str | None = None
    fingerprint: str | None = None
    detail: str = ""
    exempt: bool = False

    @property
    def allowed(self) -> bool:
        return self.reason is None

    @property
    def status(self) -> int:
        """HTTP status for a rejection (200 when allowed)."""
        return 200 if self.reason is None else self.reason.status
