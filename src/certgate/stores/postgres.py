"""The PostgreSQL tenant store: one database shared by every worker of every host.

Needs the ``postgres`` extra (``pip install 'certgate[postgres]'``: psycopg 3
and psycopg-pool). Same schema, migrations and writer API as the SQLite
store (:mod:`certgate.stores.schema`, :class:`~certgate.stores.sql.SqlTenantStore`);
what is PostgreSQL's own:

* **Registry URL**: ``postgresql://user:password@host:port/dbname`` with any
  libpq parameter in the query (``sslmode=verify-full``, ...), plus
  certgate's pool settings (:data:`URL_SETTINGS`): ``pool_min``,
  ``pool_max``, ``pool_timeout``, ``heartbeat``. Defaults added when the URL
  does not set them: ``connect_timeout=2``, ``application_name=certgate``,
  TCP keepalives and ``tcp_user_timeout`` (a dead peer is noticed in
  seconds, not at the kernel's default of minutes).
* :class:`PostgresRegistry` - the writer API and a blocking
  :class:`~certgate.registry.TrustRegistry` (for WSGI and ASGI alike,
  behind a :class:`~certgate.stores.caching.CachingRegistry`, as
  :func:`certgate.stores.open_registry` builds it) over a
  ``psycopg_pool.ConnectionPool`` of ``pool_min`` to ``pool_max``
  connections per process; a lookup waits at most ``pool_timeout`` seconds
  for a free connection.
* :class:`AsyncPostgresRegistry` - an :class:`~certgate.registry.AsyncTrustRegistry`
  for the ASGI path over an ``AsyncConnectionPool``: lookups are awaited on
  the event loop (no thread), nothing is cached (each lookup is one
  query), and its ``change_token`` changes whenever its listener sees the
  change counter move (read on each notification and every heartbeat; a
  notification alone changes nothing), so the gate's decision memo is the
  cache of warm requests.
* **Reads** are one statement each (the tenant row with its hosts,
  certificates and CRLs as arrays): one round trip, one consistent view.
  There is no separate host -> id query (``tenant_id_for_host``, which the
  SQLite store offers the cache): over a network a second round trip costs
  more than building a tenant from DER again.
* **Writers** are serialised by a transaction-level advisory lock taken
  first in every write transaction (under READ COMMITTED, each statement
  after it sees every earlier writer's commit, so the host and
  anchor-sharing checks cannot race); each write transaction runs in
  pipeline mode and sends one ``NOTIFY`` (delivered only if it commits;
  its payload - sequence numbers and tenant ids - is for people watching
  with ``LISTEN`` in psql, not trusted by certgate).
* **Change propagation**: each process keeps one extra connection that
  ``LISTEN``s (a background thread; a task for the async registry). A
  notification only wakes it: it then reads the counter and the change log
  (``changes``, which only writers can write - any role that can connect
  can ``NOTIFY``), and so it does every ``heartbeat`` seconds (default
  0.5) without one, which also catches a lost notification. The change
  feed (:meth:`PostgresRegistry.changes_since`, which the cache calls at
  once when the listener read something new - ``wait_for_change`` - and
  every ``poll_interval``) answers from what the listener read, no query,
  while the listener is live; otherwise it reads the change log itself,
  and fails (:class:`~certgate.errors.TrustStoreUnavailable`) when the
  database does not answer, which is what makes the cache fail closed after
  ``max_stale``.
* **Outages**: a lookup that cannot get an answer - server down,
  connection lost, no free connection within ``pool_timeout`` - raises
  :class:`~certgate.errors.TrustStoreUnavailable` (503
  ``trust_store_unavailable``), logged once per outage; a read on a
  connection found broken is retried once on a fresh one, and when the
  listener reaches the database again the pool is replaced by a new one
  (psycopg_pool would otherwise wait out its reconnection back-off, up to
  seconds after the server is back).
* **Processes**: the pool, the listener and every connection belong to one
  process; a forked worker (gunicorn ``--preload``) opens its own on first
  use and never touches the parent's sockets.
* **Pinned schema and timeouts**: the schema is ``schema=`` in the URL,
  else the one the connection's search path finds certgate's tables in
  when the store is opened (``current_schema()`` for a new store; refused
  when tables named like certgate's are also in another schema of that
  path); every connection then runs with ``search_path``
  pinned to that schema (:func:`search_path`: ``pg_catalog`` implicitly
  first), so a table or function another role creates in a schema earlier
  in its usual path shadows nothing, and
  with ``statement_timeout`` (URL ``statement_timeout``, default the
  gate's default ``registry_timeout``, 5 s) and ``lock_timeout`` (2 s): a
  stuck statement gives a 503 and frees its lookup thread. Write
  transactions lift both for themselves.

Not done here: ``LISTEN`` needs a session, so a PgBouncer in between must
run in session mode (without a listener - ``listen=False`` - the change
feed reads the change log on every poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import re
import threading
import time
import urllib.parse
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, LiteralString

from ..errors import ConfigError, TrustStoreUnavailable
from ..lookups import DEFAULT_REGISTRY_TIMEOUT
from ..tenant import Tenant, check_tenant_id
from .records import TenantRecord
from .schema import POSTGRESQL, Dialect, SqlSession, check_readable, migrate, schema_version
from .sql import MAX_CHANGES_READ, OUTAGE_LOG_EVERY, OutageReport, SqlTenantStore

try:
    import psycopg
    import psycopg_pool
    from psycopg import sql as pgsql
except ImportError as exc:  # pragma: no cover - the extra is installed for the tests
    raise ConfigError(
        "postgresql:// registries need the postgres extra: pip install 'certgate[postgres]' "
        f"({exc})"
    ) from None

logger = logging.getLogger("certgate")

DEFAULT_POOL_MIN = 1
DEFAULT_POOL_MAX = 4
DEFAULT_POOL_TIMEOUT = 2.0
DEFAULT_HEARTBEAT = 0.5
DEFAULT_STATEMENT_TIMEOUT = DEFAULT_REGISTRY_TIMEOUT
"""Seconds a statement of a reader may run (the gate's default
``registry_timeout``: a lookup thread is not held longer than the gate waits)."""
DEFAULT_LOCK_TIMEOUT = 2.0
"""Seconds a reader's statement may wait for a lock (a restore or a
migration holding a table): then a 503, not a stuck lookup thread."""
URL_SETTINGS = (
    "pool_min",
    "pool_max",
    "pool_timeout",
    "heartbeat",
    "statement_timeout",
    "lock_timeout",
    "schema",
)
"""certgate's own query parameters of a ``postgresql://`` URL (the others go
to libpq)."""

LIBPQ_DEFAULTS = {
    "connect_timeout": "2",
    "application_name": "certgate",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}
"""libpq parameters set unless the URL sets them."""

WRITER_LOCK = 0x6365727467617465
"""The advisory lock key serialising writers (``certgate`` in ASCII)."""

CHANNEL = "certgate_changes"
"""The ``NOTIFY`` channel (with ``:schema`` appended outside ``public``)."""

MAX_PAYLOAD = 7000
"""Longest ``NOTIFY`` payload sent (PostgreSQL's limit is 8000 bytes); a
longer list of tenant ids is replaced by ``*`` (listeners read the log)."""

FEED_KEEP = 16384
"""Changes a listener remembers (an older position reads the log)."""

_RECONNECT_TIMEOUT = 10.0
"""Seconds a pool keeps retrying a connection (with back-off) before it
gives up that attempt; the next lookup starts a new one."""
_MAX_BACKOFF = 1.0

_FORK_GUARD = threading.Lock()
"""Guards replacing a store's inherited ``_proc_lock`` in a forked child
(itself made anew in every child)."""


def _new_fork_guard() -> None:
    global _FORK_GUARD  # noqa: PLW0603 - a forked child must not inherit a held lock
    _FORK_GUARD = threading.Lock()


os.register_at_fork(after_in_child=_new_fork_guard)

_ABANDONED: list[object] = []
"""Pools and connections inherited through ``fork``: kept referenced so that
their finalisers never run in the child (closing them would close the
parent's sessions on the shared sockets)."""


# -- URLs -------------------------------------------------------------------------


@dataclass(frozen=True)
class PgSettings:
    """A parsed registry URL: libpq ``conninfo`` (password included),
    ``where`` (for messages: no password) and certgate's settings."""

    conninfo: str = field(repr=False)
    where: str
    pool_min: int = DEFAULT_POOL_MIN
    pool_max: int = DEFAULT_POOL_MAX
    pool_timeout: float = DEFAULT_POOL_TIMEOUT
    heartbeat: float = DEFAULT_HEARTBEAT
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    schema: str | None = None
    """The schema holding the tables (``None``: found when the store is
    opened, see :func:`open_database`)."""

    def pinned(self, schema: str) -> PgSettings:
        """These settings with every connection's ``search_path`` pinned to
        ``schema`` then ``pg_temp`` (:func:`search_path`) and the reader
        timeouts set (libpq ``options``; a write transaction lifts the
        timeouts for itself)."""
        params = psycopg.conninfo.conninfo_to_dict(self.conninfo)
        ours = (
            f"-c search_path={search_path(schema)} "
            f"-c statement_timeout={round(self.statement_timeout * 1000)} "
            f"-c lock_timeout={round(self.lock_timeout * 1000)}"
        )
        given = str(params.get("options") or "").strip()
        params["options"] = f"{given} {ours}" if given else ours  # later -c settings win
        return dataclasses.replace(
            self, conninfo=psycopg.conninfo.make_conninfo("", **params), schema=schema
        )


def search_path(schema: str) -> str:
    """The pinned ``search_path``: ``schema``, then ``pg_temp``. With
    ``pg_catalog`` not listed, PostgreSQL searches it first, so no function
    or operator in ``schema`` can shadow a built-in one; a table or function
    in any other schema (another role's, earlier in its usual path) is never
    seen; ``pg_temp`` listed last is searched after ``schema`` (and never
    for functions); and ``CREATE TABLE`` (a migration) creates in ``schema``."""
    return f"{_ident(schema)},pg_temp"


_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _ident(schema: str) -> str:
    """``schema`` quoted as an identifier (a name of :data:`_SCHEMA_NAME`)."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(
            f"schema {schema[:80]!r}: certgate's tables need a schema named with ASCII letters, "
            "digits and _ (at most 63, not starting with a digit)"
        )
    return f'"{schema}"'


def _pool_options(settings: PgSettings) -> dict[str, Any]:
    """The options of a connection pool (sync or async) for ``settings``:
    autocommit connections, opened by the caller, reconnecting for at most
    :data:`_RECONNECT_TIMEOUT` seconds."""
    return {
        "min_size": settings.pool_min,
        "max_size": settings.pool_max,
        "timeout": settings.pool_timeout,
        "kwargs": {"autocommit": True},
        "open": False,
        "num_workers": 2,
        "reconnect_timeout": _RECONNECT_TIMEOUT,
    }


def parse_url(url: str, overrides: Mapping[str, Any] | None = None) -> PgSettings:
    """Split ``url`` into libpq parameters and certgate's (:data:`URL_SETTINGS`;
    ``overrides``, when not ``None``, win); :class:`ConfigError` naming the
    parameter when something is wrong. The password never appears in
    ``where`` or in an error message."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL": a "[" or "]" in the user name or password
        raise ConfigError(_RESERVED) from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError("not a postgresql:// URL")
    if parts.fragment:
        raise ConfigError("a postgresql:// URL takes no #fragment")
    _check_authority(parts)
    where = _redacted(parts)
    ours: dict[str, str] = {}
    libpq: list[tuple[str, str]] = []
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key in URL_SETTINGS:
            if key in ours:
                raise ConfigError(f"{where}: {key} is given twice")
            ours[key] = value
        else:
            libpq.append((key, value))
    for key, value in (overrides or {}).items():
        if value is not None:
            ours[key] = str(value)
    base = urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, parts.path, urllib.parse.urlencode(libpq), "")
    )
    try:
        params = psycopg.conninfo.conninfo_to_dict(base)
    except psycopg.ProgrammingError as exc:
        text = str(exc).replace(parts.password or "\0", "***")
        raise ConfigError(f"{where}: not a valid PostgreSQL URL: {text}") from None
    for key, value in LIBPQ_DEFAULTS.items():
        params.setdefault(key, value)
    settings = PgSettings(
        conninfo=psycopg.conninfo.make_conninfo("", **params),
        where=where,
        pool_min=_int(ours.get("pool_min"), "pool_min", DEFAULT_POOL_MIN, 0, where),
        pool_max=_int(ours.get("pool_max"), "pool_max", DEFAULT_POOL_MAX, 1, where),
        pool_timeout=_seconds(
            ours.get("pool_timeout"), "pool_timeout", DEFAULT_POOL_TIMEOUT, where
        ),
        heartbeat=_seconds(ours.get("heartbeat"), "heartbeat", DEFAULT_HEARTBEAT, where),
        statement_timeout=_seconds(
            ours.get("statement_timeout"), "statement_timeout", DEFAULT_STATEMENT_TIMEOUT, where
        ),
        lock_timeout=_seconds(
            ours.get("lock_timeout"), "lock_timeout", DEFAULT_LOCK_TIMEOUT, where
        ),
        schema=ours.get("schema"),
    )
    if settings.schema is not None:
        _ident(settings.schema)
    if settings.pool_min > settings.pool_max:
        raise ConfigError(
            f"{where}: pool_min ({settings.pool_min}) is larger than pool_max ({settings.pool_max})"
        )
    return settings


