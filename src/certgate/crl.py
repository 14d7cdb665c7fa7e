"""Revocation by certificate revocation lists (CRLs), per tenant.

A tenant may carry CRLs (``crls`` on :class:`~certgate.tenant.Tenant`, or
``crls = [...]`` / ``crl_urls = [...]`` in a ``[[tenants]]`` table). Every
CRL is **vetted once**, when the tenant is built (:func:`vet_crl`), and its
revoked serial numbers are indexed once, in a dict keyed by serial, so that
the check on a request is a few dictionary look-ups (:class:`Revocation`).

What is checked when a CRL is loaded (a failure is a
:class:`~certgate.errors.ConfigError` naming the CRL and the rule):

* the CRL's issuer is one of the tenant's roots or intermediates (same
  name) and the CRL's signature verifies with that CA's public key;
* that CA may sign CRLs: ``cRLSign`` in its Key Usage, when it has one;
* the CRL has a nextUpdate;
* every critical CRL extension is understood: CRL Number, Authority Key
  Identifier, Issuer Alternative Name, Authority Information Access and an
  Issuing Distribution Point that only narrows the scope to end-entity or to
  CA certificates. Refused: delta CRLs (Delta CRL Indicator), indirect CRLs
  (``indirectCRL``, or a Certificate Issuer entry extension), CRLs
  partitioned by distribution point name or by reason, attribute-certificate
  CRLs, and any other critical extension;
* every critical entry extension is understood (Reason Code, Invalidity
  Date); an entry with the reason ``removeFromCRL`` (meaningful in delta
  CRLs only) is refused.

What is checked on a request (:meth:`Revocation.check`), for every
certificate of the *verified* chain except the anchor - the leaf and each
intermediate - against the CRL of the certificate that issued it:

* its serial number is not listed -> else ``revoked``;
* that CRL is fresh: ``thisUpdate <= now < nextUpdate`` -> else
  ``revocation_unavailable`` (``crl_stale = "warn"``: logged, allowed);
* an issuer without any CRL is not checked, unless ``require_crl`` is set
  (then ``revocation_unavailable``); a ``crl_urls`` CRL not fetched yet
  makes every chain of the tenant ``revocation_unavailable`` (or a warning).

Among several CRLs of one issuer (a file and a URL, say), the one with the
highest CRL Number (then the latest thisUpdate) is used. Certificates on
hold (``certificateHold``) count as revoked while they are listed.

What is **not** done: OCSP, delta CRLs, indirect CRLs, CRL distribution
points named in certificates (only the configured files and URLs are read),
and revocation of the anchors themselves (remove a revoked root from the
tenant instead).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from .errors import ConfigError, Rejected
from .reasons import Reason

logger = logging.getLogger("certgate")

MAX_CRL_BYTES = 64 * 1024 * 1024
"""Largest CRL file or download read (64 MiB: some 1.8 million entries)."""

STALE_MODES = ("fail", "warn")
"""Values of ``crl_stale``."""

WARN_RECHECK = 60.0
"""Seconds a verification allowed under a stale CRL (``crl_stale = "warn"``)
is cached, so that the warning repeats while the CRL stays stale."""

SCOPE_ALL, SCOPE_EE, SCOPE_CA = 0, 1, 2

_UNDERSTOOD = frozenset(
    {
        ExtensionOID.CRL_NUMBER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.ISSUER_ALTERNATIVE_NAME,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    }
)
_UNDERSTOOD_ENTRY = frozenset(
    {CRLEntryExtensionOID.CRL_REASON, CRLEntryExtensionOID.INVALIDITY_DATE}
)


def load_crls(data: bytes, where: str) -> list[x509.CertificateRevocationList]:
    """Every CRL in ``data``: one DER CRL, or one or more PEM ``X509 CRL``
    blocks. :class:`ConfigError` naming ``where`` when there is none or one
    does not parse."""
    try:
        if b"-----BEGIN" not in data:
            return [x509.load_der_x509_crl(data)]
        blocks = _PEM_CRL.findall(data)
        if not blocks:
            raise ValueError("no PEM 'X509 CRL' block")
        return [x509.load_pem_x509_crl(block) for block in blocks]
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid CRL (PEM or DER): {exc}") from None


_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----[A-Za-z0-9+/=\s]*?-----END X509 CRL-----")


@dataclass(frozen=True, eq=False)
class CrlRecord:
    """One vetted CRL: its issuer, scope, validity and revoked serials.

    ``revoked`` maps each listed serial number to its reason (or ``None``);
    ``scope`` is :data:`SCOPE_ALL`, :data:`SCOPE_EE` (only end-entity
    certificates) or :data:`SCOPE_CA` (only CA certificates), from an
    Issuing Distribution Point. Times are POSIX seconds.
    """

    issuer: x509.Certificate
    revoked: dict[int, x509.ReasonFlags | None]
    this_update: float
    next_update: float
    number: int
    scope: int
    label: str
    crl: x509.CertificateRevocationList

    def fresh(self, now: float) -> bool:
        """Whether ``thisUpdate <= now < nextUpdate``."""
        return self.this_update <= now < self.next_update

    def why_stale(self, now: float) -> str:
        """Why the CRL cannot be used at ``now`` (for a refusal's detail)."""
        if now < self.this_update:
            return f"CRL {self.label} has thisUpdate {_iso(self.this_update)} in the future"
        return f"CRL {self.label} is past its nextUpdate {_iso(self.next_update)}"


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp).astimezone().isoformat(timespec="seconds")


