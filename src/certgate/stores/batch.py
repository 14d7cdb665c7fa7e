"""Import batches, written and checked as a whole (both dialects).

Writing tenants one at a time costs a dozen statements each (the digest,
the hosts, the anchor rule's indexed queries): over a network that is what
limits an import, and in-process (SQLite) the statements and the Python
around them are most of its CPU. :func:`write_batch` writes a whole batch
in the caller's transaction with a handful of statements (one per table:
arrays through ``unnest`` in PostgreSQL, ``executemany`` in SQLite), then
runs the same anchor-sharing check
(:func:`certgate.stores.anchors.check_written`) for each tenant of the
batch, through :class:`BatchQueries`: the rows every check of the batch
will ask for first are read once, a few statements per batch, and anything
further (deeper issuer walks) is read when asked - every answer the one a
live query would give, since nothing is written while the checks run.

A batch gives the answer of one-at-a-time writes in order: every tenant of
a run is checked against the run as written, later tenants included, and
a run ends before each stored tenant that gives something up (a host, a
CA, undeclared sharing; :func:`_runs`), so a tenant cannot take what a
tenant after it in the batch gives up (which ``put()`` in order, or an
import with another batch size, refuses). When a batch is
refused, :meth:`~certgate.stores.sql.SqlTenantStore.import_tenants` rolls
it back and writes it again one tenant at a time, so the error (and which
tenant it names) is the one of one-at-a-time writes. A batch naming a
tenant twice is written one tenant at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .. import certmemo
from ..errors import ConfigError
from ..tenant import Tenant
from .anchors import SignatureMemo, StoredCert, check_written
from .records import TenantRecord
from .schema import SqlSession, utc_text
from .sql import TenantRows

OWNERS_READ = 3
"""Owners read per certificate: enough for every ``root_owners`` question
(at most two owners, one tenant excluded)."""

_CERTS = "SELECT sha256, subject, issuer, name_key, der FROM certificates WHERE {column} {match}"
_OWNERS = (
    "SELECT s.sha, o.tenant_id FROM unnest(%b::bytea[]) AS s(sha) CROSS JOIN LATERAL "
    "(SELECT tenant_id FROM tenant_certificates WHERE sha256 = s.sha AND role = 'root' "
    "LIMIT %s) AS o"
)
_OWNERS_UNSHARED = (
    "SELECT s.sha, o.tenant_id FROM unnest(%b::bytea[]) AS s(sha) CROSS JOIN LATERAL "
    "(SELECT tenant_id FROM tenant_certificates WHERE sha256 = s.sha AND role = 'root' "
    "AND shared = FALSE LIMIT %s) AS o"
)
_OWNERS_ONE = (
    "SELECT tenant_id FROM tenant_certificates WHERE sha256 = ? AND role = 'root' {shared}LIMIT ?"
)
_IN_CHUNK = 500
"""Values per ``IN (...)`` list (SQLite allows 32,766 parameters)."""


def _where_in(
    session: SqlSession, template: str, column: str, values: Sequence[Any]
) -> list[tuple[Any, ...]]:
    """Rows of ``template`` (a statement ending in ``WHERE {column} {match}``)
    whose ``column`` is one of ``values``: ``= ANY(%b)`` in PostgreSQL (an array
    sent in binary), ``IN
    (?, ...)`` in chunks elsewhere."""
    if not values:
        return []
    if session.dialect.paramstyle == "format":
        return session.execute(template.format(column=column, match="= ANY(%b)"), (list(values),))
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(values), _IN_CHUNK):
        chunk = values[start : start + _IN_CHUNK]
        match = f"IN ({', '.join('?' * len(chunk))})"
        rows += session.execute(template.format(column=column, match=match), tuple(chunk))
    return rows


def write_batch(
    session: SqlSession,
    pending: Sequence[tuple[TenantRecord, Tenant]],
    memo: SignatureMemo,
) -> list[tuple[str, str]]:
    """Write ``pending`` (distinct ids) in ``session``'s transaction; the
    ``(id, "put")`` of the tenants that changed. :class:`ConfigError` when
    a tenant is refused (the caller rolls the batch back)."""
    ids = [record.id for record, _ in pending]
    stored = {
        str(tenant_id): bytes(digest)
        for tenant_id, digest in _where_in(
            session, "SELECT id, digest FROM tenants WHERE {column} {match}", "id", ids
        )
    }
    work: list[_Work] = []
    for record, tenant in pending:
        digest = record.digest()
        if stored.get(record.id) != digest:
            work.append((record, tenant, digest))
    changed: list[tuple[str, str]] = []
    for run in _runs(session, work, set(stored)):
        changed += _write_run(session, run, set(stored), memo)
    return changed


_Work = tuple[TenantRecord, Tenant, bytes]


def _runs(session: SqlSession, work: Sequence[_Work], stored: set[str]) -> list[list[_Work]]:
    """``work`` cut into runs written and checked one after the other, so the
    answer is the one of :meth:`~certgate.stores.sql.SqlTenantStore.put` in
    order: a new run starts at each stored tenant that gives up a host, a
    root or intermediate (or its role), or starts sharing a CA it held
    undeclared. Within a run no tenant after the first gives anything up,
    so each state ``put()`` goes through is contained in the run's final
    state (the rules only refuse more with more rows): the run is refused
    exactly when one of those ``put()`` calls would be. Without the cut, a
    tenant taking a host (or a root) that a later tenant of the same batch
    gives up was stored, where ``put()`` - and an import with another
    batch size - refused it."""
    replaced = sorted({record.id for record, _, _ in work[1:] if record.id in stored})
    if not replaced:
        return [list(work)] if work else []
    hosts: dict[str, set[str]] = {}
    rows = _where_in(
        session,
        "SELECT tenant_id, pattern FROM hosts WHERE {column} {match}",
        "tenant_id",
        replaced,
    )
    for tenant_id, pattern in rows:
        hosts.setdefault(str(tenant_id), set()).add(str(pattern))
    cas: dict[str, set[tuple[bytes, str, bool]]] = {}
    for tenant_id, sha, role, shared in _where_in(
        session,
        "SELECT tenant_id, sha256, role, shared FROM tenant_certificates WHERE {column} {match}",
        "tenant_id",
        replaced,
    ):
        cas.setdefault(str(tenant_id), set()).add((bytes(sha), str(role), bool(shared)))
    runs: list[list[_Work]] = []
    for item in work:
        record, tenant, _ = item
        if not runs or _gives_up(tenant, hosts.get(record.id, set()), cas.get(record.id, set())):
            runs.append([])
        runs[-1].append(item)
    return runs


def _gives_up(tenant: Tenant, hosts: set[str], cas: set[tuple[bytes, str, bool]]) -> bool:
    """Whether ``tenant``, replacing a stored tenant with ``hosts`` and
    ``cas`` (``(sha256, role, shared)``), drops any of them or starts
    sharing one it held undeclared."""
    if not hosts <= set(tenant.hosts):
        return True
    roles = ["root"] * len(tenant.roots) + ["intermediate"] * len(tenant.intermediates)
    kept = {
        (certmemo.sha256_of(cert), role)
        for role, (cert, _) in zip(roles, tenant.ca_name_keys, strict=True)
    }
    return any(
        (sha, role) not in kept or (not shared and tenant.shared_anchors)
        for sha, role, shared in cas
    )


def _write_run(
    session: SqlSession, work: Sequence[_Work], stored: set[str], memo: SignatureMemo
) -> list[tuple[str, str]]:
    """Write and check one run of :func:`write_batch` (see :func:`_runs`)."""
    if not work:
        return []
    replaced = [record.id for record, _, _ in work if record.id in stored]
    old: set[bytes] = set()
    if replaced:
        rows = _where_in(
            session,
            "SELECT sha256 FROM tenant_certificates WHERE {column} {match}",
            "tenant_id",
            replaced,
        )
        old = {bytes(row[0]) for row in rows}
        for table in ("hosts", "tenant_certificates", "crls"):
            delete = f"DELETE FROM {table} WHERE {{column}} {{match}}"  # noqa: S608
            _where_in(session, delete, "tenant_id", replaced)
    _check_hosts(session, [(record.id, tenant) for record, tenant, _ in work])
    now = utc_text()
    parts = [TenantRows.of(record, tenant, digest, now) for record, tenant, digest in work]
    _insert(session, parts)
    fresh = {link[3] for rows in parts for link in rows.links}
    gone = sorted(old - fresh)
    if gone:  # certificates only the old versions referred to go before the checks
        _where_in(
            session,
            "DELETE FROM certificates WHERE NOT EXISTS (SELECT 1 FROM tenant_certificates t "
            "WHERE t.sha256 = certificates.sha256) AND {column} {match}",
            "sha256",
            gone,
        )
    queries = BatchQueries(session)
    queries.prefetch([cert for part in parts for cert in part.own])
    for (_, tenant, _), part in zip(work, parts, strict=True):
        check_written(queries, tenant, memo, part.own)
    return [(record.id, "put") for record, _, _ in work]


def _check_hosts(session: SqlSession, claims: Sequence[tuple[str, Tenant]]) -> None:
    """Refuse a host listed twice, claimed by two tenants of the batch, or
    held by a stored tenant (one query); the messages of one-at-a-time writes."""
    claimed: dict[str, str] = {}
    for tenant_id, tenant in claims:
        hosts = tenant.hosts
        if len(set(hosts)) != len(hosts):
            twice = sorted({h for h in hosts if hosts.count(h) > 1})
            raise ConfigError(f"tenant {tenant_id!r} lists the host {twice[0]!r} twice")
        for pattern in hosts:
            other = claimed.setdefault(pattern, tenant_id)
            if other != tenant_id:
                raise ConfigError(
                    f"host {pattern!r} is claimed by tenants {other!r} and {tenant_id!r}"
                )
    rows = _where_in(
        session,
        "SELECT pattern, tenant_id FROM hosts WHERE {column} {match}",
        "pattern",
        list(claimed),
    )
    if rows:
        pattern, owner = rows[0]
        raise ConfigError(
            f"host {pattern!r} is claimed by tenants {owner!r} and {claimed[str(pattern)]!r}"
        )


def _insert(session: SqlSession, parts: Sequence[TenantRows]) -> None:
    insert_rows(
        session,
        "tenants (id, mode, shared_anchors, settings, digest, created, updated)",
        ("text", "text", "boolean", "text", "bytea", "text", "text"),
        [rows.tenant for rows in parts],
        "ON CONFLICT (id) DO UPDATE SET mode = excluded.mode, "
        "shared_anchors = excluded.shared_anchors, settings = excluded.settings, "
        "digest = excluded.digest, updated = excluded.updated",
    )
    insert_rows(
        session,
        "hosts (pattern, tenant_id)",
        ("text", "text"),
        [host for rows in parts for host in rows.hosts],
    )
    certs = {cert[0]: cert for rows in parts for cert in rows.certs}
    insert_rows(
        session,
        "certificates (sha256, der, subject, issuer, name_key)",
        ("bytea", "bytea", "bytea", "bytea", "bytea"),
        list(certs.values()),
        "ON CONFLICT (sha256) DO NOTHING",
    )
    insert_rows(
        session,
        "tenant_certificates (tenant_id, role, position, sha256, shared)",
        ("text", "text", "integer", "bytea", "boolean"),
        [link for rows in parts for link in rows.links],
    )
    insert_rows(
        session,
        "crls (tenant_id, position, sha256, der, label)",
        ("text", "integer", "bytea", "bytea", "text"),
        [crl for rows in parts for crl in rows.crls],
    )


def insert_rows(
    session: SqlSession,
    target: str,
    types: Sequence[str],
    rows: Sequence[Sequence[Any]],
    tail: str = "",
) -> None:
    """Insert ``rows`` into ``target`` (``"table (columns)"``): in PostgreSQL
    one statement over arrays (``unnest``, ``types``: the columns' types),
    elsewhere ``executemany``. ``tail``: an ``ON CONFLICT`` clause."""
    if not rows:
        return
    if session.dialect.paramstyle == "format":
        arrays = ", ".join(f"%b::{kind}[]" for kind in types)  # binary: no escaping
        session.execute(
            f"INSERT INTO {target} SELECT * FROM unnest({arrays}) {tail}",  # noqa: S608
            tuple(list(column) for column in zip(*rows, strict=True)),
        )
        return
    marks = ", ".join("?" * len(types))
    session.executemany(f"INSERT INTO {target} VALUES ({marks}) {tail}", rows)  # noqa: S608


class BatchQueries:
    """:class:`~certgate.stores.anchors.AnchorQueries` answering from rows
    read once per batch (:meth:`prefetch`), and reading - once - whatever
    else is asked. Valid while nothing is written (the checks only read)."""

    def __init__(self, session: SqlSession) -> None:
        self._session = session
        self._der: dict[bytes, bytes] = {}
        self._by: dict[str, dict[bytes, list[StoredCert]]] = {
            "subject": {},
            "issuer": {},
            "name_key": {},
        }
        self._owners: dict[tuple[bytes, bool], list[str]] = {}

    # -- reading ahead ---------------------------------------------------------

    def prefetch(self, own: Iterable[StoredCert]) -> None:
        """Read what every check of the batch asks first: certificates with the
        name keys of the batch's certificates, then those issued by them or
        issuing them, and up to :data:`OWNERS_READ` owners of each."""
        own = list(own)
        self._read("name_key", {cert.name_key for cert in own})
        seeds = own + [c for key in {c.name_key for c in own} for c in self._by["name_key"][key]]
        self._read("issuer", {cert.subject for cert in seeds})
        self._read("subject", {cert.issuer for cert in seeds if cert.issuer != cert.subject})
        shas = {cert.sha256 for cert in own}
        for table in self._by.values():
            for certs in table.values():
                shas.update(cert.sha256 for cert in certs)
        self._read_owners(sorted(shas))

    def _read(self, column: str, keys: set[bytes]) -> list[StoredCert]:
        table = self._by[column]
        wanted = sorted(key for key in keys if key not in table)
        if not wanted:
            return []
        for key in wanted:
            table[key] = []
        rows = _where_in(self._session, _CERTS, column, wanted)
        found = []
        for sha, subject, issuer, name_key, der in rows:
            cert = StoredCert(
                bytes(sha), bytes(subject), bytes(issuer), bytes(name_key), self._load
            )
            self._der[cert.sha256] = bytes(der)
            table[getattr(cert, column)].append(cert)
            found.append(cert)
        return found

    def _read_owners(self, shas: Sequence[bytes]) -> None:
        wanted = [sha for sha in shas if (sha, False) not in self._owners]
        if not wanted:
            return
        for unshared in (False, True):
            for sha in wanted:
                self._owners[(sha, unshared)] = []
            for sha, tenant_id in self._owner_rows(wanted, unshared):
                owners = self._owners[(bytes(sha), unshared)]
                if str(tenant_id) not in owners:
                    owners.append(str(tenant_id))

    def _owner_rows(self, shas: Sequence[bytes], unshared: bool) -> list[tuple[Any, ...]]:
        """``(sha256, tenant_id)`` of up to :data:`OWNERS_READ` owners of each of
        ``shas`` (one statement in PostgreSQL, one seek per certificate elsewhere)."""
        session = self._session
        if session.dialect.paramstyle == "format":
            statement = _OWNERS_UNSHARED if unshared else _OWNERS
            return session.execute(statement, (list(shas), OWNERS_READ))
        one = _OWNERS_ONE.format(shared="AND shared = 0 " if unshared else "")
        return [(sha, row[0]) for sha in shas for row in session.execute(one, (sha, OWNERS_READ))]

    def _load(self, sha256: bytes) -> bytes:
        der = self._der.get(sha256)
        if der is None:
            rows = self._session.execute(
                self._session.dialect.sql("SELECT der FROM certificates WHERE sha256 = ?"),
                (sha256,),
            )
            der = self._der[sha256] = bytes(rows[0][0])
        return der

    def _certs(self, column: str, key: bytes) -> list[StoredCert]:
        table = self._by[column]
        if key not in table:
            self._read(column, {key})
        return table[key]

    # -- AnchorQueries -------------------------------------------------------------

    def certs_with_subject(self, subject: bytes) -> list[StoredCert]:
        return self._certs("subject", subject)

    def certs_with_issuer(self, issuer: bytes) -> list[StoredCert]:
        return self._certs("issuer", issuer)

    def certs_with_name_key(self, name_key: bytes) -> list[StoredCert]:
        return self._certs("name_key", name_key)

    def root_owners(
        self,
        *,
        sha256: bytes | None = None,
        name_key: bytes | None = None,
        unshared_only: bool = False,
        exclude: str | None = None,
        limit: int = 2,
    ) -> list[str]:
        if limit > OWNERS_READ - 1:
            raise ValueError(f"root_owners reads at most {OWNERS_READ} owners per certificate")
        if sha256 is not None:
            shas = [sha256]
        elif name_key is not None:
            shas = [cert.sha256 for cert in self.certs_with_name_key(name_key)]
        else:
            raise ValueError("root_owners needs sha256 or name_key")
        self._read_owners(shas)
        owners: list[str] = []
        for sha in shas:
            for owner in self._owners[(sha, unshared_only)]:
                if owner != exclude and owner not in owners:
                    owners.append(owner)
                    if len(owners) >= limit:
                        return owners
        return owners
