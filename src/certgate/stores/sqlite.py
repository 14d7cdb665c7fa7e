"""The SQLite tenant store: one file shared by every worker process on a host.

:class:`SqliteRegistry` is both the writer API of
:class:`~certgate.stores.sql.SqlTenantStore` and a blocking
:class:`~certgate.registry.TrustRegistry` (put a
:class:`~certgate.stores.caching.CachingRegistry` in front of it, as
:func:`certgate.stores.open_registry` does). Standard library ``sqlite3``
only:

* **WAL mode** (set when the file is created): readers never wait for a
  writer, and a writer never waits for readers; writers wait for each
  other, up to ``busy_timeout`` seconds (then the write fails).
* **A connection per thread** (and per process: a connection is never used
  after ``fork``), opened read-write without creating the file: a missing
  file is an error, never a new empty store.
* **Start-up** opens one connection and checks the schema version
  (:func:`~certgate.stores.schema.check_readable`); nothing per tenant.
  ``create=True`` (the writing CLI) creates the file and migrates it.
* **Outages** - the file missing, unreadable, locked beyond
  ``busy_timeout``, corrupt - raise
  :class:`~certgate.errors.TrustStoreUnavailable` from the registry's
  lookups and change feed (503 ``trust_store_unavailable``), logged once
  per outage; the next lookup after the cause is gone succeeds (a
  connection that failed is reopened). A file replaced by another (a
  restored backup moved into place) is noticed by the change feed, which
  then reopens every connection and reports "everything changed".
* **Change feed**: ``PRAGMA data_version`` (no I/O when nothing changed)
  before reading the change log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, TrustStoreUnavailable
from .schema import SCHEMA_VERSION, SQLITE, Dialect, check_readable, migrate, schema_version
from .sql import SqlTenantStore

logger = logging.getLogger("certgate")

DEFAULT_BUSY_TIMEOUT = 2.0
"""Seconds a statement waits for a lock held by another connection."""


class SqliteSession:
    """A :class:`~certgate.stores.schema.SqlSession` over one ``sqlite3`` connection."""

    dialect: Dialect = SQLITE

    def __init__(self, conn: sqlite3.Connection, generation: int) -> None:
        self.conn = conn
        self.generation = generation
        self.pid = os.getpid()
        self._depth = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` (the write lock, waiting up to the busy
        timeout) ... ``COMMIT``; ``ROLLBACK`` on an exception."""
        if self._depth:
            raise RuntimeError("nested transaction")
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise
        self._depth = 0
        self.conn.execute("COMMIT")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        if self._depth:
            yield
            return
        self.conn.execute("BEGIN")
        self._depth = 1
        try:
            yield
        finally:
            self._depth = 0
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("COMMIT")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()


_INHERITED: list[SqliteSession] = []
"""Sessions a forked process inherited: kept, never closed (closing a
connection opened before ``fork`` drops this process's POSIX locks on the
file and may checkpoint the WAL under other processes; SQLite forbids
using it in the child)."""


def _retire(session: SqliteSession) -> None:
    """Close ``session`` if this process opened it; else keep it unclosed
    (garbage collection would close it)."""
    if session.pid == os.getpid():
        session.close()
    else:
        _INHERITED.append(session)


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """The registry URL of a file: ``sqlite:///`` and the path
    (``sqlite:////var/lib/certgate/tenants.db`` for an absolute one)."""
    return "sqlite:///" + urllib.parse.quote(str(path))


