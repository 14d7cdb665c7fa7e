"""When the tenants' CAs stop working: expiry of roots and intermediates.

A tenant whose root expires locks out every one of its devices at once, and
nothing on the request path says so in advance (client certificates warn
through :class:`~certgate.events.ExpiryEvent`; CAs do not present
themselves). :func:`ca_expiry` lists every root and intermediate of the
given tenants with the days it has left and a level:

* ``expired`` - notAfter has passed (or notBefore is still ahead);
* ``critical`` - fewer than ``critical_days`` (14) days left;
* ``warning`` - fewer than ``warning_days`` (30) days left;
* ``ok`` - the rest.

``certgate expiry --config certgate.toml`` prints it for cron and monitoring
and exits 1 when anything is not ``ok``. A CA shared by several tenants is
listed once per tenant (each tenant is locked out on its own).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .errors import ConfigError
from .tenant import Tenant

LEVELS = ("expired", "critical", "warning", "ok")
"""From worst to best."""


@dataclass(frozen=True)
class ExpiryItem:
    """One CA of one tenant and how long it has left."""

    tenant_id: str
    kind: str
    """``"root"`` or ``"intermediate"``."""
    subject: str
    fingerprint_sha256: str
    not_before: dt.datetime
    not_after: dt.datetime
    days_left: float
    level: str

    def as_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return {
            "tenant_id": self.tenant_id,
            "kind": self.kind,
            "subject": self.subject,
            "fingerprint_sha256": self.fingerprint_sha256,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "days_left": round(self.days_left, 2),
            "level": self.level,
        }


def check_thresholds(warning_days: float, critical_days: float) -> None:
    """Raise :class:`ConfigError` unless ``0 <= critical_days <= warning_days``."""
    for name, value in (("warning_days", warning_days), ("critical_days", critical_days)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 36500:
            raise ConfigError(f"{name} must be a number of days from 0 to 36500, not {value!r:.40}")
    if critical_days > warning_days:
        raise ConfigError(
            f"critical_days ({critical_days}) must not exceed warning_days ({warning_days})"
        )


def level_for(days_left: float, *, warning_days: float, critical_days: float) -> str:
    """The level of a CA with ``days_left`` (negative: expired)."""
    if days_left <= 0:
        return "expired"
    if days_left < critical_days:
        return "critical"
    if days_left < warning_days:
        return "warning"
    return "ok"


def ca_expiry(
    tenants: Iterable[Tenant],
    *,
    now: dt.datetime | None = None,
    warning_days: float = 30,
    critical_days: float = 14,
) -> list[ExpiryItem]:
    """Every root and intermediate of ``tenants``, soonest expiry first."""
    check_thresholds(warning_days, critical_days)
    moment = now or dt.datetime.now(dt.UTC)
    items: list[ExpiryItem] = []
    for tenant in tenants:
        for kind, certs in (("root", tenant.roots), ("intermediate", tenant.intermediates)):
            for cert in certs:
                item = _item(
                    tenant.id,
                    kind,
                    cert,
                    moment,
                    warning_days=warning_days,
                    critical_days=critical_days,
                )
                items.append(item)
    items.sort(key=lambda item: (item.not_after, item.tenant_id, item.kind))
    return items


def _item(
    tenant_id: str,
    kind: str,
    cert: x509.Certificate,
    now: dt.datetime,
    *,
    warning_days: float,
    critical_days: float,
) -> ExpiryItem:
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    days_left = (not_after - now).total_seconds() / 86400.0
    level = level_for(days_left, warning_days=warning_days, critical_days=critical_days)
    if not_before > now:
        level = "expired"  # not yet valid: no chain through it verifies today
    return ExpiryItem(
        tenant_id=tenant_id,
        kind=kind,
        subject=cert.subject.rfc4514_string(),
        fingerprint_sha256=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        not_before=not_before,
        not_after=not_after,
        days_left=days_left,
        level=level,
    )


def crl_staleness(tenants: Iterable[Tenant], *, now: dt.datetime | None = None) -> list[ExpiryItem]:
    """Every CRL of ``tenants`` (files and CRLs fetched from ``crl_urls``;
    ``kind`` ``"crl"``, ``subject`` the CRL's issuer and where it came
    from, ``not_before`` / ``not_after`` its thisUpdate / nextUpdate),
    soonest nextUpdate first. The level is ``"expired"`` for a stale CRL -
    past its nextUpdate, or with a thisUpdate ahead: every chain it covers
    is refused (``revocation_unavailable``) unless ``crl_stale = "warn"`` -
    and ``"ok"`` otherwise: CRLs are re-issued every few days, so the CA
    thresholds (30 and 14 days) do not apply to them."""
    moment = now or dt.datetime.now(dt.UTC)
    items: list[ExpiryItem] = []
    for tenant in tenants:
        labelled = [
            (tenant.crl_labels[i] if i < len(tenant.crl_labels) else f"CRL #{i + 1}", crl)
            for i, crl in enumerate(tenant.crls)
        ]
        labelled += [(f"CRL from {url}", crl) for url, crl in tenant.fetched_crls]
        for label, crl in labelled:
            this_update, next_update = crl.last_update_utc, crl.next_update_utc
            if next_update is None:  # refused when the tenant was built
                continue
            stale = not this_update <= moment < next_update
            items.append(
                ExpiryItem(
                    tenant_id=tenant.id,
                    kind="crl",
                    subject=f"{crl.issuer.rfc4514_string()} ({label})",
                    fingerprint_sha256=hashlib.sha256(crl.public_bytes(Encoding.DER)).hexdigest(),
                    not_before=this_update,
                    not_after=next_update,
                    days_left=(next_update - moment).total_seconds() / 86400.0,
                    level="expired" if stale else "ok",
                )
            )
    items.sort(key=lambda item: (item.not_after, item.tenant_id))
    return items