def vet_crl(
    crl: x509.CertificateRevocationList,
    cas: Sequence[x509.Certificate],
    where: str,
) -> CrlRecord:
    """Check ``crl`` against the tenant's CA certificates ``cas`` (see the
    module docstring) and index its serials; :class:`ConfigError` naming
    ``where`` and the rule on any failure."""
    try:
        issuer = _issuer_of(crl, cas, where)
        scope = _check_extensions(crl, where)
        next_update = crl.next_update_utc
        if next_update is None:
            raise ConfigError(
                f"{where}: the CRL has no nextUpdate (its freshness cannot be judged)"
            )
        number = _crl_number(crl)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - lazily parsed fields of a hostile CRL
        raise ConfigError(f"{where}: the CRL does not parse: {exc!r}") from None
    return CrlRecord(
        issuer=issuer,
        revoked=_index(crl, where),
        this_update=crl.last_update_utc.timestamp(),
        next_update=next_update.timestamp(),
        number=number,
        scope=scope,
        label=where,
        crl=crl,
    )


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return -1


def _issuer_of(
    crl: x509.CertificateRevocationList, cas: Sequence[x509.Certificate], where: str
) -> x509.Certificate:
    named = [ca for ca in cas if ca.subject == crl.issuer]
    if not named:
        raise ConfigError(
            f"{where}: the CRL's issuer {crl.issuer.rfc4514_string()!r} is not one of the "
            "tenant's roots or intermediates"
        )
    for ca in named:
        if crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
            try:
                usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
            except x509.ExtensionNotFound:
                return ca
            if not usage.crl_sign:
                raise ConfigError(
                    f"{where}: the CRL's issuer {ca.subject.rfc4514_string()!r} is not allowed "
                    "to sign CRLs (Key Usage without cRLSign)"
                )
            return ca
    raise ConfigError(
        f"{where}: the CRL's signature does not verify with the key of "
        f"{crl.issuer.rfc4514_string()!r} (a forged CRL, or signed by another key)"
    )


