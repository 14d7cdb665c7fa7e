"""The two tenant-store backends as one fixture, for the shared store suite.

``backend`` (parametrised ``sqlite`` / ``postgresql``) hands a test empty
store locations of one kind: a file in the test's temporary directory, or a
new database in the session's real PostgreSQL (tests/pg_server.py, dropped
afterwards). ``store_url`` is one such location (nothing created yet);
``store`` is a writer over it, created and migrated.

The ``postgresql`` params go through ``pg_server``: without a server they
skip loudly on a developer machine and FAIL under ``CI=true``, as every
real-PostgreSQL test does. Registered by ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from certgate.stores import SqlTenantStore, open_registry, open_store
from certgate.stores.caching import CachingRegistry
from certgate.stores.schema import SqlSession
from certgate.stores.sqlite import SqliteRegistry, SqliteSession, path_of_url, sqlite_url
from tests.pg_server import PgServer

BACKENDS = ("sqlite", "postgresql")

__all__ = ["BACKENDS", "Backend", "backend", "cli_stores", "count", "store", "store_url"]


class Backend:
    """Empty store locations of one kind, and raw access to them (what a
    test needs to build a database the store code did not write)."""

    def __init__(self, name: str, tmp_path: Path, server: PgServer | None) -> None:
        self.name = name
        self.tmp_path = tmp_path
        self.server = server
        self.databases: list[str] = []
        self.registries: list[CachingRegistry] = []

    @property
    def sqlite(self) -> bool:
        return self.name == "sqlite"

    def new_url(self) -> str:
        """A further empty location of this kind (a file not yet there, or
        an empty database)."""
        if self.server is None:
            return sqlite_url(self.tmp_path / f"store-{uuid.uuid4().hex[:8]}.db")
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.databases.append(name)
        return self.server.create_database(name)

    @contextlib.contextmanager
    def raw(self, url: str) -> Iterator[SqlSession]:
        """A session of one plain connection to ``url`` (autocommit), outside
        the store classes: SQL in ``?`` style for both."""
        if self.server is None:
            conn = sqlite3.connect(path_of_url(url), isolation_level=None)
            try:
                yield SqliteSession(conn, 0)
            finally:
                conn.close()
            return
        import psycopg

        from certgate.stores.postgres import _OneConnection

        with psycopg.connect(url, autocommit=True) as pg:
            yield _OneConnection(pg)

    def writer(self, url: str) -> SqlTenantStore:
        """Another writer over ``url`` (its own connections, as another host
        or process would have; SQLite's waits long for the write lock)."""
        if self.server is None:
            return SqliteRegistry(path_of_url(url), busy_timeout=10)
        return open_store(url)

    def bad_sql_error(self) -> type[Exception]:
        """What the driver raises for a call of an unknown SQL function."""
        if self.server is None:
            return sqlite3.OperationalError
        import psycopg

        return psycopg.errors.UndefinedFunction

    def registry(self, url: str, **cache: Any) -> CachingRegistry:
        """``open_registry(url, **cache)``, closed when the test ends (its
        poller and, in PostgreSQL, its pool and listener)."""
        made = open_registry(url, asynchronous=False, **cache)
        self.registries.append(made)
        return made

    def close(self) -> None:
        for registry in self.registries:
            registry.close()
            registry.inner.close()
        if self.server is not None:
            for name in self.databases:
                self.server.drop_database(name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    server: PgServer | None = None
    if request.param == "postgresql":
        server = request.getfixturevalue("pg_server")
    made = Backend(request.param, tmp_path, server)
    yield made
    made.close()


@pytest.fixture
def store_url(backend: Backend) -> str:
    """An empty store location (nothing created) of the test's backend."""
    return backend.new_url()


@pytest.fixture
def store(store_url: str) -> Iterator[SqlTenantStore]:
    """A writer over a new, migrated store of the test's backend."""
    created = open_store(store_url, create=True)
    yield created
    created.close()  # type: ignore[attr-defined]


@pytest.fixture
def cli_stores(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[SqlTenantStore]]:
    """The stores ``certgate tenants`` commands open when run in this
    process, closed when the test ends. (A command run as a process ends
    with its process; in-process, an unclosed PostgreSQL pool would be
    collected later - possibly by the cyclic GC in one of its own worker
    threads, which cannot join themselves: an unraisable error in an
    unrelated test.)"""
    from certgate.stores import cli

    opened: list[SqlTenantStore] = []

    def tracked(url: str, *, create: bool = False) -> SqlTenantStore:
        made = open_store(url, create=create)
        opened.append(made)
        return made

    monkeypatch.setattr(cli, "open_store", tracked)
    yield opened
    for one in opened:
        one.close()  # type: ignore[attr-defined]


def count(store: SqlTenantStore, table: str) -> int:
    """Rows in ``table`` (a name of the schema, never input)."""
    return int(store.session().execute(f"SELECT COUNT(*) FROM {table}")[0][0])
