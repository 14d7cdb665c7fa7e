"""When the tenants' CAs stop working: expiry of roots, intermediates and CRLs.

A tenant whose root expires locks out every one of its devices at once, and
nothing on the request path says so in advance (client certificates warn
through :class:`~certgate.events.ExpiryEvent`; CAs do not present
themselves). :func:`ca_expiry` lists every root and intermediate of the
given tenants with the days it has left and a level:

* ``expired`` - notAfter has passed (or notBefore is still ahead);
* ``critical`` - fewer than ``critical_days`` (14) days left;
* ``warning`` - fewer than ``warning_days`` (30) days left;
* ``ok`` - the rest.

It lists every CRL of the tenants too (kind ``"crl"``: the files of
``crls``, and the CRLs fetched from ``crl_urls`` when the tenants hold them),
with the days left until its nextUpdate - past it, the CRL is stale and its
issuer's chains fail closed (``revocation_unavailable``). CRLs are re-issued
far more often than CAs (a 7-day CRL is usual), so they have their own
thresholds: ``crl_warning_days`` (3) and ``crl_critical_days`` (1). A CRL
whose thisUpdate is still ahead is ``expired`` too (it cannot be used yet).

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

CRL_WARNING_DAYS = 3.0
"""Default warning threshold of a CRL's nextUpdate, in days."""

CRL_CRITICAL_DAYS = 1.0
"""Default critical threshold of a CRL's nextUpdate, in days."""


@dataclass(frozen=True)
class ExpiryItem:
    """One CA of one tenant and how long it has left."""

    tenant_id: str
    kind: str
    """``"root"``, ``"intermediate"`` or ``"crl"``."""
    subject: str
    """The CA's subject; for a CRL, its issuer's."""
    fingerprint_sha256: str
    not_before: dt.datetime
    not_after: dt.datetime
    days_left: float
    level: str
    source: str | None = None
    """Where a CRL came from (its file or URL), when known."""

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
            "source": self.source,
        }


def check_thresholds(warning_days: float, critical_days: float, *, prefix: str = "") -> None:
    """Raise :class:`ConfigError` unless ``0 <= critical_days <= warning_days``
    (``prefix`` names them in the message: ``"crl_"`` for CRL thresholds)."""
    warning, critical = f"{prefix}warning_days", f"{prefix}critical_days"
    for name, value in ((warning, warning_days), (critical, critical_days)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 36500:
            raise ConfigError(f"{name} must be a number of days from 0 to 36500, not {value!r:.40}")
    if critical_days > warning_days:
        raise ConfigError(
            f"{critical} ({critical_days}) must not exceed {warning} ({warning_days})"
        )


def level_for(days_left: float, *, warning_days: float, critical_days: float) -> str:
    """The level of a CA (or CRL) with ``days_left`` (negative: expired)."""
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
    crl_warning_days: float = CRL_WARNING_DAYS,
    crl_critical_days: float = CRL_CRITICAL_DAYS,
) -> list[ExpiryItem]:
    """Every root, intermediate and CRL of ``tenants``, soonest end first
    (for a CRL, the end is its nextUpdate)."""
    check_thresholds(warning_days, critical_days)
    check_thresholds(crl_warning_days, crl_critical_days, prefix="crl_")
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
        for crl, source in _crls_of(tenant):
            items.append(
                _crl_item(
                    tenant.id,
                    crl,
                    source,
                    moment,
                    warning_days=crl_warning_days,
                    critical_days=crl_critical_days,
                )
            )
    items.sort(key=lambda item: (item.not_after, item.tenant_id, item.kind))
    return items


def _crls_of(tenant: Tenant) -> list[tuple[x509.CertificateRevocationList, str | None]]:
    """The tenant's CRLs with where each came from: a file (from its
    label, ``...: CRL file PATH``), a label, or a URL."""
    out: list[tuple[x509.CertificateRevocationList, str | None]] = []
    for position, crl in enumerate(tenant.crls):
        label = tenant.crl_labels[position] if position < len(tenant.crl_labels) else None
        if label is not None and _FILE_LABEL in label:
            label = label.split(_FILE_LABEL, 1)[1]
        out.append((crl, label))
    out.extend((crl, url) for url, crl in tenant.fetched_crls)
    return out


_FILE_LABEL = ": CRL file "


def _crl_item(
    tenant_id: str,
    crl: x509.CertificateRevocationList,
    source: str | None,
    now: dt.datetime,
    *,
    warning_days: float,
    critical_days: float,
) -> ExpiryItem:
    this_update = crl.last_update_utc
    # a CRL without nextUpdate never loads (certgate.crl.vet_crl)
    next_update = crl.next_update_utc or this_update
    days_left = (next_update - now).total_seconds() / 86400.0
    level = level_for(days_left, warning_days=warning_days, critical_days=critical_days)
    if this_update > now:
        level = "expired"  # not usable yet: its issuer's chains fail closed
    return ExpiryItem(
        tenant_id=tenant_id,
        kind="crl",
        subject=crl.issuer.rfc4514_string(),
        fingerprint_sha256=hashlib.sha256(crl.public_bytes(Encoding.DER)).hexdigest(),
        not_before=this_update,
        not_after=next_update,
        days_left=days_left,
        level=level,
        source=source,
    )


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