def _check_extensions(crl: x509.CertificateRevocationList, where: str) -> int:
    """The CRL's scope; refuses what is not understood."""
    scope = SCOPE_ALL
    for ext in crl.extensions:
        oid = ext.oid
        if oid == ExtensionOID.DELTA_CRL_INDICATOR:
            raise ConfigError(f"{where}: delta CRLs are not supported (configure the full CRL)")
        if oid == ExtensionOID.ISSUING_DISTRIBUTION_POINT:
            scope = _idp_scope(ext.value, where)
        elif ext.critical and oid not in _UNDERSTOOD:
            raise ConfigError(
                f"{where}: the CRL has a critical extension certgate does not understand "
                f"({oid.dotted_string})"
            )
    return scope


def _idp_scope(idp: object, where: str) -> int:
    assert isinstance(idp, x509.IssuingDistributionPoint)
    if idp.indirect_crl:
        raise ConfigError(f"{where}: indirect CRLs are not supported")
    if idp.only_some_reasons:
        raise ConfigError(
            f"{where}: CRLs partitioned by reason (onlySomeReasons) are not supported"
        )
    if idp.only_contains_attribute_certs:
        raise ConfigError(f"{where}: attribute-certificate CRLs are not supported")
    if idp.full_name or idp.relative_name:
        raise ConfigError(
            f"{where}: CRLs partitioned by distribution point (Issuing Distribution Point "
            "with a name) are not supported"
        )
    if idp.only_contains_user_certs:
        return SCOPE_EE
    if idp.only_contains_ca_certs:
        return SCOPE_CA
    return SCOPE_ALL


def _index(crl: x509.CertificateRevocationList, where: str) -> dict[int, x509.ReasonFlags | None]:
    revoked: dict[int, x509.ReasonFlags | None] = {}
    try:
        for entry in crl:
            reason: x509.ReasonFlags | None = None
            extensions = entry.extensions
            if extensions:
                reason = _entry_reason(extensions, where)
            revoked[entry.serial_number] = reason
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed or duplicate entry extension
        raise ConfigError(f"{where}: a CRL entry does not parse: {exc!r}") from None
    return revoked


def _entry_reason(extensions: x509.Extensions, where: str) -> x509.ReasonFlags | None:
    reason: x509.ReasonFlags | None = None
    for ext in extensions:
        if ext.oid == CRLEntryExtensionOID.CERTIFICATE_ISSUER:
            raise ConfigError(
                f"{where}: indirect CRLs (Certificate Issuer entries) are not supported"
            )
        if ext.oid == CRLEntryExtensionOID.CRL_REASON:
            assert isinstance(ext.value, x509.CRLReason)
            reason = ext.value.reason
            if reason is x509.ReasonFlags.remove_from_crl:
                raise ConfigError(f"{where}: removeFromCRL entries belong in delta CRLs only")
        elif ext.critical and ext.oid not in _UNDERSTOOD_ENTRY:
            raise ConfigError(
                f"{where}: a CRL entry has a critical extension certgate does not understand "
                f"({ext.oid.dotted_string})"
            )
    return reason


_Slots = tuple[CrlRecord | None, CrlRecord | None]
"""The CRLs of one issuing CA: for end-entity and for CA certificates."""


def _newer(record: CrlRecord, current: CrlRecord | None) -> bool:
    return current is None or (record.number, record.this_update) > (
        current.number,
        current.this_update,
    )