_RESERVED = (
    "postgresql:// URL: not a valid URL; a user name or password holding / ? # [ ] @ or : "
    "must percent-encode it (or give the password in PGPASSWORD or a passfile)"
)
_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_authority(parts: urllib.parse.SplitResult) -> None:
    """Refuse, without echoing the URL, one whose authority ended early: a
    ``/`` or ``?`` left unencoded in a password moves the rest of it (and the
    ``@host``) into the path or the query, where no redaction finds it."""
    names = (key for key, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    if "@" in parts.path or not all(_PARAMETER_NAME.fullmatch(name) for name in names):
        raise ConfigError(_RESERVED)


def _redacted(parts: urllib.parse.SplitResult) -> str:
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username
    if user:
        netloc = f"{urllib.parse.quote(user)}@{netloc}"
    query = "&".join(
        f"{k}=***" if k in ("password", "sslpassword") else f"{k}={v}"
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))[:300]


def _int(value: str | None, name: str, default: int, least: int, where: str) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if not least <= number <= 1000:
        raise ConfigError(f"{where}: {name} must be an integer from {least} to 1000, not {value!r}")
    return number


def _seconds(value: str | None, name: str, default: float, where: str) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and 0 < number <= 300):
        raise ConfigError(f"{where}: {name} must be a number of seconds in (0, 300], not {value!r}")
    return number


