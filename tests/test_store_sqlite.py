"""What only the SQLite tenant store has: WAL mode, a missing or damaged
file, its URLs, and outages of the file (locked by another process, made
unreadable to the workers).

The behaviour it shares with PostgreSQL (schema and migrations, the writer
API and its rules, concurrency, isolation, an outage and its recovery,
propagation across processes) is tested against both in
tests/test_store_backends.py.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from certgate import CertGate, ConfigError, Reason, Tenant
from certgate.errors import TrustStoreUnavailable
from certgate.stores import open_registry, open_store
from certgate.stores.caching import CachingRegistry
from certgate.stores.schema import POSTGRESQL, SQLITE, ddl
from certgate.stores.sqlite import SqliteRegistry, path_of_url
from tests.conftest import PKI
from tests.pg_server import chown_tree, os_user
from tests.store_helpers import Worker, leaf_facts, new_store, url_of, wait_for

# -- schema and migrations ----------------------------------------------------


def test_a_fresh_store_is_in_wal_mode(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    assert store.session().execute("PRAGMA journal_mode")[0][0] == "wal"


def test_a_reader_refuses_a_missing_file_and_never_creates_one(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(ConfigError, match="no such file"):
        SqliteRegistry(path)
    with pytest.raises(ConfigError, match="no such file"):
        open_registry(f"sqlite:///{path}")
    assert not path.exists()


def test_a_store_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"not a database at all" * 200)
    with pytest.raises(ConfigError, match="cannot open the tenant store: file is not a database"):
        SqliteRegistry(path)


def test_ddl_renders_in_both_dialects() -> None:
    sqlite = list(ddl(SQLITE))
    postgres = list(ddl(POSTGRESQL))
    assert len(sqlite) == len(postgres)
    assert any("BYTEA" in s for s in postgres)
    assert not any("BYTEA" in s for s in sqlite)
    assert any(s.startswith("CREATE INDEX certificates_name_key") for s in postgres)
    assert POSTGRESQL.sql("SELECT ? WHERE a = ?") == "SELECT %s WHERE a = %s"


def test_sqlite_urls(tmp_path: Path) -> None:
    assert path_of_url("sqlite:///tenants.db") == Path("tenants.db")
    assert path_of_url("sqlite:////var/lib/t.db") == Path("/var/lib/t.db")
    assert path_of_url("sqlite:////a%20b/t.db") == Path("/a b/t.db")
    for bad in ("sqlite://x.db", "sqlite:///", "sqlite:///t.db?mode=ro", "postgres:///x"):
        with pytest.raises(ConfigError):
            path_of_url(bad)
    with pytest.raises(ConfigError, match="unknown registry URL"):
        open_store("mysql://x")
    with pytest.raises(ConfigError) as raised:  # a misspelt scheme never shows the password
        open_store("postgressql://app:s3cret-pw@db.internal/certgate")
    assert "s3cret-pw" not in str(raised.value)
    assert "postgressql" in str(raised.value)


# -- outages ---------------------------------------------------------------------


def test_outage_locked_then_released(tmp_path: Path, pki: PKI) -> None:
    """Another process holds the file in exclusive locking mode (WAL
    readers wait for nothing else): 503 after the busy timeout, then
    allowed again once the lock is gone."""
    store = new_store(tmp_path)
    acme = pki["acme"]
    store.put(Tenant("acme", acme.hosts, (acme.roots[0].cert,), (acme.issuer.cert,)))
    store.close()
    inner = SqliteRegistry(store.path, busy_timeout=0.1)
    inner.close()  # no connection open when the lock is taken
    gate = CertGate(
        CachingRegistry(inner, poll_interval=0.05, max_stale=0.2),
        trusted_proxies=["10.0.0.0/8"],
        header_sources=["cloudflare"],
    )
    device = acme.client()
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE certgate_counter SET seq = seq")
    try:
        decision = gate.decide(leaf_facts("pay.acme.test", device))
        assert decision.reason is Reason.TRUST_STORE_UNAVAILABLE
        assert "locked" in decision.detail
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert wait_for(lambda: gate.decide(leaf_facts("pay.acme.test", device)).reason is None)


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[tuple[Path, str | None]]:
    """A directory for a store that a worker process reads as another user,
    and that user: as root (CI runs as root; root reads files whatever their
    permissions), the unprivileged system user of tests/pg_server.py owns a
    directory of its own (pytest's are root's alone); otherwise ``tmp_path``
    and ``None`` (this user)."""
    user = os_user()
    if user is None:
        yield tmp_path, None
        return
    made = Path(tempfile.mkdtemp(prefix="certgate-store-"))
    try:
        yield made, user
    finally:
        shutil.rmtree(made, ignore_errors=True)


def test_outage_permissions(shared_dir: tuple[Path, str | None], pki: PKI) -> None:
    """The store file becomes unreadable to the workers (chmod 0): once the
    worker's gate opens the file again it answers 503
    trust_store_unavailable, and allows again when the file is readable.
    The gate runs in a worker process as an unprivileged user."""
    directory, user = shared_dir
    store = new_store(directory)
    acme = pki["acme"]
    store.put(Tenant("acme", acme.hosts, (acme.roots[0].cert,), (acme.issuer.cert,)))
    store.close()
    leaf = directory / "leaf.der"
    leaf.write_bytes(acme.client().der)
    if user is not None:
        chown_tree(directory, user)
    worker = Worker("watch", url_of(store), "pay.acme.test", str(leaf), "2", "0.3", user=user)
    try:
        assert worker.next() == ["ready", "None"]
        store.path.chmod(0)
        worker.send("close")  # the open connection would keep reading
        line = worker.next()
        assert line[:2] == ["changed", Reason.TRUST_STORE_UNAVAILABLE.value], line
        store.path.chmod(0o600)
        line = worker.next()
        assert line[:2] == ["changed", "None"], line
        assert worker.proc.wait(30) == 0
    finally:
        worker.stop()
        store.path.chmod(0o600)


def test_a_store_error_is_a_503_not_an_exception(tmp_path: Path, pki: PKI) -> None:
    store = new_store(tmp_path)
    store.put(pki["acme"].tenant())
    reader = SqliteRegistry(store.path)
    reader.session().execute("SELECT 1")
    store.session().execute("DROP TABLE hosts")
    with pytest.raises(TrustStoreUnavailable, match="no such table"):
        reader.tenant_for_host("pay.acme.test")
