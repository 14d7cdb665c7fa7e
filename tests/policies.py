"""A tiny policy of the tests' own, independent of certgate.policy's rules
(so framework tests do not depend on them)."""

from __future__ import annotations

from datetime import datetime

from certgate import ClientIdentity
from certgate.policy import Policy


class CommonName(Policy):
    """The leaf's CN is one of ``names``; the failure text carries a marker
    (``secret-rule-text``) tests look for in logs and never in bodies."""

    names: frozenset[str]

    def __init__(self, *names: str) -> None:
        object.__setattr__(self, "label", f"common_name in {sorted(names)}")
        object.__setattr__(self, "names", frozenset(names))

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        if identity.common_name in self.names:
            return None
        return f"{self.label}: secret-rule-text"