# -- sessions ---------------------------------------------------------------------


def _q(text: str) -> LiteralString:
    """A statement of this module or of :mod:`certgate.stores.sql` (never
    built from input: every value is a parameter)."""
    return text  # mypy treats LiteralString as str; every statement here is a constant


def _rows(cursor: psycopg.Cursor[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return cursor.fetchall() if cursor.description is not None else []


def _returns_rows(sql: str) -> bool:
    """Whether a statement of the stores returns rows (a ``SELECT``, or
    ``... RETURNING``): in a pipelined write transaction only those wait
    for the server."""
    head = sql.lstrip()[:6].upper()
    return head in ("SELECT", "WITH ") or " RETURNING " in sql.upper()


class PgSession:
    """A :class:`~certgate.stores.schema.SqlSession` over a connection pool.

    Outside a transaction each statement runs on a pooled connection of its
    own (autocommit). :meth:`transaction` holds one connection in pipeline
    mode (statements without rows - inserts, deletes - do not wait for the
    server; a ``SELECT`` waits for everything before it), takes the writer
    lock (:data:`WRITER_LOCK`) and, if the store logged changes in it,
    sends one ``NOTIFY`` before committing; :meth:`snapshot` is a
    ``REPEATABLE READ, READ ONLY`` transaction. One session per thread.
    """

    dialect: Dialect = POSTGRESQL

    def __init__(self, proc: _Process, channel: str) -> None:
        self.proc = proc
        self.channel = channel
        self.conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self.pipelined = False
        self.logged: list[tuple[int, int, tuple[str, ...]]] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.conn is not None:
            if self.pipelined:  # only a statement with rows waits for the server
                cursor = self.conn.execute(_q(sql), params or None)
                return cursor.fetchall() if _returns_rows(sql) else []
            return _rows(self.conn.execute(_q(sql), params or None))
        for attempt in (1, 2):
            pool = self.proc.pool
            with pool.connection() as conn:
                try:
                    return _rows(conn.execute(_q(sql), params or None))
                except psycopg.OperationalError:
                    if attempt == 2 or not conn.broken:
                        raise
            pool.check()  # the server restarted: drop every stale connection
        raise AssertionError("unreachable")

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.conn is None:
            with self.transaction():
                self.executemany(sql, rows)
            return
        with self.conn.cursor() as cursor:
            cursor.executemany(_q(sql), rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self.conn is not None:
            raise RuntimeError("nested transaction")
        with self.proc.pool.connection() as conn, conn.pipeline(), conn.transaction():
            _lift_timeouts(conn)  # waiting for another writer is no lookup
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
            # Plans for the values at hand, even of prepared statements: a
            # generic plan of the write-time rule's queries (an owner of this
            # certificate, not sharing, not this tenant, LIMIT 1) guessed
            # that any row would do and scanned them all (36 ms each at 100k
            # tenants).
            conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            self.conn, self.pipelined, self.logged = conn, True, []
            try:
                yield
                if self.logged:
                    conn.execute(
                        "SELECT pg_notify(%s, %s)", (self.channel, notify_payload(self.logged))
                    )
            finally:
                self.conn, self.pipelined, self.logged = None, False, []

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        if self.conn is not None:
            yield
            return
        with self.proc.pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            self.conn = conn
            try:
                yield
            finally:
                self.conn = None


def _lift_timeouts(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    """No statement or lock timeout for the rest of this write transaction:
    an import's batch, a migration or the wait for another writer's lock may
    take longer than a lookup should (the reader timeouts of
    :meth:`PgSettings.pinned`)."""
    conn.execute("SET LOCAL statement_timeout = 0")
    conn.execute("SET LOCAL lock_timeout = 0")


class _OneConnection:
    """A :class:`SqlSession` over one connection (start-up checks, migrations)."""

    dialect: Dialect = POSTGRESQL

    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return _rows(self.conn.execute(_q(sql), params or None))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cursor:
            cursor.executemany(_q(sql), rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            _lift_timeouts(self.conn)
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
            yield

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        yield


def notify_payload(logged: Sequence[tuple[int, int, Sequence[str]]]) -> str:
    """``"FIRST LAST id id ..."``: the sequence numbers of one write
    transaction and the tenants it changed (``*`` in place of the ids when
    they do not fit in :data:`MAX_PAYLOAD`)."""
    first = min(entry[0] for entry in logged)
    last = max(entry[1] for entry in logged)
    ids = sorted({tenant_id for entry in logged for tenant_id in entry[2]})
    text = f"{first} {last} {' '.join(ids)}"
    return text if len(text) <= MAX_PAYLOAD and ids else f"{first} {last} *"


# -- the listener's view of changes -------------------------------------------


class ChangeLog:
    """What a listener read from the change log, thread-safe: the tenants
    changed at each sequence number after ``base`` up to ``latest`` (the
    counter when last read), and when the database last answered
    (``alive_at``, monotonic).

    Notifications only wake the listener: what changed is always read from
    the ``changes`` table, which only writers can write. (Any role that can
    connect can ``NOTIFY`` on any channel; a forged payload must not be able
    to hide a real change.)

    :meth:`answer` tells which tenants changed since a position when that is
    known without a query; ``None`` means "read the change log".
    """

    def __init__(self, keep: int = FEED_KEEP) -> None:
        self.lock = threading.Lock()
        self.keep = keep
        self.live = False
        self.alive_at = -math.inf
        self.base = -1
        self.latest = -1
        self.entries: deque[tuple[int, str]] = deque()
        self.changed = threading.Condition(self.lock)
        self.wakeups = 0
        """Times the log moved (the condition is notified on each)."""

    def sync(self, current: int, rows: Sequence[tuple[int, str]], now: float) -> None:
        """The counter is at ``current``; ``rows`` are the change log's
        ``(seq, tenant_id)`` after :attr:`latest`, in order (possibly cut
        short, or missing pruned rows: then only what follows ``current``
        is known)."""
        with self.lock:
            self.live = True
            self.alive_at = now
            if current == self.latest:
                return
            complete = (
                self.latest >= 0
                and current > self.latest
                and bool(rows)
                and rows[0][0] == self.latest + 1
                and rows[-1][0] == current
                and len(rows) == current - self.latest
            )
            if complete:
                self.entries.extend(rows)
                while len(self.entries) > self.keep:
                    self.base = self.entries.popleft()[0]
            else:  # listening anew, a gap, or the database went back (a restored backup)
                self.entries.clear()
                self.base = current
            self.latest = current
            self.wakeups += 1
            self.changed.notify_all()

    def lost(self) -> None:
        with self.lock:
            self.live = False

    def answer(
        self, position: int, now: float, liveness: float
    ) -> tuple[int, frozenset[str]] | None:
        """``(latest, ids changed after position)`` from what was read, or
        ``None``: not listening, no answer from the database for
        ``liveness`` seconds, or a position outside what was read."""
        known = self.answer_at(position, now, liveness)
        return None if known is None else known[:2]

    def answer_at(
        self, position: int, now: float, liveness: float
    ) -> tuple[int, frozenset[str], float] | None:
        """:meth:`answer` with the time it is true as of (``alive_at``: when
        the read that learnt it started; a change committed later is not in
        it)."""
        with self.lock:
            if not self.live or now - self.alive_at > liveness:
                return None
            if position == self.latest:
                return position, frozenset(), self.alive_at
            if not self.base <= position < self.latest:
                return None
            ids = set()
            for seq, tenant_id in reversed(self.entries):
                if seq <= position:
                    break
                ids.add(tenant_id)
            return self.latest, frozenset(ids), self.alive_at


# -- per-process state ----------------------------------------------------------


def _channel(schema: str) -> str:
    return CHANNEL if schema == "public" else f"{CHANNEL}:{schema}"[:63]


CERTGATE_TABLES = (
    "certgate_schema",
    "tenants",
    "hosts",
    "certificates",
    "tenant_certificates",
    "crls",
    "certgate_counter",
    "changes",
)


def open_database(
    url: str, overrides: Mapping[str, Any] | None = None, *, create: bool = False
) -> tuple[PgSettings, bool]:
    """What both registries do when opened: parse ``url`` (``overrides``: the
    keyword arguments' settings), connect once, find the schema, migrate it
    (``create``) and check its version. The schema is ``schema=`` in the
    URL, else the one where the search path finds ``certgate_schema``, else
    (a new store) ``current_schema()`` - refused when tables named like
    certgate's are in another schema of the search path (which one a
    statement used would depend on that path). Returns the settings with
    every later connection pinned to that schema (:meth:`PgSettings.pinned`)
    and whether some tenant sets its own mode. :class:`ConfigError` naming
    the URL (no password) when the database cannot be used."""
    settings = parse_url(url, overrides)
    where = settings.where
    try:
        with psycopg.connect(settings.conninfo, autocommit=True) as conn:
            schema = settings.schema
            if schema is None:
                row = conn.execute(
                    "SELECT coalesce((SELECT n.nspname FROM pg_catalog.pg_class c "
                    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.oid = pg_catalog.to_regclass('certgate_schema')), "
                    "pg_catalog.current_schema())"
                ).fetchone()
                if row is None or row[0] is None:
                    raise ConfigError(f"{where}: no current schema (check search_path)")
                schema = str(row[0])
                _check_unshadowed(conn, schema, where)
            settings = settings.pinned(schema)
            conn.execute(
                "SELECT pg_catalog.set_config('search_path', %s, false)",
                (search_path(schema),),
            )
            session = _OneConnection(conn)
            if create:
                migrate(session, where=where)
            check_readable(schema_version(session), where)
            modes = conn.execute("SELECT 1 FROM tenants WHERE mode IS NOT NULL LIMIT 1").fetchone()
    except psycopg.Error as exc:
        raise ConfigError(f"{where}: cannot use the database: {_describe(exc)}") from None
    return settings, modes is not None


def _check_unshadowed(conn: psycopg.Connection[tuple[Any, ...]], schema: str, where: str) -> None:
    """Refuse a search path in which tables named like certgate's are in
    another schema than ``schema``."""
    rows = conn.execute(
        "SELECT DISTINCT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.relname = ANY(%s) "
        "AND n.nspname = ANY(pg_catalog.current_schemas(true)) AND n.nspname <> %s",
        (list(CERTGATE_TABLES), schema),
    ).fetchall()
    if rows:
        others = ", ".join(sorted(str(row[0]) for row in rows))
        raise ConfigError(
            f"{where}: tables named like certgate's are in schema(s) {others} of the search "
            f"path as well as in {schema!r}: name the schema holding "
            "certgate's tables in the URL (schema=NAME) so that no other schema can shadow them"
        )


class _Process:
    """One process's pool, sessions and listener (built again after ``fork``)."""

    def __init__(self, store: PostgresRegistry) -> None:
        self.settings = store.settings
        self.name = f"certgate-{store.channel}"
        self.pid = os.getpid()
        self.pool = self._new_pool()
        self.local = threading.local()
        self.feed = ChangeLog()
        self.stop = threading.Event()
        self.listener: threading.Thread | None = None
        self.lock = threading.Lock()

    def _new_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        settings = self.settings
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            settings.conninfo, name=self.name, **_pool_options(settings)
        )
        pool.open(wait=False)
        return pool

    def renew_pool(self) -> None:
        """A new pool, now that the database answers again (the old one may be
        waiting out its reconnection back-off); the old one is closed once
        the lookups using it are done."""
        old, self.pool = self.pool, self._new_pool()
        threading.Thread(
            target=old.close, kwargs={"timeout": 5.0}, name="certgate-pg-old-pool", daemon=True
        ).start()

    def session(self, channel: str) -> PgSession:
        session: PgSession | None = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = PgSession(self, channel)
        return session

    def close(self, wait: float) -> None:
        self.stop.set()
        if self.listener is not None:
            self.listener.join(wait)
        self.pool.close(timeout=2.0)


class PostgresRegistry(SqlTenantStore):
    """A tenant store in a PostgreSQL database (see the module docstring).

    ``url``: ``postgresql://...`` (:func:`parse_url`; keyword arguments
    override its pool settings). ``create``: create the tables, or bring
    an older schema up to date (writers, ``certgate tenants migrate``); a
    reader (the default) refuses a database whose schema is not this
    code's. ``listen=False``: no listener connection; the change feed
    reads the change log on every poll.

    Opening checks the schema on one connection (:class:`ConfigError` when
    the database cannot be reached or used); the pool and the listener
    start on first use in each process.
    """

    read_errors = (psycopg.Error,)

    blocking = True

    def __init__(
        self,
        url: str,
        *,
        create: bool = False,
        pool_min: int | None = None,
        pool_max: int | None = None,
        pool_timeout: float | None = None,
        heartbeat: float | None = None,
        statement_timeout: float | None = None,
        listen: bool = True,
    ) -> None:
        super().__init__()
        self.settings, _ = open_database(
            url,
            {
                "pool_min": pool_min,
                "pool_max": pool_max,
                "pool_timeout": pool_timeout,
                "heartbeat": heartbeat,
                "statement_timeout": statement_timeout,
            },
            create=create,
        )
        self.where = self.settings.where
        self.channel = _channel(self.settings.schema or "public")
        self.listen = listen
        self.liveness = 2 * self.settings.heartbeat + 0.5
        """Seconds without a heartbeat after which the feed reads the log."""
        self._proc_lock = threading.Lock()
        self._lock_pid = os.getpid()
        """The process ``_proc_lock`` was made in (a forked child makes its own:
        a thread of the parent - a poller, an expiry scan - may have held it
        at the fork, and that thread does not exist in the child)."""
        self._proc: _Process | None = None
        self.closed = False

    # -- processes and sessions ------------------------------------------------

    def _process(self) -> _Process:
        proc = self._proc
        if proc is not None and proc.pid == os.getpid():
            return proc
        if self.retired:  # a pool opened now would never be closed (a reload replaced this one)
            raise TrustStoreUnavailable(
                f"{self.where}: this registry was closed (a reload replaced it, or gate.close())"
            )
        with self._process_lock():
            proc = self._proc
            if proc is None or proc.pid != os.getpid():
                if proc is not None:
                    _ABANDONED.append(proc)  # the parent's: never closed here
                proc = self._proc = _Process(self)
            return proc

    def _process_lock(self) -> threading.Lock:
        """``_proc_lock``, made anew in a forked child (see ``_lock_pid``)."""
        if self._lock_pid != os.getpid():
            with _FORK_GUARD:
                if self._lock_pid != os.getpid():
                    self._proc_lock = threading.Lock()
                    self._lock_pid = os.getpid()
        return self._proc_lock

    def session(self) -> PgSession:
        """This thread's session (pool of this process)."""
        return self._process().session(self.channel)

    def close(self) -> None:
        """Stop the listener and close the pool (this process's). A later
        lookup opens a new pool (the listener stays stopped) - unless the
        store is :attr:`retired` (a gate let go of it): then it raises
        :class:`TrustStoreUnavailable` (503), since that pool would never be
        closed."""
        self.closed = True
        with self._process_lock():
            proc, self._proc = self._proc, None
        if proc is not None and proc.pid == os.getpid():
            proc.close(self.settings.heartbeat + 1.0)

    def _log(self, session: SqlSession, changes: list[tuple[str, str]]) -> int:
        """The change log entry of a write, remembered for the transaction's NOTIFY."""
        last = super()._log(session, changes)
        if isinstance(session, PgSession):
            session.logged.append(
                (last - len(changes) + 1, last, tuple(tenant_id for tenant_id, _ in changes))
            )
        return last

    # -- outages -----------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> TrustStoreUnavailable:
        return self._outage(_describe(exc))

    # -- reads: one statement each ---------------------------------------------

    def record_for_host(self, host: str) -> TenantRecord | None:
        """The stored record of the tenant serving normalised ``host`` (one
        statement: exact pattern first, then the one-label wildcard)."""
        rows = self.session().execute(*host_query(host))
        return record_of(rows[0]) if rows else None

    def get(self, tenant_id: str) -> TenantRecord | None:
        """The stored record of ``tenant_id``, or ``None`` (one statement)."""
        check_tenant_id(tenant_id)
        rows = self.session().execute(*id_query(tenant_id))
        return record_of(rows[0]) if rows else None

    # -- the change feed ---------------------------------------------------------

    def change_position(self) -> int:
        self._ensure_listener()
        try:
            position = super().change_position()
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        self._recovered()
        return position

    def changes_since(self, position: int) -> tuple[int, frozenset[str] | None]:
        """As :meth:`SqlTenantStore.changes_since`: from the listener when it
        knows (no query), else from the change log."""
        latest, ids, _ = self.changes_since_at(position)
        return latest, ids

    def changes_since_at(
        self, position: int, max_age: float | None = None
    ) -> tuple[int, frozenset[str] | None, float]:
        """:meth:`changes_since` and the monotonic time the answer is true as
        of: an answer from the listener is as old as its last read of the
        log (up to ``liveness`` seconds on a silently dead connection), and
        a cache must count its staleness from then, not from the poll.
        ``max_age``: read the log rather than use a listener answer older
        than this (seconds)."""
        proc = self._ensure_listener()
        if proc is not None:
            now = time.monotonic()
            liveness = self.liveness if max_age is None else min(self.liveness, max_age)
            known = proc.feed.answer_at(position, now, liveness)
            if known is not None:
                return known
        started = time.monotonic()
        try:
            latest, ids = self.changes_since_in(self.session(), position)
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        self._recovered()
        return latest, ids, started

    def wait_for_change(self, seen: int, timeout: float) -> int:
        """Block until the listener hears something after ``seen`` (a value
        this method returned; 0 at first) or ``timeout`` seconds pass; the
        value to pass next time. Lets a poller react to a NOTIFY at once."""
        proc = self._ensure_listener()
        if proc is None:
            time.sleep(timeout)
            return seen
        feed = proc.feed
        with feed.changed:
            if feed.wakeups == seen:
                feed.changed.wait(timeout)
            return feed.wakeups

    def _ensure_listener(self) -> _Process | None:
        if not self.listen or self.closed:
            return None
        proc = self._process()
        if proc.listener is None:
            with proc.lock:
                if proc.listener is None:
                    proc.listener = threading.Thread(
                        target=_listen,
                        args=(self.settings, self.channel, proc),
                        name="certgate-pg-listen",
                        daemon=True,
                    )
                    proc.listener.start()
        return proc


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:400]


def _counter(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
    row = conn.execute("SELECT seq FROM certgate_counter WHERE id = 1").fetchone()
    if row is None:
        raise psycopg.DataError("certgate_counter has no row: not a certgate tenant store")
    return int(row[0])


def _listen(settings: PgSettings, channel: str, proc: _Process) -> None:
    """The listener thread: LISTEN; on each notification, and every
    ``heartbeat`` seconds without one, read the counter and the change log
    after the last position read; reconnect after a failure (see the
    module docstring)."""
    feed, stop = proc.feed, proc.stop
    backoff = 0.05
    failed = False
    logged = 0.0
    listen = pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel))
    while not stop.is_set():
        try:
            with psycopg.connect(settings.conninfo, autocommit=True) as conn:
                conn.execute(listen)
                feed.lost()  # anything may have changed while not listening
                with feed.lock:
                    feed.latest = -1
                _read_log(conn, feed)
                if failed:
                    proc.renew_pool()  # the old one's connections are likely dead
                    failed = False
                    logger.warning("certgate: listening for tenant changes again (%s)", channel)
                backoff = 0.05
                while not stop.is_set():
                    for _note in conn.notifies(timeout=settings.heartbeat, stop_after=1):
                        pass
                    for _note in conn.notifies(timeout=0):  # the rest of a burst: one read
                        pass
                    _read_log(conn, feed)
        except psycopg.Error as exc:
            feed.lost()
            failed = True
            now = time.monotonic()
            if not stop.is_set() and now - logged >= OUTAGE_LOG_EVERY:
                logged = now
                logger.error(
                    "certgate: lost the tenant-change listener (%s); changes are read from the "
                    "change log until it is back: %s",
                    settings.where,
                    _describe(exc),
                )
        stop.wait(backoff)
        backoff = min(backoff * 2, _MAX_BACKOFF)
    feed.lost()


def _read_log(conn: psycopg.Connection[tuple[Any, ...]], feed: ChangeLog) -> None:
    """Read the counter, and the change log rows after what ``feed`` holds."""
    began = time.monotonic()  # what is read below is true at least as of now
    current = _counter(conn)
    with feed.lock:
        latest = feed.latest
    rows: list[tuple[int, str]] = []
    if 0 <= latest < current:
        fetched = conn.execute(
            "SELECT seq, tenant_id FROM changes WHERE seq > %s AND seq <= %s ORDER BY seq LIMIT %s",
            (latest, current, MAX_CHANGES_READ),
        ).fetchall()
        rows = [(int(seq), str(tenant_id)) for seq, tenant_id in fetched]
    feed.sync(current, rows, began)


# -- the one-statement reads ------------------------------------------------------

_RECORD_COLUMNS = (
    "t.id, t.mode, t.shared_anchors, t.settings, t.version, t.created, t.updated, "
    'ARRAY(SELECT p.pattern FROM hosts p WHERE p.tenant_id = t.id ORDER BY p.pattern COLLATE "C"), '
    "ARRAY(SELECT c.der FROM tenant_certificates tc JOIN certificates c ON c.sha256 = tc.sha256 "
    "WHERE tc.tenant_id = t.id AND tc.role = 'root' ORDER BY tc.position), "
    "ARRAY(SELECT c.der FROM tenant_certificates tc JOIN certificates c ON c.sha256 = tc.sha256 "
    "WHERE tc.tenant_id = t.id AND tc.role = 'intermediate' ORDER BY tc.position), "
    "ARRAY(SELECT r.der FROM crls r WHERE r.tenant_id = t.id ORDER BY r.position), "
    "ARRAY(SELECT r.label FROM crls r WHERE r.tenant_id = t.id ORDER BY r.position)"
)
_BY_EXACT_HOST = (
    f"SELECT {_RECORD_COLUMNS} FROM hosts h JOIN tenants t ON t.id = h.tenant_id "  # noqa: S608
    "WHERE h.pattern = %s"
)
_BY_HOST = (
    f"SELECT {_RECORD_COLUMNS} FROM hosts h JOIN tenants t ON t.id = h.tenant_id "  # noqa: S608
    "WHERE h.pattern IN (%s, %s) ORDER BY left(h.pattern, 2) = '*.' LIMIT 1"
)
_BY_ID = f"SELECT {_RECORD_COLUMNS} FROM tenants t WHERE t.id = %s"  # noqa: S608


def host_query(host: str) -> tuple[str, tuple[str, ...]]:
    """The statement and parameters reading the tenant of normalised ``host``."""
    from ..hosts import parent_domain  # noqa: PLC0415

    parent = parent_domain(host)
    if parent is None:
        return _BY_EXACT_HOST, (host,)
    return _BY_HOST, (host, "*." + parent)


def id_query(tenant_id: str) -> tuple[str, tuple[str]]:
    return _BY_ID, (tenant_id,)


def record_of(row: Sequence[Any]) -> TenantRecord:
    """A :class:`TenantRecord` from a row of the one-statement reads."""
    (tenant_id, mode, shared, settings, version, created, updated) = row[:7]
    hosts, roots, inters, crls, labels = row[7:12]
    return TenantRecord.from_settings(
        id=tenant_id,
        hosts=list(hosts),
        roots=[bytes(der) for der in roots],
        intermediates=[bytes(der) for der in inters],
        crls=[(bytes(der), label) for der, label in zip(crls, labels, strict=True)],
        shared_anchors=bool(shared),
        mode=mode,
        settings=settings,
        version=int(version),
        created=str(created),
        updated=str(updated),
    )


def open_url(url: str, *, create: bool = False) -> PostgresRegistry:
    """The store of a ``postgresql://`` URL (see :func:`parse_url`)."""
    return PostgresRegistry(url, create=create)


# -- the async registry ------------------------------------------------------------


class AsyncPostgresRegistry(OutageReport):
    """An :class:`~certgate.registry.AsyncTrustRegistry` over an
    ``AsyncConnectionPool`` (see the module docstring): for the ASGI path.

    Lookups are coroutines - one statement each, nothing cached - so changes
    are visible to the next lookup. A listener task (started by the first
    lookup, in that event loop) replaces :attr:`change_token` whenever the
    change counter moves (read when notified, and every heartbeat); while
    it is not live (no heartbeat for ``liveness`` seconds) ``change_token``
    is a new object on every read, so the gate's
    decision memo never answers from before a change it may have missed.

    The pool belongs to the event loop of the first lookup (until
    :meth:`aclose`; with ``follow_loop``, as in
    ``open_registry(url, asynchronous=True)``, also until that loop is
    closed - a start-up check run with ``asyncio.run`` - when the next
    lookup's loop gets a new pool); a lookup from any other loop raises
    :class:`~certgate.errors.TrustStoreUnavailable` - a 503 naming the fix.
    Under WSGI every lookup of a coroutine registry runs in a new loop: use
    :func:`~certgate.stores.open_registry` or :class:`PostgresRegistry`
    there. Writes go through :class:`PostgresRegistry` (or the CLI).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_min: int | None = None,
        pool_max: int | None = None,
        pool_timeout: float | None = None,
        heartbeat: float | None = None,
        statement_timeout: float | None = None,
        follow_loop: bool = False,
    ) -> None:
        self.follow_loop = follow_loop
        """Whether a lookup in a new event loop, once the pool's loop is
        closed, opens a new pool there (off for a bare registry: WSGI's
        ``async_to_sync`` closes a loop per lookup, which must be refused,
        not given a pool each; its cache's blocking view serves WSGI)."""
        self.settings, self._modes = open_database(
            url,
            {
                "pool_min": pool_min,
                "pool_max": pool_max,
                "pool_timeout": pool_timeout,
                "heartbeat": heartbeat,
                "statement_timeout": statement_timeout,
            },
        )
        self.where = self.settings.where
        self.liveness = 2 * self.settings.heartbeat + 0.5
        self.channel = _channel(self.settings.schema or "public")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._opening: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._queries: set[asyncio.Task[TenantRecord | None]] = set()
        """Lookups running (kept referenced; an abandoned one until it ends)."""
        self._listener: asyncio.Task[None] | None = None
        self._token = object()
        self._alive_at = -math.inf
        self._live = False
        self.notifications = 0
        """Changes heard: the counter moved (for tests and metrics)."""

    # -- what the gate reads -----------------------------------------------------

    @property
    def change_token(self) -> object:
        """Replaced on every change heard; a new object on every read while
        the listener is not live."""
        if not self._live or time.monotonic() - self._alive_at > self.liveness:
            return object()
        return self._token

    @property
    def has_tenant_modes(self) -> bool:
        """Whether some tenant sets its own mode (as of start-up or the last
        change the listener heard)."""
        return self._modes

    # -- lookups -------------------------------------------------------------------

    async def tenant_for_host(self, host: str) -> Tenant | None:
        record = await self._one(*host_query(host))
        return None if record is None else record.build(vetted=True)

    async def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        try:
            check_tenant_id(tenant_id)
        except ConfigError:
            return None
        record = await self._one(*id_query(tenant_id))
        return None if record is None else record.build(vetted=True)

    async def _one(self, statement: str, params: tuple[str, ...]) -> TenantRecord | None:
        """One row of ``statement``, read in a task of its own. Cancelled
        (the gate's ``registry_timeout``), the caller goes on at once while
        the task ends in the background: psycopg catches the cancellation
        to cancel the query on the server, which on a silent network takes
        up to 10 s (5 s to send the cancel request, 5 s for the query to
        end) - the request must get its 503 at the deadline, not then."""
        pool = await self._ready()
        task = asyncio.get_running_loop().create_task(self._query(pool, statement, params))
        self._queries.add(task)
        task.add_done_callback(self._query_done)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()  # ends in the background (its connection is closed or returned)
            raise

    def _query_done(self, task: asyncio.Task[TenantRecord | None]) -> None:
        self._queries.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned lookup's error is not logged by asyncio

    async def _query(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        statement: str,
        params: tuple[str, ...],
    ) -> TenantRecord | None:
        try:
            for attempt in (1, 2):
                async with pool.connection() as conn:
                    try:
                        cursor = await conn.execute(_q(statement), params)
                        row = await cursor.fetchone()
                        break
                    except psycopg.OperationalError:
                        if attempt == 2 or not conn.broken:
                            raise
                await pool.check()
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        self._recovered()
        return None if row is None else record_of(row)

    async def _ready(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self.follow_loop and self._loop is not None and self._loop.is_closed():
                self._forget_loop()  # a start-up check's asyncio.run, a server restarted
            if self._loop is not None:
                raise TrustStoreUnavailable(
                    f"{self.where}: AsyncPostgresRegistry serves the event loop of its first "
                    "lookup, not this one (under WSGI every lookup of a coroutine registry "
                    "runs in a new loop): use open_registry(url) or PostgresRegistry there"
                )
            self._start(loop)
        assert self._pool is not None
        assert self._opening is not None
        await asyncio.shield(self._opening)
        return self._pool

    def _forget_loop(self) -> None:
        """Drop what belonged to a closed event loop (its pool, listener and
        tasks can never run again; closing its loop cancelled the listener,
        which closed the pools)."""
        self._loop = None
        self._pool = self._opening = self._listener = None
        self._closing = set()
        self._queries = set()
        self._live = False

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._live = False
        self._renew_pool()
        ref = weakref.ref(self)
        self._listener = loop.create_task(_alisten(ref), name="certgate-pg-listen")

    def _renew_pool(self) -> None:
        """A new pool (at start, and when the database answers again: the old
        one may be waiting out its reconnection back-off); the old one is
        closed in the background."""
        settings = self.settings
        old = self._pool
        pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            settings.conninfo, name=f"certgate-async-{self.channel}", **_pool_options(settings)
        )
        assert self._loop is not None
        self._pool = pool
        self._opening = self._loop.create_task(pool.open(wait=False))
        if old is not None:
            self._closing.add(self._loop.create_task(old.close(timeout=5.0)))
            for task in list(self._closing):
                if task.done():
                    self._closing.discard(task)

    async def aclose(self) -> None:
        """Stop the listener and close the pool."""
        listener, pool = self._listener, self._pool
        self._listener = self._pool = self._opening = None
        self._loop = None
        self._live = False
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        if pool is not None:
            await pool.close(timeout=2.0)
        closing, self._closing = self._closing, set()
        await asyncio.gather(*closing, return_exceptions=True)

    def _unavailable(self, exc: BaseException) -> TrustStoreUnavailable:
        return self._outage(_describe(exc))

    async def _close_pools(self) -> None:
        """Close the pool and any replaced one still closing (their workers
        end); the registry stays bound to its loop."""
        self._live = False
        pools = [self._pool] if self._pool is not None else []
        closing, self._closing = self._closing, set()
        await asyncio.gather(
            *(pool.close(timeout=2.0) for pool in pools), *closing, return_exceptions=True
        )

    def _heard(self, modes: bool | None) -> None:
        self._token = object()
        self.notifications += 1
        if modes is not None:
            self._modes = modes


async def _alisten(ref: weakref.ReferenceType[AsyncPostgresRegistry]) -> None:
    """The async registry's listener task. Cancelled - :meth:`aclose`, or
    the event loop shutting down (``asyncio.run`` cancels every task) - it
    closes the pools first: a pool worker cancelled in the middle of a
    connection attempt swallows the cancellation and would wait forever,
    holding up the loop's shutdown."""
    try:
        await _alisten_body(ref)
    except asyncio.CancelledError:
        registry = ref()
        if registry is not None:
            await registry._close_pools()
        raise


async def _alisten_body(ref: weakref.ReferenceType[AsyncPostgresRegistry]) -> None:
    """LISTEN, heartbeat, reconnect."""
    registry = ref()
    if registry is None:
        return
    settings, channel = registry.settings, registry.channel
    del registry
    backoff = 0.05
    failed = False
    listen = pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel))
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                settings.conninfo, autocommit=True
            ) as conn:
                await conn.execute(listen)
                seq = await _acounter(conn)
                if not _alive(ref, fresh=True, renew=failed):
                    return
                failed = False
                backoff = 0.05
                async for _ in _alisten_loop(conn, settings.heartbeat, seq, ref):
                    pass
                return  # the registry is gone
        except psycopg.Error:
            registry = ref()
            if registry is None:
                return
            registry._live = False
            del registry
            failed = True
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, _MAX_BACKOFF)


