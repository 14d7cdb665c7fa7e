"""Reads over a whole tenant store, in pages: the CA bundle and CA/CRL expiry.

What ``certgate bundle``, ``certgate expiry`` and a gate's periodic expiry
check (:func:`certgate.reload.check_expiry`) need of a store of any size.
Every read is paged - at most :data:`PAGE` rows per query, each page in its
own read snapshot, in primary-key order - so memory holds one page and a
bounded memo, never the tenant set; a tenant changed during a scan is seen
as it was when its page was read.

* :func:`ca_certificates`: every root and intermediate some tenant uses,
  once each (the ``certificates`` table is already de-duplicated), by
  SHA-256 order.
* :func:`store_expiry`: the schema has no column for a certificate's
  notAfter or a CRL's nextUpdate (adding one needs a schema version), so
  this parses stored DER. First every distinct CA certificate is read once
  (one pass over ``certificates``); only when some is late (or ``every``)
  are the tenants that use one found, by a pass over
  ``tenant_certificates`` in primary-key order. Then every CRL row is read
  (its DER fetched only when its SHA-256 is not in the memo). Cost: one
  parse per distinct certificate and per distinct CRL, plus one row per
  tenant-certificate link when something is late.

Nothing here verifies anything: the dates are read from certificates that
were vetted when they were written.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..errors import ConfigError, TrustStoreUnavailable
from ..expiry import ExpiryItem, check_thresholds, level_for
from ..text import safe_text
from .sql import SqlTenantStore

PAGE = 500
"""Rows per query of a scan."""

MEMO = 10_000
"""Parsed certificates (and CRLs) remembered by SHA-256 during a scan."""

MAX_LATE_SET = 100_000
"""Most late certificates (their SHA-256) a scan keeps to skip the links of
the others; with more, each link's certificate is looked up (through the
memo)."""

_FILE_LABEL = ": CRL file "


def store_of(registry: object) -> SqlTenantStore | None:
    """The SQL store behind ``registry`` (the registry itself, or the inner
    registry of a :class:`~certgate.stores.caching.CachingRegistry`), or
    ``None`` when there is none."""
    for candidate in (registry, getattr(registry, "inner", None)):
        if isinstance(candidate, SqlTenantStore):
            return candidate
    return None


def _rows(store: SqlTenantStore, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """One page, in one read snapshot; :class:`TrustStoreUnavailable` once
    ``store`` is closed (``gate.close()``, a reload that replaced it): a scan
    of a million tenants must not go on for minutes after."""
    if store.closed:
        raise TrustStoreUnavailable(f"{store.where}: the store was closed during the scan")
    session = store.session()
    with session.snapshot():
        return store._sql(session, sql, params)


def ca_certificates(
    store: SqlTenantStore, *, page: int = PAGE, used_only: bool = True
) -> Iterator[tuple[bytes, bytes]]:
    """``(sha256, der)`` of every CA certificate some tenant uses, once
    each, in SHA-256 order, ``page`` rows per query. ``used_only=False``
    skips the check that a tenant uses it (writers delete unused ones
    anyway; one indexed probe less per certificate)."""
    used = (
        " AND EXISTS (SELECT 1 FROM tenant_certificates tc WHERE tc.sha256 = c.sha256)"
        if used_only
        else ""
    )
    after = b""
    while True:
        rows = _rows(
            store,
            f"SELECT c.sha256, c.der FROM certificates c WHERE c.sha256 > ?{used} "  # noqa: S608
            "ORDER BY c.sha256 LIMIT ?",
            (after, page),
        )
        for sha, der in rows:
            yield bytes(sha), bytes(der)
        if len(rows) < page:
            return
        after = bytes(rows[-1][0])


def bundle_pem(store: SqlTenantStore) -> Iterator[str]:
    """The PEM of every CA certificate of ``store`` (see :func:`ca_certificates`)."""
    for sha, der in ca_certificates(store):
        yield _certificate(store, sha, der).public_bytes(Encoding.PEM).decode()


def _certificate(store: SqlTenantStore, sha: bytes, der: bytes) -> x509.Certificate:
    """The stored certificate ``sha``; a :class:`ConfigError` naming it and
    the tenants using it when its DER does not parse (a damaged store, or
    rows written by something other than certgate: certgate vets what it
    writes)."""
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        rows = _rows(
            store, "SELECT tenant_id FROM tenant_certificates WHERE sha256 = ? LIMIT 3", (sha,)
        )
        users = ", ".join(repr(safe_text(str(row[0]), 100)) for row in rows) or "no tenant"
        raise ConfigError(
            f"{store.where}: the stored CA certificate {sha.hex()} (used by {users}) does not "
            f"parse ({safe_text(str(exc), 200)}): the store is damaged or was written by "
            "something other than certgate: remove those tenants (`certgate tenants remove ID "
            "--registry URL`) and add them again, or restore a backup"
        ) from None


class _Dates:
    """What an expiry item needs of a certificate (or a CRL): its dates, and
    its subject (a CRL's: its issuer) as text - for a certificate made only
    when asked for: building the name (``cert.subject``) costs several times
    the parse of the whole certificate, and most certificates are not late."""

    __slots__ = ("_of", "_text", "end", "start")

    def __init__(self, start: dt.datetime, end: dt.datetime, of: x509.Certificate | str) -> None:
        self.start = start
        self.end = end
        self._of: x509.Certificate | None = None
        self._text = ""
        if isinstance(of, str):
            self._text = of
        else:
            self._of = of

    @property
    def subject(self) -> str:
        if self._of is not None:
            self._text = self._of.subject.rfc4514_string()
            self._of = None
        return self._text


def _cert_dates(store: SqlTenantStore, sha: bytes, der: bytes) -> _Dates:
    cert = _certificate(store, sha, der)
    return _Dates(cert.not_valid_before_utc, cert.not_valid_after_utc, cert)


def _crl_dates(store: SqlTenantStore, tenant_id: str, position: int, der: bytes) -> _Dates:
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise ConfigError(
            f"{store.where}: CRL {position} of tenant {safe_text(tenant_id, 100)!r} does not "
            f"parse ({safe_text(str(exc), 200)}): the store is damaged or was written by "
            "something other than certgate: remove the tenant and add it again, or restore a backup"
        ) from None
    start = crl.last_update_utc
    # a CRL without nextUpdate is never stored (certgate.crl.vet_crl); the
    # issuer as text now: a memo must not keep CRLs (up to MAX_CRL_BYTES each)
    return _Dates(start, crl.next_update_utc or start, crl.issuer.rfc4514_string())


class _Memo:
    """A bounded LRU of parsed dates by SHA-256."""

    def __init__(self, size: int = MEMO) -> None:
        self.size = size
        self._items: OrderedDict[bytes, _Dates] = OrderedDict()

    def get(self, sha: bytes) -> _Dates | None:
        found = self._items.get(sha)
        if found is not None:
            self._items.move_to_end(sha)
        return found

    def put(self, sha: bytes, dates: _Dates) -> None:
        self._items[sha] = dates
        if len(self._items) > self.size:
            self._items.popitem(last=False)


@dataclass(frozen=True)
class Levels:
    """The thresholds of a scan and the time it is made at."""

    now: dt.datetime
    warning_days: float
    critical_days: float
    crl_warning_days: float
    crl_critical_days: float

    def level(self, dates: _Dates, *, crl: bool) -> tuple[float, str]:
        """Days left and level of ``dates`` (not yet valid: ``expired``)."""
        days_left = (dates.end - self.now).total_seconds() / 86400.0
        level = level_for(
            days_left,
            warning_days=self.crl_warning_days if crl else self.warning_days,
            critical_days=self.crl_critical_days if crl else self.critical_days,
        )
        if dates.start > self.now:
            level = "expired"
        return days_left, level


def store_expiry(
    store: SqlTenantStore,
    *,
    now: dt.datetime | None = None,
    warning_days: float = 30,
    critical_days: float = 14,
    crl_warning_days: float = 3,
    crl_critical_days: float = 1,
    every: bool = False,
) -> Iterator[ExpiryItem]:
    """Every root and intermediate of every tenant of ``store`` that is not
    ``ok`` at these thresholds (``every``: all of them), in tenant order,
    then every such CRL, in tenant order (see the module docstring; the
    items are those :func:`certgate.expiry.ca_expiry` gives for the same
    tenants, not sorted)."""
    check_thresholds(warning_days, critical_days)
    check_thresholds(crl_warning_days, crl_critical_days, prefix="crl_")
    levels = Levels(
        now or dt.datetime.now(dt.UTC),
        warning_days,
        critical_days,
        crl_warning_days,
        crl_critical_days,
    )
    yield from _cert_items(store, levels, every=every)
    yield from _crl_items(store, levels, every=every)


def _cert_items(store: SqlTenantStore, levels: Levels, *, every: bool) -> Iterator[ExpiryItem]:
    memo = _Memo()
    late: set[bytes] | None = None  # SHA-256 of the late certificates; None: not known
    if not every:
        late = set()
        for sha, der in ca_certificates(store, used_only=False):
            if levels.level(_cert_dates(store, sha, der), crl=False)[1] != "ok":
                late.add(sha)
                if len(late) > MAX_LATE_SET:
                    late = None  # too many to keep: each link's certificate is looked up
                    break
        if late is not None and not late:
            return  # the usual day: nothing late, no tenant read
    after: tuple[str, str, int] = ("", "", -1)
    while True:
        rows = _rows(
            store,
            "SELECT tc.tenant_id, tc.role, tc.position, tc.sha256 FROM tenant_certificates tc "
            "WHERE (tc.tenant_id, tc.role, tc.position) > (?, ?, ?) "
            "ORDER BY tc.tenant_id, tc.role, tc.position LIMIT ?",
            (*after, PAGE),
        )
        wanted = [row for row in rows if late is None or bytes(row[3]) in late]
        _fill(store, memo, {bytes(row[3]) for row in wanted})
        for tenant_id, role, _position, sha in wanted:
            key = bytes(sha)
            dates = memo.get(key)
            if dates is None:
                continue  # removed since its link was read
            days_left, level = levels.level(dates, crl=False)
            if every or level != "ok":
                yield ExpiryItem(
                    tenant_id=str(tenant_id),
                    kind=str(role),
                    subject=dates.subject,
                    fingerprint_sha256=key.hex(),
                    not_before=dates.start,
                    not_after=dates.end,
                    days_left=days_left,
                    level=level,
                )
        if len(rows) < PAGE:
            return
        last = rows[-1]
        after = (str(last[0]), str(last[1]), int(last[2]))


def _fill(store: SqlTenantStore, memo: _Memo, shas: set[bytes]) -> None:
    """Parse the certificates of ``shas`` not in ``memo`` into it."""
    missing = [sha for sha in shas if memo.get(sha) is None]
    for start in range(0, len(missing), PAGE):
        chunk = missing[start : start + PAGE]
        marks = ", ".join("?" * len(chunk))
        rows = _rows(
            store,
            f"SELECT sha256, der FROM certificates WHERE sha256 IN ({marks})",  # noqa: S608
            tuple(chunk),
        )
        for sha, der in rows:
            memo.put(bytes(sha), _cert_dates(store, bytes(sha), bytes(der)))


def _crl_items(store: SqlTenantStore, levels: Levels, *, every: bool) -> Iterator[ExpiryItem]:
    memo = _Memo()
    after: tuple[str, int] = ("", -1)
    while True:
        rows = _rows(
            store,
            "SELECT tenant_id, position, sha256, label FROM crls "
            "WHERE (tenant_id, position) > (?, ?) ORDER BY tenant_id, position LIMIT ?",
            (*after, PAGE),
        )
        for tenant_id, position, sha, label in rows:
            key = bytes(sha)
            dates = memo.get(key)
            if dates is None:
                ders = _rows(
                    store,
                    "SELECT der FROM crls WHERE tenant_id = ? AND position = ?",
                    (tenant_id, position),
                )
                if not ders:
                    continue  # removed since its page was read
                dates = _crl_dates(store, str(tenant_id), int(position), bytes(ders[0][0]))
                memo.put(key, dates)
            days_left, level = levels.level(dates, crl=True)
            if every or level != "ok":
                source = str(label) if label is not None else None
                if source is not None and _FILE_LABEL in source:
                    source = source.split(_FILE_LABEL, 1)[1]
                yield ExpiryItem(
                    tenant_id=str(tenant_id),
                    kind="crl",
                    subject=dates.subject,
                    fingerprint_sha256=key.hex(),
                    not_before=dates.start,
                    not_after=dates.end,
                    days_left=days_left,
                    level=level,
                    source=source,
                )
        if len(rows) < PAGE:
            return
        after = (str(rows[-1][0]), int(rows[-1][1]))


__all__ = ["PAGE", "bundle_pem", "ca_certificates", "store_expiry", "store_of"]
