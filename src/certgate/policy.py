"""Placeholder: replaced by the policy helper's module at merge."""

from __future__ import annotations

from datetime import datetime

from .identity import ClientIdentity


class Policy:
    label: str = "policy"

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        raise NotImplementedError