async def _alisten_loop(
    conn: psycopg.AsyncConnection[tuple[Any, ...]],
    heartbeat: float,
    seq: int,
    ref: weakref.ReferenceType[AsyncPostgresRegistry],
) -> AsyncIterator[None]:
    """Read the counter on each notification (which only wakes: any role
    that can connect may ``NOTIFY``, and replacing the token empties every
    gate's decision memo) and every ``heartbeat`` seconds; a counter that
    moved replaces the token. Until the registry is gone."""
    while True:
        async for _note in conn.notifies(timeout=heartbeat, stop_after=1):
            pass
        async for _note in conn.notifies(timeout=0):  # the rest of a burst: one read
            pass
        now = await _acounter(conn)
        changed = now != seq
        seq = now
        modes = None
        if changed:
            cursor = await conn.execute("SELECT 1 FROM tenants WHERE mode IS NOT NULL LIMIT 1")
            modes = await cursor.fetchone() is not None
        registry = ref()
        if registry is None:
            return
        if changed:
            registry._heard(modes)
        registry._live = True
        registry._alive_at = time.monotonic()
        del registry
        yield


def _alive(
    ref: weakref.ReferenceType[AsyncPostgresRegistry], *, fresh: bool, renew: bool = False
) -> bool:
    registry = ref()
    if registry is None:
        return False
    if renew:
        registry._renew_pool()
    if fresh:
        registry._token = object()  # listening anew: anything may have changed meanwhile
        registry._live = True
        registry._alive_at = time.monotonic()
    return True


async def _acounter(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> int:
    cursor = await conn.execute("SELECT seq FROM certgate_counter WHERE id = 1")
    row = await cursor.fetchone()
    if row is None:
        raise psycopg.DataError("certgate_counter has no row: not a certgate tenant store")
    return int(row[0])
