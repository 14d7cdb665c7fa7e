"""The tenant store schema: a dialect-neutral description and its migrations.

The schema is written once, as data (:class:`Table`, :class:`Index`,
:class:`Migration`), and rendered to DDL per SQL dialect (:class:`Dialect`:
SQLite and PostgreSQL). Every store (:mod:`certgate.stores.sqlite`, the
PostgreSQL store) uses the same tables, so a database can be moved from one
to the other with ``certgate tenants export`` / ``import``.

Tables (version 2)::

    certgate_schema      version PK, description, applied_at      -- applied migrations
    tenants              id PK, mode, shared_anchors, settings (JSON text),
                         digest, version, created, updated
    hosts                pattern PK -> tenant_id                   -- "a.example" or "*.example"
    certificates         sha256 PK, der, subject, issuer, name_key -- each CA certificate once
    tenant_certificates  (tenant_id, role, position) PK, sha256, shared
    crls                 (tenant_id, position) PK, sha256, der, label
    certgate_counter     id PK (= 1), seq                          -- the global change counter
    changes              seq PK, tenant_id, op, at                 -- the change log

* ``hosts.pattern`` is the normalised pattern (:func:`certgate.hosts.normalize_pattern`):
  an exact name, or ``*.`` and a suffix. Unique: one tenant per pattern. A
  request's host ``h`` is looked up as ``pattern IN (h, '*.' || parent(h))``,
  the exact name winning.
* ``certificates``: roots and intermediates as DER, keyed by SHA-256 of the
  DER; ``subject`` and ``issuer`` are the DER of the names, ``name_key`` is
  :func:`certgate.tenant.name_key` (subject + SubjectPublicKeyInfo). Indexed
  by subject, issuer and name key: the anchor-sharing rule is enforced at
  write time with indexed queries (:mod:`certgate.stores.anchors`), never by
  loading every tenant. A certificate no tenant refers to is deleted.
* ``tenant_certificates.role`` is ``root`` or ``intermediate``; ``shared`` is
  a copy of ``tenants.shared_anchors`` so that "another tenant, not
  declaring shared anchors, with this anchor" is one index seek.
* ``tenants.settings`` is JSON text: ``policy`` (the TOML/JSON form,
  :func:`certgate.policy.policy_from_config`), ``crl_urls``, ``crl_refresh``,
  ``crl_stale``, ``require_crl``. ``digest`` is SHA-256 over the canonical
  record (a ``put`` of an unchanged tenant writes nothing). ``version`` is
  the change sequence number of the tenant's last write.
* ``certgate_counter`` holds the last sequence number; every write
  transaction increments it (``UPDATE ... RETURNING``), which also
  serialises writers so that sequence order is commit order, and appends
  ``(seq, tenant_id, op)`` to ``changes`` (``op``: ``put`` or ``remove``).
  Readers poll the log to invalidate only the tenants that changed; old
  rows are pruned (:data:`CHANGE_LOG_KEEP`), and a reader whose position was
  pruned drops its whole cache.
* Timestamps are ISO 8601 UTC text in every dialect (they sort as text).

Migrations are ordered steps, each applied in one transaction with its
``certgate_schema`` row; :func:`migrate` refuses a database whose version is
newer than this code (:class:`SchemaError`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from ..errors import ConfigError

ColumnType = Literal["text", "blob", "int", "bigint", "bool", "real", "timestamp"]


class SchemaError(ConfigError):
    """The database's schema cannot be used by this certgate (too new, too
    old for a reader, or not a certgate database). The message says what to do."""


@dataclass(frozen=True)
class Column:
    """A column: ``default`` is a SQL literal valid in every dialect."""

    name: str
    type: ColumnType
    nullable: bool = False
    default: str | None = None


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    table: str
    target: tuple[str, ...]
    on_delete_cascade: bool = True


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    foreign_keys: tuple[ForeignKey, ...] = ()


@dataclass(frozen=True)
class Index:
    name: str
    table: str
    columns: tuple[str, ...]
    unique: bool = False


@dataclass(frozen=True)
class CreateTable:
    table: Table


@dataclass(frozen=True)
class CreateIndex:
    index: Index


@dataclass(frozen=True)
class AddColumn:
    table: str
    column: Column


@dataclass(frozen=True)
class Sql:
    """A statement valid in every dialect (parameters: none)."""

    text: str


Step = CreateTable | CreateIndex | AddColumn | Sql


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    steps: tuple[Step, ...]


# -- the tables -----------------------------------------------------------

SCHEMA_TABLE = Table(
    "certgate_schema",
    (
        Column("version", "int"),
        Column("description", "text"),
        Column("applied_at", "timestamp"),
    ),
    ("version",),
)

TENANTS = Table(
    "tenants",
    (
        Column("id", "text"),
        Column("mode", "text", nullable=True),
        Column("shared_anchors", "bool", default="FALSE"),
        Column("settings", "text"),
        Column("digest", "blob"),
        Column("created", "timestamp"),
        Column("updated", "timestamp"),
    ),
    ("id",),
)

HOSTS = Table(
    "hosts",
    (Column("pattern", "text"), Column("tenant_id", "text")),
    ("pattern",),
    (ForeignKey(("tenant_id",), "tenants", ("id",)),),
)

CERTIFICATES = Table(
    "certificates",
    (
        Column("sha256", "blob"),
        Column("der", "blob"),
        Column("subject", "blob"),
        Column("issuer", "blob"),
        Column("name_key", "blob"),
    ),
    ("sha256",),
)

TENANT_CERTIFICATES = Table(
    "tenant_certificates",
    (
        Column("tenant_id", "text"),
        Column("role", "text"),
        Column("position", "int"),
        Column("sha256", "blob"),
        Column("shared", "bool", default="FALSE"),
    ),
    ("tenant_id", "role", "position"),
    (
        ForeignKey(("tenant_id",), "tenants", ("id",)),
        ForeignKey(("sha256",), "certificates", ("sha256",), on_delete_cascade=False),
    ),
)

CRLS = Table(
    "crls",
    (
        Column("tenant_id", "text"),
        Column("position", "int"),
        Column("sha256", "blob"),
        Column("der", "blob"),
        Column("label", "text", nullable=True),
    ),
    ("tenant_id", "position"),
    (ForeignKey(("tenant_id",), "tenants", ("id",)),),
)

COUNTER = Table(
    "certgate_counter",
    (Column("id", "int"), Column("seq", "bigint")),
    ("id",),
)

CHANGES = Table(
    "changes",
    (
        Column("seq", "bigint"),
        Column("tenant_id", "text"),
        Column("op", "text"),
        Column("at", "timestamp"),
    ),
    ("seq",),
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "tenants, hosts, certificates, CRLs",
        (
            CreateTable(TENANTS),
            CreateIndex(Index("tenants_mode", "tenants", ("mode",))),
            CreateTable(HOSTS),
            CreateIndex(Index("hosts_tenant", "hosts", ("tenant_id",))),
            CreateTable(CERTIFICATES),
            CreateIndex(Index("certificates_subject", "certificates", ("subject",))),
            CreateIndex(Index("certificates_issuer", "certificates", ("issuer",))),
            CreateIndex(Index("certificates_name_key", "certificates", ("name_key",))),
            CreateTable(TENANT_CERTIFICATES),
            CreateIndex(
                Index(
                    "tenant_certificates_cert", "tenant_certificates", ("sha256", "role", "shared")
                )
            ),
            CreateTable(CRLS),
        ),
    ),
    Migration(
        2,
        "change log: certgate_counter, changes, tenants.version",
        (
            CreateTable(COUNTER),
            Sql("INSERT INTO certgate_counter (id, seq) VALUES (1, 0)"),
            CreateTable(CHANGES),
            AddColumn("tenants", Column("version", "bigint", default="0")),
        ),
    ),
)
"""Every migration, in order; the last one's version is :data:`SCHEMA_VERSION`."""

