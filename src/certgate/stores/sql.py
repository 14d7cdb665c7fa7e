"""The dialect-neutral tenant store: writes, reads and the change feed.

:class:`SqlTenantStore` holds every SQL statement of a tenant store, written
once with ``?`` parameters (:meth:`~certgate.stores.schema.Dialect.sql`
turns them into ``%s`` for psycopg). A concrete store (SQLite,
PostgreSQL) supplies :meth:`SqlTenantStore.session`, a
:class:`~certgate.stores.schema.SqlSession` for the calling thread, and
inherits:

* the **writer API** - :meth:`~SqlTenantStore.put`,
  :meth:`~SqlTenantStore.remove`, :meth:`~SqlTenantStore.import_tenants`
  (batched transactions, a progress callback), :meth:`~SqlTenantStore.export`,
  :meth:`~SqlTenantStore.list`, :meth:`~SqlTenantStore.get`,
  :meth:`~SqlTenantStore.count`. A tenant is vetted once, when it is
  written (building its :class:`~certgate.tenant.Tenant` vets every CA and
  CRL), and the anchor-sharing rule is checked in the same transaction with
  indexed queries (:mod:`certgate.stores.anchors`). A write that fails
  leaves the store as it was (the transaction is rolled back). Writing an
  unchanged tenant writes nothing (same ``digest``).
* the **reads** of :class:`~certgate.registry.TrustRegistry` -
  :meth:`~SqlTenantStore.tenant_for_host` (exact pattern, then the
  one-label wildcard, in one indexed query) and
  :meth:`~SqlTenantStore.tenant_by_id` - each in one read snapshot,
  building the tenant from stored DER without vetting it again.
* the **change feed** - :meth:`~SqlTenantStore.change_position` and
  :meth:`~SqlTenantStore.changes_since` (which tenants changed since a
  position), for :class:`~certgate.stores.caching.CachingRegistry`.

Every write increments ``certgate_counter.seq`` and appends to ``changes``
in its transaction (see :mod:`certgate.stores.schema`).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from .. import certmemo
from ..errors import ConfigError, TrustStoreUnavailable
from ..hosts import parent_domain
from ..tenant import Tenant, check_tenant_id
from .anchors import SignatureMemo, StoredCert, check_written
from .records import TenantRecord
from .schema import CHANGE_LOG_KEEP, SqlSession, utc_text

MAX_CHANGES_READ = 10_000
"""Most change-log rows one :meth:`SqlTenantStore.changes_since` reads; more
changes than that since the position answer "everything changed"."""

DEFAULT_BATCH = 500
"""Tenants per transaction of :meth:`SqlTenantStore.import_tenants`."""

_PRUNE_EVERY = 1000
"""Writers prune the change log when the sequence crosses a multiple of this."""

_CERT_COLUMNS = "c.sha256, c.subject, c.issuer, c.name_key"


logger = logging.getLogger("certgate")

OUTAGE_LOG_EVERY = 30.0
"""Seconds between two log lines of one store outage."""


@dataclass(frozen=True)
class TenantSummary:
    """One line of :meth:`SqlTenantStore.list`."""

    id: str
    hosts: tuple[str, ...]
    mode: str | None
    shared_anchors: bool
    version: int
    updated: str


@dataclass(frozen=True)
class ImportResult:
    """What :meth:`SqlTenantStore.import_tenants` did: tenants ``read``,
    ``written`` (new or changed) and ``unchanged``."""

    read: int
    written: int
    unchanged: int


Item = Tenant | TenantRecord
"""What the writer API takes: a built tenant (vetted when it was built) or a
record (built, so vetted, when written)."""


@dataclass(frozen=True)
class TenantRows:
    """The rows one tenant is stored as (``tenants``, ``hosts``,
    ``certificates``, ``tenant_certificates``, ``crls``), and its CA
    certificates as :class:`~certgate.stores.anchors.StoredCert` for the
    anchor check."""

    tenant: tuple[Any, ...]
    hosts: builtins.list[tuple[str, str]]
    certs: builtins.list[tuple[bytes, bytes, bytes, bytes, bytes]]
    links: builtins.list[tuple[str, str, int, bytes, bool]]
    crls: builtins.list[tuple[str, int, bytes, bytes, str | None]]
    own: builtins.list[StoredCert]

    @classmethod
    def of(cls, record: TenantRecord, tenant: Tenant, digest: bytes, now: str) -> TenantRows:
        certs = []
        links = []
        own = []
        position = {"root": 0, "intermediate": 0}
        roles = ["root"] * len(tenant.roots) + ["intermediate"] * len(tenant.intermediates)
        for role, (cert, key) in zip(roles, tenant.ca_name_keys, strict=True):
            der = certmemo.der_of(cert)
            stored = StoredCert.of(cert, certmemo.sha256_of(cert), key)
            own.append(stored)
            certs.append((stored.sha256, der, stored.subject, stored.issuer, key))
            links.append((record.id, role, position[role], stored.sha256, tenant.shared_anchors))
            position[role] += 1
        crls = []
        for index, der in enumerate(record.crls):
            label = record.crl_labels[index] if index < len(record.crl_labels) else None
            crls.append((record.id, index, _sha256(der), der, label))
        return cls(
            tenant=(
                record.id,
                tenant.mode,
                tenant.shared_anchors,
                record.settings_json(),
                digest,
                now,
                now,
            ),
            hosts=[(pattern, record.id) for pattern in tenant.hosts],
            certs=certs,
            links=links,
            crls=crls,
            own=own,
        )


class OutageReport:
    """The one report of a store outage: a 503 per failed read, logged at
    ERROR at most every :data:`OUTAGE_LOG_EVERY` seconds, and one line when
    the store answers again. ``where`` names the store (no password)."""

    where: str = "tenant store"

    _outage_logged = 0.0
    """When the current outage was last logged (0: no outage)."""

    def _outage(self, detail: str) -> TrustStoreUnavailable:
        """The 503 of a failed read (``detail``: what failed, no secrets); the
        outage is logged at ERROR at most every 30 s."""
        detail = f"{self.where}: {detail}"[:500]
        now = time.monotonic()
        if now - self._outage_logged >= OUTAGE_LOG_EVERY:
            self._outage_logged = now
            logger.error("certgate: tenant store unavailable, requests refused (503): %s", detail)
        return TrustStoreUnavailable(detail)

    def _recovered(self) -> None:
        """Log, once, that the store answers again after an outage."""
        if self._outage_logged:
            self._outage_logged = 0.0
            logger.warning("certgate: tenant store %s answers again", self.where)


class SqlTenantStore(OutageReport):
    """A tenant store over SQL (see the module docstring). Subclasses
    implement :meth:`session`; ``where`` names the store in messages (its
    URL without a password)."""

    closed = False
    """Set by ``close()``: a scan of the whole store
    (:mod:`certgate.stores.scan`) stops at its next page."""

    retired = False
    """Set when a gate lets go of a store it opened from its TOML file (a
    reload replaced it, ``gate.close()``: :func:`certgate.config.close_registry`):
    a lookup still running then fails closed (503) rather than open
    connections nobody would close (a plain ``close()`` lets a later lookup
    reopen them)."""

    def __init__(self) -> None:
        self._signatures = SignatureMemo()
        self._marks: dict[int, tuple[object, ...] | None] = {}
        """The change-log row of the last position handed out (see
        :meth:`changes_since_in`)."""

    def session(self) -> SqlSession:
        """A session for the calling thread (subclasses)."""
        raise NotImplementedError

    read_errors: tuple[type[Exception], ...] = ()
    """The driver's exceptions of a failed read: the registry methods
    (``tenant_for_host``, ``tenant_by_id``, ...) turn them into a 503
    through :meth:`_unavailable`."""

    def _unavailable(self, exc: BaseException) -> TrustStoreUnavailable:
        """The 503 of a failed read (subclasses add what to drop or say)."""
        return self._outage(type(exc).__name__)

    def _sql(
        self, session: SqlSession, text: str, params: tuple[Any, ...] = ()
    ) -> list[tuple[Any, ...]]:
        return session.execute(session.dialect.sql(text), params)

    # -- writing ------------------------------------------------------------

    def put(self, item: Item, *, policy: Mapping[str, Any] | None = None) -> int:
        """Add ``item``, or replace the stored tenant with its id. Returns the
        tenant's new version (the change's sequence number), or 0 when the
        stored tenant was already the same. ``policy``: the TOML/JSON form
        of a :class:`Tenant`'s policy (needed when it has one).

        Raises :class:`ConfigError` (nothing written) when the tenant fails
        vetting, a host is another tenant's, or the anchor-sharing rule is
        broken."""
        record, tenant = _prepare(item, policy)
        session = self.session()
        with session.transaction():
            if not self._write(session, record, tenant):
                return 0
            return self._log(session, [(record.id, "put")])

    def remove(self, tenant_id: str) -> bool:
        """Remove a tenant; whether it existed."""
        check_tenant_id(tenant_id)
        session = self.session()
        with session.transaction():
            rows = self._sql(session, "SELECT 1 FROM tenants WHERE id = ?", (tenant_id,))
            if not rows:
                return False
            old = self._tenant_cert_shas(session, tenant_id)
            self._delete_parts(session, tenant_id)
            self._sql(session, "DELETE FROM tenants WHERE id = ?", (tenant_id,))
            self._log(session, [(tenant_id, "remove")])
            self._collect(session, old)
            return True

    def import_tenants(
        self,
        items: Iterable[Item],
        *,
        batch: int = DEFAULT_BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> ImportResult:
        """Put every item, ``batch`` tenants per transaction; ``progress`` is
        called with the number of tenants read so far after each batch.

        Each batch is written and checked as a whole (:mod:`certgate.stores.batch`:
        hosts unique, the anchor-sharing rule against the stored tenants and
        the rest of the batch, inside the transaction); a refused batch is
        rolled back and written again one tenant at a time, so the error is
        the one :meth:`put` gives. Certificate facts and clean CA sets are
        remembered for the import (:mod:`certgate.certmemo`): a CA shared
        by many tenants is parsed and vetted once. The change counter and
        log get one entry per written tenant, as with :meth:`put`.

        Stops at the first tenant that fails (:class:`ConfigError` naming it
        and saying how many were stored before it): the tenants of earlier
        batches stay stored, the failing batch is rolled back. Importing a
        tenant again replaces it, so a corrected import can simply be rerun.
        """
        if batch < 1:
            raise ConfigError(f"batch must be at least 1, not {batch}")
        read = written = 0
        committed = 0
        pending: builtins.list[tuple[TenantRecord, Tenant]] = []

        def flush() -> None:
            nonlocal written, committed
            session = self.session()
            try:
                with session.transaction():
                    changed = self._write_batch(session, pending)
                    if changed:
                        self._log(session, changed)
            except ConfigError:
                # Refused as a whole: written again one tenant at a time, which
                # either stores it (an order-dependent refusal) or names the
                # tenant and the rule exactly as a put() of each would.
                with session.transaction():
                    try:
                        changed = self._write_each(session, pending)
                    except ConfigError as exc:
                        raise ConfigError(
                            f"{exc} (import stopped: {committed} tenants stored before this "
                            "batch; fix the tenant and import again)"
                        ) from None
                    if changed:
                        self._log(session, changed)
            written += len(changed)
            committed += len(pending)
            pending.clear()
            if progress is not None:
                progress(read)

        source = iter(items)
        with self._bulk(), certmemo.remembering():
            while True:
                try:
                    item = next(source, None)  # a reader of a file may raise here
                    if item is None:
                        break
                    pending.append(_prepare(item, None))
                except ConfigError as exc:
                    if pending:
                        flush()
                    raise ConfigError(
                        f"{exc} (import stopped: {committed} tenants stored before it; fix the "
                        "tenant and import again)"
                    ) from None
                read += 1
                if len(pending) >= batch:
                    flush()
            if pending:
                flush()
            elif progress is not None:
                progress(read)
        return ImportResult(read, written, read - written)

    def _write_batch(
        self, session: SqlSession, pending: Sequence[tuple[TenantRecord, Tenant]]
    ) -> builtins.list[tuple[str, str]]:
        """Write a batch of an import in the caller's transaction, not logged:
        the ``(id, "put")`` of the tenants that changed. Written and checked
        as a whole (:mod:`certgate.stores.batch`); one tenant at a time when
        the batch names a tenant twice. :class:`ConfigError` when a tenant
        is refused (the caller rolls back and writes the batch again with
        :meth:`_write_each`, for the one-at-a-time error)."""
        if len({record.id for record, _ in pending}) != len(pending):
            return self._write_each(session, pending)
        from .batch import write_batch  # noqa: PLC0415 - imports this module

        return write_batch(session, pending, self._signatures)

    def _write_each(
        self, session: SqlSession, pending: Sequence[tuple[TenantRecord, Tenant]]
    ) -> builtins.list[tuple[str, str]]:
        """:meth:`_write_batch` one tenant at a time (as :meth:`put`)."""
        changed: builtins.list[tuple[str, str]] = []
        for record, tenant in pending:
            if self._write(session, record, tenant):
                changed.append((record.id, "put"))
        return changed

    def _bulk(self) -> AbstractContextManager[None]:
        """Settings for a bulk import (a store may use a larger page cache, say)."""
        return contextlib.nullcontext()

    def _write(self, session: SqlSession, record: TenantRecord, tenant: Tenant) -> bool:
        """Write one tenant in the caller's transaction (not logged: the caller
        logs it); whether anything changed."""
        digest = record.digest()
        rows = self._sql(session, "SELECT digest FROM tenants WHERE id = ?", (record.id,))
        if rows and bytes(rows[0][0]) == digest:
            return False
        old: set[bytes] = set()
        if rows:  # a new tenant has no rows to replace
            old = self._tenant_cert_shas(session, record.id)
            self._delete_parts(session, record.id)
        self._check_hosts(session, record.id, tenant.hosts)
        parts = TenantRows.of(record, tenant, digest, utc_text())
        self._sql(
            session,
            "INSERT INTO tenants (id, mode, shared_anchors, settings, digest, created, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET mode = excluded.mode, "
            "shared_anchors = excluded.shared_anchors, settings = excluded.settings, "
            "digest = excluded.digest, updated = excluded.updated",
            parts.tenant,
        )
        session.executemany(
            session.dialect.sql("INSERT INTO hosts (pattern, tenant_id) VALUES (?, ?)"), parts.hosts
        )
        session.executemany(
            session.dialect.sql(
                "INSERT INTO certificates (sha256, der, subject, issuer, name_key) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING"
            ),
            parts.certs,
        )
        session.executemany(
            session.dialect.sql(
                "INSERT INTO tenant_certificates (tenant_id, role, position, sha256, shared) "
                "VALUES (?, ?, ?, ?, ?)"
            ),
            parts.links,
        )
        if parts.crls:
            session.executemany(
                session.dialect.sql(
                    "INSERT INTO crls (tenant_id, position, sha256, der, label) "
                    "VALUES (?, ?, ?, ?, ?)"
                ),
                parts.crls,
            )
        # Certificates only the old version referred to go before the check:
        # they are no longer part of the configuration.
        if old:
            self._collect(session, old - {link[3] for link in parts.links})
        check_written(_Queries(self, session), tenant, self._signatures, parts.own)
        return True

    def _check_hosts(self, session: SqlSession, tenant_id: str, hosts: Sequence[str]) -> None:
        """Refuse a host listed twice, or one another tenant holds (one query
        per 500 hosts)."""
        if len(set(hosts)) != len(hosts):
            twice = sorted({h for h in hosts if hosts.count(h) > 1})
            raise ConfigError(f"tenant {tenant_id!r} lists the host {twice[0]!r} twice")
        for start in range(0, len(hosts), 500):
            chunk = tuple(hosts[start : start + 500])
            marks = ", ".join("?" * len(chunk))
            rows = self._sql(
                session,
                f"SELECT pattern, tenant_id FROM hosts WHERE pattern IN ({marks})",  # noqa: S608
                chunk,
            )
            if rows:
                pattern, owner = rows[0]
                raise ConfigError(
                    f"host {pattern!r} is claimed by tenants {owner!r} and {tenant_id!r}"
                )

    def _tenant_cert_shas(self, session: SqlSession, tenant_id: str) -> set[bytes]:
        rows = self._sql(
            session, "SELECT sha256 FROM tenant_certificates WHERE tenant_id = ?", (tenant_id,)
        )
        return {bytes(row[0]) for row in rows}

    def _delete_parts(self, session: SqlSession, tenant_id: str) -> None:
        for table in ("hosts", "tenant_certificates", "crls"):
            self._sql(session, f"DELETE FROM {table} WHERE tenant_id = ?", (tenant_id,))  # noqa: S608

    def _collect(self, session: SqlSession, shas: Iterable[bytes]) -> None:
        """Delete the certificates of ``shas`` no tenant refers to any more."""
        for sha in shas:
            self._sql(
                session,
                "DELETE FROM certificates WHERE sha256 = ? AND NOT EXISTS "
                "(SELECT 1 FROM tenant_certificates WHERE sha256 = ?)",
                (sha, sha),
            )

    def _log(self, session: SqlSession, changes: builtins.list[tuple[str, str]]) -> int:
        """Take sequence numbers for ``changes`` ((tenant id, op) pairs), log
        them and set each written tenant's version; the last number. The
        counter row also serialises writers, so sequence order is commit
        order."""
        rows = self._sql(
            session,
            "UPDATE certgate_counter SET seq = seq + ? WHERE id = 1 RETURNING seq",
            (len(changes),),
        )
        last = int(rows[0][0])
        first = last - len(changes) + 1
        now = utc_text()
        numbered = [(first + i, tenant_id, op) for i, (tenant_id, op) in enumerate(changes)]
        versions = [(seq, tenant_id) for seq, tenant_id, op in numbered if op == "put"]
        if session.dialect.paramstyle == "format" and len(changes) > 1:  # one statement each
            session.execute(
                "INSERT INTO changes (seq, tenant_id, op, at) "
                "SELECT *, %s FROM unnest(%b::bigint[], %b::text[], %b::text[])",
                (now, *(list(column) for column in zip(*numbered, strict=True))),
            )
            if versions:
                session.execute(
                    "UPDATE tenants t SET version = v.seq FROM unnest(%b::bigint[], %b::text[]) "
                    "AS v(seq, id) WHERE t.id = v.id",
                    tuple(list(column) for column in zip(*versions, strict=True)),
                )
        else:
            session.executemany(
                session.dialect.sql(
                    "INSERT INTO changes (seq, tenant_id, op, at) VALUES (?, ?, ?, ?)"
                ),
                [(seq, tenant_id, op, now) for seq, tenant_id, op in numbered],
            )
            session.executemany(
                session.dialect.sql("UPDATE tenants SET version = ? WHERE id = ?"), versions
            )
        if first // _PRUNE_EVERY != (last + 1) // _PRUNE_EVERY:
            self._sql(session, "DELETE FROM changes WHERE seq <= ?", (last - CHANGE_LOG_KEEP,))
        return last

    # -- reading ------------------------------------------------------------

    def get(self, tenant_id: str) -> TenantRecord | None:
        """The stored record of ``tenant_id``, or ``None``."""
        check_tenant_id(tenant_id)
        session = self.session()
        with session.snapshot():
            rows = self._sql(
                session,
                "SELECT t.id, t.mode, t.shared_anchors, t.settings, t.version, t.created, "
                "t.updated FROM tenants t WHERE t.id = ?",
                (tenant_id,),
            )
            return self._record(session, rows[0]) if rows else None

    def record_for_host(self, host: str) -> TenantRecord | None:
        """The stored record of the tenant serving normalised ``host``: an
        exact pattern first, then ``*.`` and the parent domain."""
        parent = parent_domain(host)
        session = self.session()
        with session.snapshot():
            if parent is None:
                rows = self._sql(
                    session,
                    "SELECT h.pattern, t.id, t.mode, t.shared_anchors, t.settings, t.version, "
                    "t.created, t.updated FROM hosts h JOIN tenants t "
                    "ON t.id = h.tenant_id WHERE h.pattern = ?",
                    (host,),
                )
            else:
                rows = self._sql(
                    session,
                    "SELECT h.pattern, t.id, t.mode, t.shared_anchors, t.settings, t.version, "
                    "t.created, t.updated FROM hosts h JOIN tenants t "
                    "ON t.id = h.tenant_id WHERE h.pattern IN (?, ?)",
                    (host, "*." + parent),
                )
            if not rows:
                return None
            row = min(rows, key=lambda r: r[0].startswith("*."))  # the exact pattern first
            return self._record(session, row[1:])

    def id_for_host(self, host: str) -> str | None:
        """The id of the tenant serving normalised ``host`` (one indexed query)."""
        parent = parent_domain(host)
        session = self.session()
        if parent is None:
            rows = self._sql(
                session, "SELECT pattern, tenant_id FROM hosts WHERE pattern = ?", (host,)
            )
        else:
            rows = self._sql(
                session,
                "SELECT pattern, tenant_id FROM hosts WHERE pattern IN (?, ?)",
                (host, "*." + parent),
            )
        if not rows:
            return None
        return str(min(rows, key=lambda r: r[0].startswith("*."))[1])

    def tenant_modes_present(self) -> bool:
        """Whether some stored tenant sets its own ``mode`` (one indexed query)."""
        try:
            rows = self._sql(self.session(), "SELECT 1 FROM tenants WHERE mode IS NOT NULL LIMIT 1")
        except self.read_errors as exc:
            raise self._unavailable(exc) from None
        return bool(rows)

    def tenant_for_host(self, host: str) -> Tenant | None:
        """:class:`~certgate.registry.TrustRegistry`: the tenant serving ``host``."""
        try:
            record = self.record_for_host(host)
        except self.read_errors as exc:
            raise self._unavailable(exc) from None
        self._recovered()
        return None if record is None else record.build(vetted=True)

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        """:class:`~certgate.registry.TrustRegistry`: the tenant ``tenant_id``."""
        try:
            record = self.get(tenant_id)
        except ConfigError:
            return None  # not a valid id: no such tenant
        except self.read_errors as exc:
            raise self._unavailable(exc) from None
        self._recovered()
        return None if record is None else record.build(vetted=True)

    def record_by_id(self, tenant_id: str) -> TenantRecord | None:
        """:meth:`get`, with outages as :class:`TrustStoreUnavailable`."""
        try:
            return self.get(tenant_id)
        except self.read_errors as exc:
            raise self._unavailable(exc) from None

    def _record(self, session: SqlSession, row: tuple[Any, ...]) -> TenantRecord:
        tenant_id, mode, shared, settings, version, created, updated = row
        certs = self._sql(
            session,
            "SELECT tc.role, c.der FROM tenant_certificates tc JOIN certificates c "
            "ON c.sha256 = tc.sha256 WHERE tc.tenant_id = ? ORDER BY tc.role, tc.position",
            (tenant_id,),
        )
        crls = self._sql(
            session,
            "SELECT der, label FROM crls WHERE tenant_id = ? ORDER BY position",
            (tenant_id,),
        )
        hosts = self._sql(
            session, "SELECT pattern FROM hosts WHERE tenant_id = ? ORDER BY pattern", (tenant_id,)
        )
        return TenantRecord.from_settings(
            id=tenant_id,
            hosts=[h[0] for h in hosts],
            roots=[bytes(c[1]) for c in certs if c[0] == "root"],
            intermediates=[bytes(c[1]) for c in certs if c[0] == "intermediate"],
            crls=[(bytes(c[0]), c[1]) for c in crls],
            shared_anchors=bool(shared),
            mode=mode,
            settings=settings,
            version=int(version),
            created=str(created),
            updated=str(updated),
        )

    def count(self) -> int:
        """How many tenants are stored."""
        return int(self._sql(self.session(), "SELECT COUNT(*) FROM tenants")[0][0])

    def list(
        self, *, after: str | None = None, limit: int | None = None, host: str | None = None
    ) -> builtins.list[TenantSummary]:
        """Tenants in id order: those with an id after ``after`` (paging), at
        most ``limit``; ``host``: only the tenant owning that exact pattern."""
        session = self.session()
        clauses: builtins.list[str] = []
        params: builtins.list[object] = []
        if after is not None:
            clauses.append("t.id > ?")
            params.append(after)
        if host is not None:
            clauses.append("t.id IN (SELECT tenant_id FROM hosts WHERE pattern = ?)")
            params.append(host)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        tail = " LIMIT ?" if limit is not None else ""
        if limit is not None:
            params.append(limit)
        with session.snapshot():
            rows = self._sql(
                session,
                "SELECT t.id, t.mode, t.shared_anchors, t.version, t.updated "  # noqa: S608
                f"FROM tenants t{where} ORDER BY t.id{tail}",
                tuple(params),
            )
            out = []
            for tenant_id, mode, shared, version, updated in rows:
                hosts = self._sql(
                    session,
                    "SELECT pattern FROM hosts WHERE tenant_id = ? ORDER BY pattern",
                    (tenant_id,),
                )
                out.append(
                    TenantSummary(
                        tenant_id,
                        tuple(h[0] for h in hosts),
                        mode,
                        bool(shared),
                        int(version),
                        str(updated),
                    )
                )
            return out

    def export(self, *, page: int = 1000) -> Iterator[TenantRecord]:
        """Every stored tenant, in id order, read ``page`` at a time (each page
        one snapshot: a tenant changed during an export appears as it was
        when its page was read)."""
        after: str | None = None
        while True:
            session = self.session()
            with session.snapshot():
                if after is None:
                    rows = self._sql(
                        session,
                        "SELECT t.id, t.mode, t.shared_anchors, t.settings, t.version, t.created, "
                        "t.updated FROM tenants t "
                        "ORDER BY t.id LIMIT ?",
                        (page,),
                    )
                else:
                    rows = self._sql(
                        session,
                        "SELECT t.id, t.mode, t.shared_anchors, t.settings, t.version, t.created, "
                        "t.updated FROM tenants t "
                        "WHERE t.id > ? ORDER BY t.id LIMIT ?",
                        (after, page),
                    )
                records = [self._record(session, row) for row in rows]
            yield from records
            if len(rows) < page:
                return
            after = records[-1].id

    # -- the change feed ----------------------------------------------------

    def change_position(self) -> int:
        """The sequence number of the last change."""
        session = self.session()
        with session.snapshot():
            current = int(self._sql(session, "SELECT seq FROM certgate_counter WHERE id = 1")[0][0])
            self._marks = {current: self._mark(session, current)}
        return current

    def changes_since(self, position: int) -> tuple[int, frozenset[str] | None]:
        """``(new position, ids of tenants changed after position)``; ``None``
        in place of the ids when that cannot be told (the log was pruned past
        ``position``, more than :data:`MAX_CHANGES_READ` changes, or the
        store's history is not the one ``position`` was read from - a
        restored backup, another store's copy): drop everything."""
        return self.changes_since_in(self.session(), position)

    def changes_since_in(
        self, session: SqlSession, position: int
    ) -> tuple[int, frozenset[str] | None]:
        """:meth:`changes_since` on ``session``.

        The log row of each position handed out is remembered (its tenant
        and time): when it is not the same row any more, the store was
        replaced under the reader, whatever its sequence numbers say."""
        with session.snapshot():
            current = int(self._sql(session, "SELECT seq FROM certgate_counter WHERE id = 1")[0][0])
            known = self._marks.get(position)
            same = known is None or self._mark(session, position) == known
            self._marks = {current: self._mark(session, current)}
            if not same or current < position:
                return current, None
            if current == position:
                return current, frozenset()
            rows = self._sql(
                session,
                "SELECT seq, tenant_id FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (position, MAX_CHANGES_READ + 1),
            )
        if not rows or int(rows[0][0]) != position + 1 or len(rows) > MAX_CHANGES_READ:
            return current, None
        return current, frozenset(str(row[1]) for row in rows if int(row[0]) <= current)

    def _mark(self, session: SqlSession, seq: int) -> tuple[object, ...] | None:
        """What identifies the log row ``seq`` (``None``: no such row)."""
        if seq == 0:
            return ("start",)
        rows = self._sql(session, "SELECT tenant_id, at FROM changes WHERE seq = ?", (seq,))
        return (str(rows[0][0]), str(rows[0][1])) if rows else None


def _sha256(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()


def _prepare(item: Item, policy: Mapping[str, Any] | None) -> tuple[TenantRecord, Tenant]:
    """The record and the vetted tenant of ``item`` (building a record's
    tenant vets it; a tenant was vetted when it was built)."""
    if isinstance(item, Tenant):
        if policy is not None:
            from ..policy import policy_from_config  # noqa: PLC0415

            policy_from_config(policy, f"tenant {item.id!r}")  # refuse a broken policy now
        record = TenantRecord.of(item, policy)
        tenant = item
    elif isinstance(item, TenantRecord):
        if policy is not None:
            raise ConfigError("policy= applies to a Tenant; a TenantRecord carries its own")
        record = item
        tenant = record.build()
    else:
        raise TypeError(f"expected a Tenant or a TenantRecord, not {type(item).__name__}")
    if record.crl_urls:
        raise ConfigError(
            f"tenant {record.id!r}: crl_urls are not supported in a tenant store yet (a store "
            "is shared by every worker; nothing would refresh them): store the CRLs themselves "
            "(crls) and write the tenant again when they change"
        )
    record.settings_json()  # JSON data, bounded
    return record, tenant


class _Queries:
    """:class:`~certgate.stores.anchors.AnchorQueries` over one session."""

    def __init__(self, store: SqlTenantStore, session: SqlSession) -> None:
        self._store = store
        self._session = session

    def _certs(self, where: str, value: object) -> builtins.list[StoredCert]:
        rows = self._store._sql(
            self._session,
            f"SELECT {_CERT_COLUMNS} FROM certificates c WHERE {where}",  # noqa: S608
            (value,),
        )
        return [
            StoredCert(bytes(r[0]), bytes(r[1]), bytes(r[2]), bytes(r[3]), self.der_of)
            for r in rows
        ]

    def der_of(self, sha256: bytes) -> bytes:
        """The DER of a stored certificate."""
        rows = self._store._sql(
            self._session, "SELECT der FROM certificates WHERE sha256 = ?", (sha256,)
        )
        return bytes(rows[0][0])

    def certs_with_subject(self, subject: bytes) -> builtins.list[StoredCert]:
        return self._certs("c.subject = ?", subject)

    def certs_with_issuer(self, issuer: bytes) -> builtins.list[StoredCert]:
        return self._certs("c.issuer = ?", issuer)

    def certs_with_name_key(self, name_key: bytes) -> builtins.list[StoredCert]:
        return self._certs("c.name_key = ?", name_key)

    def root_owners(
        self,
        *,
        sha256: bytes | None = None,
        name_key: bytes | None = None,
        unshared_only: bool = False,
        exclude: str | None = None,
        limit: int = 2,
    ) -> builtins.list[str]:
        """One owner per query, by an equality on the (sha256, role, shared)
        index, never ``DISTINCT ... LIMIT`` over a join: PostgreSQL then
        guessed from average statistics that matching rows were common and
        read every ``tenant_certificates`` row in id order to find none (160
        ms at 100k tenants, 1 s at 1M, on every write)."""
        if sha256 is not None:
            shas = [sha256]
        elif name_key is not None:
            rows = self._store._sql(
                self._session, "SELECT sha256 FROM certificates WHERE name_key = ?", (name_key,)
            )
            shas = [bytes(row[0]) for row in rows]
        else:
            raise ValueError("root_owners needs sha256 or name_key")
        owners: builtins.list[str] = []
        for sha in shas:
            while len(owners) < limit:
                clauses = ["tc.sha256 = ?", "tc.role = 'root'"]
                params: builtins.list[object] = [sha]
                if unshared_only:
                    clauses.append("tc.shared = ?")
                    params.append(False)
                for other in ([exclude] if exclude is not None else []) + owners:
                    clauses.append("tc.tenant_id <> ?")
                    params.append(other)
                rows = self._store._sql(
                    self._session,
                    "SELECT tc.tenant_id FROM tenant_certificates tc "  # noqa: S608
                    f"WHERE {' AND '.join(clauses)} LIMIT 1",
                    tuple(params),
                )
                if not rows:
                    break
                owners.append(str(rows[0][0]))
        return owners