def path_of_url(url: str) -> Path:
    """The file of a ``sqlite:///PATH`` URL. As in SQLAlchemy, ``PATH`` is
    everything after the three slashes: ``sqlite:///tenants.db`` is relative
    to the working directory, ``sqlite:////var/lib/certgate/tenants.db``
    absolute. ``%`` escapes are decoded; no query or fragment."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ConfigError(
            f"not a sqlite:/// URL: {url[:200]!r} (sqlite:////var/lib/certgate/tenants.db)"
        )
    rest = url[len(prefix) :]
    if "?" in rest or "#" in rest:
        raise ConfigError(f"{url[:200]!r}: a sqlite:/// URL takes no query or fragment")
    text = urllib.parse.unquote(rest)
    if not text or text.endswith("/") or "\x00" in text:
        raise ConfigError(f"{url[:200]!r}: no file named (sqlite:////var/lib/certgate/tenants.db)")
    return Path(text)


class SqliteRegistry(SqlTenantStore):
    """A tenant store in one SQLite file (see the module docstring).

    ``path``: the file. ``create``: create it (and its directory's WAL
    files) when missing and bring its schema up to date - for writers; a
    reader (the default) refuses a missing file and a schema other than
    this code's. ``busy_timeout``: seconds to wait for another
    connection's lock. ``blocking = True``: the gate runs lookups on its
    lookup threads, bounded by ``registry_timeout``.
    """

    read_errors = (sqlite3.Error, OSError)

    blocking = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = False,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.where = sqlite_url(self.path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._locks_pid = os.getpid()
        self._generation = 0
        self._identity: tuple[int, int] | None = None
        self._poll: SqliteSession | None = None
        self._poll_lock = threading.Lock()
        self._data_version: int | None = None
        self._feed_position: int | None = None
        if create:
            self._create()
        elif not self.path.exists():
            raise ConfigError(
                f"{self.where}: no such file (create it with `certgate tenants import` or "
                "`certgate tenants add`, or pass create=True)"
            )
        try:
            session = self.session()
            version = schema_version(session)
            self._identity = self._file_identity()
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"{self.where}: cannot open the tenant store: {exc}") from None
        finally:
            self._drop_session()  # nothing open at fork time (gunicorn --preload)
        check_readable(version, self.where)

    # -- connections ----------------------------------------------------------

    def _connect(self, *, create: bool = False) -> sqlite3.Connection:
        mode = "rwc" if create else "rw"
        uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode={mode}"
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _create(self) -> None:
        if not self.path.parent.is_dir():
            raise ConfigError(f"{self.where}: the directory {self.path.parent} does not exist")
        conn = self._connect(create=True)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(f"{self.where}: cannot use WAL mode (journal_mode is {mode})")
            migrate(SqliteSession(conn, 0), where=self.where)
        except sqlite3.Error as exc:
            raise ConfigError(f"{self.where}: cannot create or migrate the store: {exc}") from None
        finally:
            conn.close()

    def session(self) -> SqliteSession:
        """This thread's session (opened on first use, reopened after a
        ``fork`` or when the file was replaced)."""
        session: SqliteSession | None = getattr(self._local, "session", None)
        if (
            session is not None
            and session.pid == os.getpid()
            and session.generation == self._generation
        ):
            return session
        if session is not None:
            _retire(session)
        session = SqliteSession(self._connect(), self._generation)
        self._local.session = session
        return session

    def _drop_session(self) -> None:
        session: SqliteSession | None = getattr(self._local, "session", None)
        if session is not None:
            _retire(session)
            self._local.session = None

    def _file_identity(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def close(self) -> None:
        """Close this thread's connection and the change feed's; a scan
        running on another thread stops at its next page (:attr:`closed`)."""
        self.closed = True
        self._drop_session()
        if self._locks_pid != os.getpid():
            self._after_fork()
        with self._poll_lock:
            if self._poll is not None:
                _retire(self._poll)
                self._poll = None

    # -- outages ----------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> TrustStoreUnavailable:
        """The 503 of a failed read; the session is dropped (the next use
        reconnects), the outage logged at most every 30 s."""
        self._drop_session()
        return self._outage(f"{type(exc).__name__}: {exc}")

    # -- the registry ---------------------------------------------------------

    def tenant_id_for_host(self, host: str) -> str | None:
        """Only the id of the tenant serving ``host`` (one indexed query; for
        a cache that may hold the tenant already)."""
        try:
            tenant_id = self.id_for_host(host)
        except self.read_errors as exc:
            raise self._unavailable(exc) from None
        self._recovered()
        return tenant_id

    # -- the change feed ------------------------------------------------------

    def changes_since(self, position: int) -> tuple[int, frozenset[str] | None]:
        """As :meth:`SqlTenantStore.changes_since`, on a connection of its own
        whose ``PRAGMA data_version`` says, without reading the file, whether
        anything was committed since the last call; also notices a file
        removed (:class:`TrustStoreUnavailable`) or replaced (everything
        changed)."""
        if self._locks_pid != os.getpid():
            self._after_fork()
        with self._poll_lock:
            try:
                identity = self._file_identity()
                replaced = identity != self._identity
                if replaced:
                    self._identity = identity
                    with self._lock:
                        self._generation += 1
                    if self._poll is not None:
                        _retire(self._poll)
                        self._poll = None
                poll = self._poll
                if poll is None or poll.pid != os.getpid():
                    if poll is not None:
                        _retire(poll)
                    poll = self._poll = SqliteSession(self._connect(), self._generation)
                    self._data_version = None
                version = int(poll.execute("PRAGMA data_version")[0][0])
                if version == self._data_version and position == self._feed_position:
                    answer: tuple[int, frozenset[str] | None] = (position, frozenset())
                else:
                    answer = self.changes_since_in(poll, position)
                    self._data_version = version
                    self._feed_position = answer[0]
            except (sqlite3.Error, OSError) as exc:
                if self._poll is not None:
                    _retire(self._poll)
                    self._poll = None
                raise self._unavailable(exc) from None
        self._recovered()
        return (answer[0], None) if replaced else answer

    def _after_fork(self) -> None:
        """New locks in a forked process: the parent's may have been held by
        a thread (its poller) that does not exist here."""
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._locks_pid = os.getpid()

    def change_position(self) -> int:
        try:
            return super().change_position()
        except (sqlite3.Error, OSError) as exc:
            raise self._unavailable(exc) from None

    @contextlib.contextmanager
    def _bulk(self) -> Iterator[None]:
        """A bulk import: a 256 MiB page cache for this connection (the
        indexes of a million tenants do not fit the default 2 MiB) and
        ``synchronous = NORMAL`` (in WAL mode a power loss may undo the last
        batches, never corrupt the file; an import is rerun)."""
        session = self.session()
        session.execute("PRAGMA cache_size = -262144")
        session.execute("PRAGMA synchronous = NORMAL")
        try:
            yield
        finally:
            with contextlib.suppress(sqlite3.Error):
                session.execute("PRAGMA synchronous = FULL")
                session.execute("PRAGMA cache_size = -2000")

    # -- operations -------------------------------------------------------------

    def restore(self, source: str | os.PathLike[str]) -> None:
        """Replace the store's content with the backup ``source``, in place
        and live, in one write transaction: the backup is copied (SQLite's
        backup API) to a temporary file next to the store and migrated
        there, then, under the store's write lock (``BEGIN IMMEDIATE``:
        concurrent writers wait, readers go on reading the old content until
        the commit), every tenant table is replaced by the copy's.

        The change counter then moves strictly past both the store's and the
        backup's last sequence number, and the change log is emptied: every
        cache that read the store (at any position it ever handed out) is
        told "everything changed" at its next poll, and no later write can
        bring the counter back to a position a cache saw with other
        contents. Never move a file over a live store instead: its ``-wal``
        would be paired with the wrong database. Raises
        :class:`ConfigError` when ``source`` is not a certgate store this
        code can read."""
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{path}: no such backup file")
        staged = self.path.with_name(f".{self.path.name}.restore-{os.getpid()}")
        try:
            self._stage(path, staged)
            self._replace_from(staged, path)
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{staged}{suffix}")

    def _stage(self, path: Path, staged: Path) -> None:
        """Copy the backup ``path`` to ``staged`` and migrate the copy."""
        src = sqlite3.connect(f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro", uri=True)
        try:
            version = schema_version(SqliteSession(src, 0))
            if version == 0:
                raise ConfigError(f"{path}: not a certgate tenant store")
            if version > SCHEMA_VERSION:
                check_readable(version, str(path))
            dst = sqlite3.connect(str(staged))
            try:
                src.backup(dst)
            finally:
                dst.close()
        except sqlite3.Error as exc:
            raise ConfigError(f"{path}: cannot restore from it: {exc}") from None
        finally:
            src.close()
        SqliteRegistry(staged, create=True).close()  # a backup of an older version: migrated

    def _replace_from(self, staged: Path, path: Path) -> None:
        """Replace every tenant table of the store by ``staged``'s, and move
        the counter past both (see :meth:`restore`), in one transaction."""
        self._create()  # the live store itself up to date
        conn = self._connect()
        try:
            conn.execute("ATTACH DATABASE ? AS restored", (str(staged),))
            session = SqliteSession(conn, 0)
            with session.transaction():
                live = int(conn.execute("SELECT seq FROM main.certgate_counter").fetchone()[0])
                backup = int(
                    conn.execute("SELECT seq FROM restored.certgate_counter").fetchone()[0]
                )
                for table in _RESTORE_DELETE:
                    conn.execute(f"DELETE FROM main.{table}")  # noqa: S608
                for table in _RESTORE_COPY:
                    columns = ", ".join(
                        row[1] for row in conn.execute(f"PRAGMA main.table_info({table})")
                    )
                    conn.execute(
                        f"INSERT INTO main.{table} ({columns}) "  # noqa: S608
                        f"SELECT {columns} FROM restored.{table}"
                    )
                conn.execute(
                    "UPDATE main.certgate_counter SET seq = ? WHERE id = 1",
                    (max(live, backup) + 1,),
                )
            conn.execute("DETACH DATABASE restored")
        except sqlite3.Error as exc:
            raise ConfigError(f"{path}: cannot restore from it: {exc}") from None
        finally:
            conn.close()

    def backup(self, target: str | os.PathLike[str]) -> None:
        """Write a consistent copy of the store to ``target`` (``VACUUM INTO``:
        a compact copy, taken while readers and writers go on)."""
        target_path = Path(target)
        if target_path.exists():
            raise ConfigError(f"{target_path} exists: a backup never overwrites a file")
        self.session().execute("VACUUM INTO ?", (str(target_path),))


_RESTORE_DELETE = ("hosts", "tenant_certificates", "crls", "changes", "tenants", "certificates")
"""Tables a restore empties (those referring to others first)."""
_RESTORE_COPY = ("tenants", "certificates", "hosts", "tenant_certificates", "crls")
"""Tables a restore copies from the backup (referred-to ones first); its
change log is not copied (a history the readers never saw)."""


def open_url(url: str, *, create: bool = False) -> SqliteRegistry:
    """The store of a ``sqlite:///path`` URL (see :func:`path_of_url`)."""
    return SqliteRegistry(path_of_url(url), create=create)