SCHEMA_VERSION = MIGRATIONS[-1].version
"""The schema version this code writes and reads."""

CHANGE_LOG_KEEP = 100_000
"""Change-log rows kept (older ones are pruned by writers)."""


# -- dialects -------------------------------------------------------------


@dataclass(frozen=True)
class Dialect:
    """How one SQL dialect spells types and parameters.

    Statements in the stores are written with ``?`` parameters;
    :meth:`sql` turns them into the dialect's style (``%s`` for psycopg).
    """

    name: str
    types: dict[str, str]
    paramstyle: Literal["qmark", "format"]

    def sql(self, text: str) -> str:
        """``text`` with ``?`` parameters in this dialect's style."""
        return text if self.paramstyle == "qmark" else text.replace("?", "%s")

    def render(self, step: Step) -> list[str]:
        """The DDL statements of one migration step."""
        if isinstance(step, CreateTable):
            return [self.create_table(step.table)]
        if isinstance(step, CreateIndex):
            index = step.index
            unique = "UNIQUE " if index.unique else ""
            return [
                f"CREATE {unique}INDEX {index.name} ON {index.table} ({', '.join(index.columns)})"
            ]
        if isinstance(step, AddColumn):
            return [f"ALTER TABLE {step.table} ADD COLUMN {self.column(step.column)}"]
        return [step.text]

    def column(self, column: Column) -> str:
        text = f"{column.name} {self.types[column.type]}"
        if not column.nullable:
            text += " NOT NULL"
        if column.default is not None:
            text += f" DEFAULT {column.default}"
        return text

    def create_table(self, table: Table) -> str:
        parts = [self.column(column) for column in table.columns]
        parts.append(f"PRIMARY KEY ({', '.join(table.primary_key)})")
        for fk in table.foreign_keys:
            cascade = " ON DELETE CASCADE" if fk.on_delete_cascade else ""
            parts.append(
                f"FOREIGN KEY ({', '.join(fk.columns)}) REFERENCES {fk.table} "
                f"({', '.join(fk.target)}){cascade}"
            )
        return f"CREATE TABLE {table.name} ({', '.join(parts)})"


