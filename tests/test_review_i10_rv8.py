"""Review of issue 10 (rv8): ``[certgate].registry`` in TOML, reloads that swap
stores, the CLI against stores, the expiry monitor over a store, gate.close().

* a reload that replaces a PostgreSQL store (other cache options, another
  URL) closes the old one; a lookup a request started before the swap must
  then fail closed (503), not open a connection pool nobody ever closes;
* no ``repr`` of what :func:`load_gate_config` returns shows the password
  of a ``postgresql://`` URL (tracebacks with locals, error reporters).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives import hashes

from certgate import CertGate, Reason, Tenant
from certgate.cli import main
from certgate.config import close_registry, load_gate_config, store_spec
from certgate.devpki import CA
from certgate.errors import ConfigError, TrustStoreUnavailable
from certgate.stores.caching import CachingRegistry
from certgate.stores.postgres import PostgresRegistry
from certgate.stores.scan import PAGE, store_expiry
from certgate.stores.sqlite import SqliteRegistry, sqlite_url
from tests.store_helpers import leaf_facts
from tests.test_reload_e2e import eventually

ACME = "acme.rv8.test"
GLOBEX = "globex.rv8.test"
HEADERS = '[certgate]\ntrusted_proxies = ["10.0.0.0/8"]\nheader_sources = ["cloudflare"]\n'


def pool_threads() -> int:
    """Threads of psycopg pools (their scheduler and workers) in this process."""
    return sum(1 for t in threading.enumerate() if t.name.startswith("certgate-certgate_changes-"))


@pytest.fixture
def pg_config(pg_dsn: str, tmp_path: Path) -> tuple[Path, dict[str, CA]]:
    cas = {"acme": CA.root("Acme rv8"), "globex": CA.root("Globex rv8")}
    store = PostgresRegistry(pg_dsn, create=True)
    try:
        store.put(Tenant.from_pem("acme", [ACME], roots=cas["acme"].cert_pem))
        store.put(Tenant.from_pem("globex", [GLOBEX], roots=cas["globex"].cert_pem))
    finally:
        store.close()
    path = tmp_path / "certgate.toml"
    path.write_text(
        HEADERS + f'registry = "{pg_dsn}"\n[certgate.registry_cache]\nmax_tenants = 100\n'
    )
    return path, cas


def test_a_lookup_on_a_replaced_postgresql_store_fails_closed_without_a_new_pool(
    pg_config: tuple[Path, dict[str, CA]], pg_dsn: str
) -> None:
    path, cas = pg_config
    gate = CertGate.from_toml(path)
    try:
        old = gate.registry
        assert isinstance(old, CachingRegistry)
        old_snapshot = gate.snapshot
        assert gate.decide(leaf_facts(ACME, cas["acme"].issue("d1"))).allowed
        path.write_text(path.read_text().replace("100", "50"))
        gate.reload()
        assert gate.registry is not old
        before = pool_threads()
        # a request that read the old snapshot before the swap looks up an uncached host
        with pytest.raises(TrustStoreUnavailable, match="closed"):
            old.tenant_for_host(GLOBEX)
        assert old.inner._proc is None  # no pool opened for the closed store
        assert pool_threads() == before
        # through the old snapshot's gate path: a 503, never a 500 or an answer from a new pool
        decision = old_snapshot.decide(leaf_facts(GLOBEX, cas["globex"].issue("g1")))
        assert decision.reason is Reason.TRUST_STORE_UNAVAILABLE
        assert pool_threads() == before
        # the gate itself uses the new store
        assert gate.decide(leaf_facts(GLOBEX, cas["globex"].issue("g1"))).allowed
    finally:
        gate.close()


def test_no_repr_of_a_store_config_shows_the_password(
    pg_config: tuple[Path, dict[str, CA]], pg_dsn: str
) -> None:
    path, _ = pg_config
    password = pg_dsn.split(":")[2].split("@", maxsplit=1)[0]
    assert len(password) >= 8
    assert password in pg_dsn
    spec = store_spec(path)
    assert spec is not None
    assert password not in repr(spec)
    assert "postgresql" in repr(spec)
    config = load_gate_config(path)
    try:
        assert password not in repr(config)
        assert config.store == spec
    finally:
        close_registry(config.registry)


def test_a_blocked_store_expiry_scan_does_not_stop_file_watch_reloads(
    pg_config: tuple[Path, dict[str, CA]], pg_dsn: str
) -> None:
    """The expiry scan of a store runs off the monitor thread: while it waits
    on the database (here a table locked by a migration-like ``LOCK TABLE``;
    at a million tenants, minutes of parsing), the file watch and signal
    reloads of every gate in the process - which the monitor thread runs -
    go on."""
    path, _ = pg_config
    path.write_text(path.read_text().replace("[certgate]\n", "[certgate]\nwatch_interval = 0.1\n"))
    with psycopg.connect(pg_dsn) as locker, psycopg.connect(pg_dsn, autocommit=True) as watcher:
        locker.execute("LOCK TABLE certificates IN ACCESS EXCLUSIVE MODE")  # a transaction
        gate = CertGate.from_toml(path)
        try:
            gate.start_monitor()  # what a middleware calls: start-up does not wait for the scan
            waiting = (
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'certgate' "
                "AND wait_event_type = 'Lock' AND query LIKE '%FROM certificates%'"
            )

            def scan_blocked() -> bool:
                row = watcher.execute(waiting).fetchone()
                return row is not None and row[0] >= 1

            eventually(scan_blocked, "the expiry scan waits on the lock", 10.0)
            path.write_text(
                path.read_text().replace("[certgate]\n", '[certgate]\nrefusal_format = "text"\n')
            )
            eventually(
                lambda: gate.snapshot.settings.refusal_format == "text",
                "the file watch reloaded while the scan waits",
                5.0,
            )
        finally:
            locker.rollback()
            gate.close()


def test_a_damaged_certificate_row_is_named_with_its_tenant_and_the_fix_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A row certgate did not write (a damaged file, a hand-made INSERT):
    ``certgate expiry``/``bundle``/``config check`` and the gate's expiry
    check say which certificate and tenant, not a bare ASN.1 parse error."""
    db = tmp_path / "tenants.db"
    store = SqliteRegistry(db, create=True)
    bad_ca = CA.root("Damaged rv8")
    store.put(Tenant.from_pem("acme", [ACME], roots=CA.root("Acme rv8").cert_pem))
    store.put(Tenant.from_pem("damaged", [GLOBEX], roots=bad_ca.cert_pem))
    store.close()
    sha = bad_ca.cert.fingerprint(hashes.SHA256())
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE certificates SET der = ? WHERE sha256 = ?", (b"\x30\x03bad", sha))
        conn.commit()
    url = sqlite_url(db)
    path = tmp_path / "certgate.toml"
    path.write_text('[certgate]\nregistry = "sqlite:///tenants.db"\n')
    for argv in (["expiry", "--registry", url], ["bundle", "--registry", url],
                 ["config", "check", str(path)]):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert sha.hex() in err, argv
        assert "'damaged'" in err, argv
        assert "certgate tenants remove" in err, argv

    gate = CertGate.from_toml(path)
    try:
        with caplog.at_level(logging.ERROR, logger="certgate"):
            gate.start_monitor()
            eventually(lambda: "expiry check failed" in caplog.text, "the check failed", 10.0)
        assert sha.hex() in caplog.text
        assert "'damaged'" in caplog.text
    finally:
        gate.close()

    # the advice works: remove the tenant (its unused certificate goes) and add it again
    assert main(["tenants", "remove", "damaged", "--registry", url]) == 0
    (tmp_path / "ca.pem").write_bytes(bad_ca.cert_pem)
    assert main(["tenants", "add", "damaged", "--registry", url, "--host", GLOBEX,
                 "--root", str(tmp_path / "ca.pem")]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["expiry", "--registry", url]) == 0
    assert main(["bundle", "--registry", url]) == 0
    assert capsys.readouterr().out.count("BEGIN CERTIFICATE") == 2