class Revocation:
    """A tenant's vetted CRLs, indexed for O(1) checks (immutable once built).

    ``records``: vetted CRLs; ``cas``: the tenant's roots and intermediates
    (look-ups are by certificate object, and by subject and key for a
    certificate with the same name and key as one of them); ``pending``:
    configured CRL URLs with no CRL fetched yet; ``stale``: ``"fail"`` or
    ``"warn"``; ``require``: an issuer without a CRL fails closed.
    """

    def __init__(
        self,
        records: Iterable[CrlRecord],
        cas: Sequence[x509.Certificate],
        *,
        pending: tuple[str, ...] = (),
        stale: str = "fail",
        require: bool = False,
    ) -> None:
        from .tenant import name_key  # noqa: PLC0415 - tenant imports this module

        chosen: dict[bytes, list[CrlRecord | None]] = {}
        keys = {id(ca): name_key(ca) for ca in cas}
        for record in records:
            key = keys.get(id(record.issuer)) or name_key(record.issuer)
            slots = chosen.setdefault(key, [None, None])
            for index, excluded in ((0, SCOPE_CA), (1, SCOPE_EE)):
                if record.scope != excluded and _newer(record, slots[index]):
                    slots[index] = record
        self.by_key: dict[bytes, _Slots] = {k: (v[0], v[1]) for k, v in chosen.items()}
        self.by_id: dict[int, _Slots] = {
            id(ca): self.by_key[keys[id(ca)]] for ca in cas if keys[id(ca)] in self.by_key
        }
        # Serial numbers of the tenant's CA objects (reading one costs ~0.4 us).
        self._serials = {id(ca): ca.serial_number for ca in cas}
        self._cas = tuple(cas)  # keeps the objects whose ids the dicts hold alive
        self.pending = pending
        self.stale = stale
        self.require = require

    def check(self, chain: Sequence[x509.Certificate], now: float, tenant_id: str) -> float:
        """Check every certificate of the verified ``chain`` (leaf first) but
        the last against its issuer's CRL at ``now`` (POSIX seconds).

        Returns the time until which this result holds (the earliest
        nextUpdate of the CRLs used; ``inf`` when none was). Raises
        ``Rejected(revoked)`` or ``Rejected(revocation_unavailable)``.
        """
        until = math.inf
        if self.pending:
            pending = ", ".join(self.pending)
            until = self._unusable(f"CRL URL(s) not fetched yet: {pending}", now, tenant_id)
        by_id = self.by_id
        for position in range(1, len(chain)):
            issuer = chain[position]
            slots = by_id.get(id(issuer))
            if slots is None:
                slots = self._slots_by_key(issuer)
            record = None if slots is None else slots[position > 1]
            if record is None:
                if self.require:
                    self._refuse_missing(issuer)
                continue
            cert = chain[position - 1]
            serial = self._serials.get(id(cert))
            if serial is None:
                serial = cert.serial_number
            if serial in record.revoked:
                raise _revoked(cert, position - 1, record)
            if record.this_update <= now < record.next_update:
                until = min(until, record.next_update)
            else:
                until = min(until, self._unusable(record.why_stale(now), now, tenant_id))
        return until

    def _slots_by_key(self, issuer: x509.Certificate) -> _Slots | None:
        if not self.by_key:
            return None
        from .tenant import name_key  # noqa: PLC0415

        try:
            return self.by_key.get(name_key(issuer))
        except Exception:  # noqa: BLE001 - a client-sent CA whose key does not parse
            return None

    def _unusable(self, why: str, now: float, tenant_id: str) -> float:
        if self.stale != "warn":
            raise Rejected(Reason.REVOCATION_UNAVAILABLE, why)
        logger.warning('certgate: tenant %r: %s (crl_stale = "warn": allowed)', tenant_id, why)
        return now + WARN_RECHECK

    def _refuse_missing(self, issuer: x509.Certificate) -> None:
        raise Rejected(
            Reason.REVOCATION_UNAVAILABLE,
            f"no CRL for issuer {issuer.subject.rfc4514_string()!r} (require_crl = true)",
        )


def _revoked(cert: x509.Certificate, position: int, record: CrlRecord) -> Rejected:
    entry = record.crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    reason = record.revoked.get(cert.serial_number)
    when = f" on {entry.revocation_date_utc.isoformat()}" if entry is not None else ""
    why = f" ({reason.value})" if reason is not None else ""
    role = "certificate" if position == 0 else "intermediate CA"
    return Rejected(
        Reason.REVOKED,
        f"{role} {cert.subject.rfc4514_string()!r} serial {cert.serial_number:x} revoked"
        f"{when}{why} by {record.issuer.subject.rfc4514_string()!r} ({record.label})",
    )