SQLITE = Dialect(
    "sqlite",
    {
        "text": "TEXT",
        "blob": "BLOB",
        "int": "INTEGER",
        "bigint": "INTEGER",
        "bool": "BOOLEAN",
        "real": "REAL",
        "timestamp": "TEXT",
    },
    "qmark",
)

POSTGRESQL = Dialect(
    "postgresql",
    {
        "text": "TEXT",
        "blob": "BYTEA",
        "int": "INTEGER",
        "bigint": "BIGINT",
        "bool": "BOOLEAN",
        "real": "DOUBLE PRECISION",
        "timestamp": "TEXT",
    },
    "format",
)


# -- applying migrations --------------------------------------------------


class SqlSession(Protocol):
    """What :func:`migrate` and the stores need of a database connection.

    ``execute`` runs one statement (``?`` parameters already converted by
    the caller through :meth:`Dialect.sql`) and returns its rows (empty for
    statements without a result); ``transaction`` is a context manager
    committing on success and rolling back on an exception, in which a
    store's implementation takes whatever lock its dialect needs (SQLite:
    ``BEGIN IMMEDIATE``); ``snapshot`` is a consistent read.
    """

    dialect: Dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def transaction(self) -> AbstractContextManager[None]: ...

    def snapshot(self) -> AbstractContextManager[None]:
        """A read-only transaction: every read inside sees one state of the
        database (SQLite: a deferred ``BEGIN``; PostgreSQL: ``REPEATABLE
        READ``). Inside :meth:`transaction`, a no-op."""
        ...