def test_an_unencoded_bracket_in_a_registry_url_names_the_file_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """urllib's bare ``ValueError("Invalid IPv6 URL")`` named neither the
    file, the key nor the fix (and was not a ConfigError)."""
    url = "postgresql://app:hunter2[x@db.internal/tenants"
    path = tmp_path / "certgate.toml"
    path.write_text(f'[certgate]\nregistry = "{url}"\n')
    with pytest.raises(ConfigError) as caught:
        CertGate.from_toml(path)
    message = str(caught.value)
    assert str(path) in message
    assert "[certgate].registry" in message
    assert "percent-encode" in message
    assert "hunter2" not in message
    assert main(["expiry", "--registry", url]) == 2
    err = capsys.readouterr().err
    assert "percent-encode" in err
    assert "hunter2" not in err


def test_reloads_flapping_between_postgresql_stores_leave_no_connection_behind(
    pg_config: tuple[Path, dict[str, CA]], pg_dsn: str
) -> None:
    """Ten reloads that each replace the store while four threads make
    requests (cache misses included): afterwards, and after gate.close(),
    no pool thread and no server connection of certgate is left."""
    path, cas = pg_config
    text = path.read_text()
    baseline = pool_threads()  # pools other tests of this process left open
    gate = CertGate.from_toml(path)
    acme = leaf_facts(ACME, cas["acme"].issue("d1"))
    globex = leaf_facts(GLOBEX, cas["globex"].issue("g1"))
    stop = threading.Event()
    outcomes: set[object] = set()

    def load() -> None:
        while not stop.is_set():
            for facts in (acme, globex):
                decision = gate.decide(facts)
                outcomes.add(decision.reason if not decision.allowed else "allowed")

    workers = [threading.Thread(target=load) for _ in range(4)]
    try:
        for worker in workers:
            worker.start()
        for size in range(10, 20):  # each a new cache option: a new registry, the old closed
            path.write_text(text.replace("max_tenants = 100", f"max_tenants = {size}"))
            gate.reload()
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        gate.close()
    # fail closed at worst: allowed, or a 503 of a request that used a replaced store
    assert outcomes <= {"allowed", Reason.TRUST_STORE_UNAVAILABLE}, outcomes
    assert "allowed" in outcomes
    eventually(lambda: pool_threads() <= baseline, "every pool of this gate closed", 10.0)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:

        def certgate_connections() -> int:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'certgate' "
                "AND datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            return -1 if row is None else int(row[0])

        eventually(lambda: certgate_connections() == 0, "no certgate connection left", 10.0)