def utc_text(moment: datetime | None = None) -> str:
    """``moment`` (default: now) as ISO 8601 UTC text with microseconds."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def table_exists(session: SqlSession, name: str) -> bool:
    """Whether ``name`` is a table of the database (of the current schema in PostgreSQL)."""
    if session.dialect.name == "sqlite":
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    else:
        sql = (
            "SELECT 1 FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_name = ?"
        )
    return bool(session.execute(session.dialect.sql(sql), (name,)))


def schema_version(session: SqlSession) -> int:
    """The database's schema version: 0 for an empty database; raises
    :class:`SchemaError` for a database with tables but no ``certgate_schema``."""
    if not table_exists(session, SCHEMA_TABLE.name):
        if table_exists(session, TENANTS.name):
            raise SchemaError(
                "the database has a 'tenants' table but no 'certgate_schema': it is not a "
                "certgate tenant store (use another file or database)"
            )
        return 0
    rows = session.execute("SELECT MAX(version) FROM certgate_schema")
    return int(rows[0][0] or 0)


def check_readable(version: int, where: str) -> None:
    """Raise :class:`SchemaError` unless a reader of this code can use a
    database at ``version``."""
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{where}: the tenant store has schema version {version}, newer than this "
            f"certgate's {SCHEMA_VERSION}: upgrade certgate on this host"
        )
    if version < SCHEMA_VERSION:
        what = "no certgate schema" if version == 0 else f"schema version {version}"
        raise SchemaError(
            f"{where}: the tenant store has {what}; this certgate needs version "
            f"{SCHEMA_VERSION}: run `certgate tenants migrate URL` (any write command "
            "migrates too)"
        )


def migrate(
    session: SqlSession,
    *,
    target: int = SCHEMA_VERSION,
    migrations: Sequence[Migration] = MIGRATIONS,
    where: str = "tenant store",
    lock: Callable[[SqlSession], None] | None = None,
) -> list[int]:
    """Bring the database to ``target``; the versions applied, in order.

    Each migration runs in its own transaction together with its
    ``certgate_schema`` row, so a failure leaves the database at the last
    complete version. ``lock`` is called first in each transaction (a
    PostgreSQL advisory lock, say; SQLite's ``BEGIN IMMEDIATE`` already
    excludes other writers). Raises :class:`SchemaError` for a database
    newer than ``target`` (this code), or not a certgate database.
    """
    known = [m.version for m in migrations]
    if known != list(range(1, len(known) + 1)):
        raise SchemaError(f"migrations must be numbered 1..n in order, not {known}")
    if not 0 <= target <= len(known):
        raise SchemaError(f"no schema version {target} (known: 1..{len(known)})")
    applied: list[int] = []
    while True:
        with session.transaction():
            if lock is not None:
                lock(session)
            if not table_exists(session, SCHEMA_TABLE.name):
                schema_version(session)  # refuses a foreign database
                for statement in session.dialect.render(CreateTable(SCHEMA_TABLE)):
                    session.execute(statement)
                current = 0
            else:
                current = schema_version(session)
            if current > len(known):
                raise SchemaError(
                    f"{where}: the tenant store has schema version {current}, newer than this "
                    f"certgate's {len(known)}: upgrade certgate (a database is never migrated "
                    "backwards)"
                )
            if current >= target:
                return applied
            step = migrations[current]
            for item in step.steps:
                for statement in session.dialect.render(item):
                    session.execute(statement)
            session.execute(
                session.dialect.sql(
                    "INSERT INTO certgate_schema (version, description, applied_at) "
                    "VALUES (?, ?, ?)"
                ),
                (step.version, step.description, utc_text()),
            )
            applied.append(step.version)


def ddl(dialect: Dialect, migrations: Sequence[Migration] = MIGRATIONS) -> Iterator[str]:
    """Every DDL statement of ``migrations`` in ``dialect`` (for documentation
    and for operators who apply schemas by hand)."""
    yield from dialect.render(CreateTable(SCHEMA_TABLE))
    for migration in migrations:
        for step in migration.steps:
            yield from dialect.render(step)