def test_a_scan_stops_at_the_next_page_once_its_store_is_closed(tmp_path: Path) -> None:
    """gate.close() (or a reload replacing the store) during the expiry scan
    of a big store: the scan thread stops at its next page instead of
    parsing the rest of the store on a closed registry."""
    store = SqliteRegistry(tmp_path / "tenants.db", create=True)
    ca = CA.root("Shared rv8")
    tenants = 2 * PAGE + 10
    for number in range(tenants):
        store.put(
            Tenant.from_pem(
                f"t{number:04d}", [f"t{number}.rv8.test"], roots=ca.cert_pem, shared_anchors=True
            )
        )
    reader = SqliteRegistry(tmp_path / "tenants.db")
    assert sum(1 for _ in store_expiry(reader, every=True)) == tenants  # the whole store
    items = store_expiry(reader, every=True)
    seen: list[object] = [next(items)]
    reader.close()
    with pytest.raises(TrustStoreUnavailable, match="closed"):
        seen.extend(items)
    assert len(seen) <= PAGE  # the rest of the page in hand, not the store


def test_a_worker_forked_while_the_store_opens_its_pool_is_not_deadlocked(
    pg_config: tuple[Path, dict[str, CA]], pg_dsn: str
) -> None:
    """gunicorn --preload: the master's gate (expiry scan thread, poller)
    may be opening the store's pool - holding its process lock - at the
    moment a worker is forked. The worker inherits the lock held by a
    thread that does not exist there: its first lookup must not wait forever."""
    store = PostgresRegistry(pg_dsn)
    try:
        held = threading.Event()
        release = threading.Event()

        def opening() -> None:  # the master's thread, inside _process()
            with store._proc_lock:
                held.set()
                release.wait(30)

        thread = threading.Thread(target=opening)
        thread.start()
        held.wait(10)
        pid = os.fork()
        if pid == 0:  # the worker: one lookup, under an alarm
            signal.alarm(10)
            code = 0
            try:
                code = 0 if store.tenant_for_host(ACME) is not None else 3
            except BaseException:  # noqa: BLE001 - reported by the exit code
                code = 4
            os._exit(code)
        release.set()
        thread.join()
        _, status = os.waitpid(pid, 0)
        assert not os.WIFSIGNALED(status), "the forked worker hung on the inherited lock"
        assert os.WEXITSTATUS(status) == 0
    finally:
        store.close()
