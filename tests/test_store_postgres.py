"""The PostgreSQL tenant store against a real server (tests/pg_server.py):
URLs, schema and migrations, the writer API and its write-time rules,
concurrent writers and readers, the change feed (LISTEN/NOTIFY, heartbeat,
missed notifications), fork safety, and portability to and from SQLite.

Isolation through a gate, outages and propagation across processes are in
tests/test_store_postgres_gate.py.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from certgate import CertGate, ConfigError, Reason, Tenant
from certgate.devpki import CA
from certgate.pki import make_crl
from certgate.policy import policy_from_config
from certgate.registry import HostIndex
from certgate.stores import SCHEMA_VERSION, SchemaError, TenantRecord, open_registry, open_store
from certgate.stores.caching import CachingRegistry
from certgate.stores.postgres import (
    MAX_PAYLOAD,
    ChangeLog,
    PostgresRegistry,
    _OneConnection,
    notify_payload,
    parse_url,
)
from certgate.stores.schema import MIGRATIONS, Migration, Sql, migrate
from certgate.stores.sqlite import SqliteRegistry, sqlite_url
from tests.conftest import PKI
from tests.pg_server import PgServer
from tests.store_helpers import leaf_facts, reissued
from tests.test_store_sqlite import _describe, _universe


def wait_for(predicate: Callable[[], bool], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def store(pg_dsn: str) -> Iterator[PostgresRegistry]:
    created = PostgresRegistry(pg_dsn, create=True)
    yield created
    created.close()


def count(store: PostgresRegistry, table: str) -> int:
    return int(store.session().execute(f"SELECT COUNT(*) FROM {table}")[0][0])


# -- URLs -------------------------------------------------------------------------


def test_url_settings_and_redaction() -> None:
    settings = parse_url(
        "postgresql://app:s3cr%40t@db.internal:6432/tenants"
        "?sslmode=require&pool_max=8&pool_timeout=0.5&heartbeat=0.25"
    )
    assert settings.where == (
        "postgresql://app@db.internal:6432/tenants"
        "?sslmode=require&pool_max=8&pool_timeout=0.5&heartbeat=0.25"
    )
    assert (settings.pool_min, settings.pool_max) == (1, 8)
    assert (settings.pool_timeout, settings.heartbeat) == (0.5, 0.25)
    params = psycopg.conninfo.conninfo_to_dict(settings.conninfo)
    assert params["password"] == "s3cr@t"
    assert params["sslmode"] == "require"
    assert params["connect_timeout"] == "2"  # certgate's default
    assert "pool_max" not in params
    assert (
        psycopg.conninfo.conninfo_to_dict(parse_url("postgres://h/db?connect_timeout=9").conninfo)[
            "connect_timeout"
        ]
        == "9"
    )  # the URL's own value wins
    assert parse_url("postgresql://h/db?pool_max=3", {"pool_max": 5}).pool_max == 5


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("pool_max=0", "pool_max must be an integer from 1"),
        ("pool_max=many", "pool_max must be an integer"),
        ("pool_min=5&pool_max=2", "pool_min .5. is larger than pool_max .2."),
        ("pool_timeout=-1", "pool_timeout must be a number of seconds"),
        ("heartbeat=nan", "heartbeat must be a number of seconds"),
        ("pool_max=2&pool_max=3", "pool_max is given twice"),
        ("no_such_libpq_option=1", "not a valid PostgreSQL URL"),
    ],
)
def test_bad_urls_name_the_setting_never_the_password(query: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_url(f"postgresql://app:hunter2@db/tenants?{query}")
    assert "hunter2" not in str(caught.value)


def test_an_unreachable_server_is_a_config_error_without_the_password(pg_server: PgServer) -> None:
    from examples.devenv import free_port

    url = f"postgresql://certgate:hunter2@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(ConfigError, match="cannot use the database") as caught:
        PostgresRegistry(url)
    assert "hunter2" not in str(caught.value)
    wrong = pg_server.dsn("postgres").replace(pg_server.password, "hunter2")
    with pytest.raises(ConfigError, match="password authentication failed") as caught:
        open_store(wrong)
    assert "hunter2" not in str(caught.value)


# -- schema and migrations ----------------------------------------------------------


def test_fresh_store_is_at_the_code_version(store: PostgresRegistry, pg_dsn: str) -> None:
    session = store.session()
    versions = [row[0] for row in session.execute("SELECT version FROM certgate_schema")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    types = dict(
        session.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'certificates'"
        )
    )
    assert types["der"] == "bytea"
    assert store.count() == 0
    assert store.change_position() == 0
    assert isinstance(open_store(pg_dsn), PostgresRegistry)


def test_a_reader_refuses_an_empty_database_and_creates_nothing(pg_dsn: str) -> None:
    with pytest.raises(SchemaError, match="certgate tenants migrate"):
        PostgresRegistry(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)


def test_upgrade_from_v1_keeps_the_tenants(pg_dsn: str, pki: PKI) -> None:
    acme = pki["acme"].tenant()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(_OneConnection(conn), target=1)
        record = TenantRecord.of(acme)
        conn.execute(
            "INSERT INTO tenants (id, mode, shared_anchors, settings, digest, created, updated) "
            "VALUES ('acme', NULL, FALSE, %s, %s, 'then', 'then')",
            (record.settings_json(), record.digest()),
        )
        for pattern in acme.hosts:
            conn.execute("INSERT INTO hosts VALUES (%s, 'acme')", (pattern,))
        anchor = acme.anchors[0]
        der = record.roots[0]
        conn.execute(
            "INSERT INTO certificates VALUES (%s, %s, %s, %s, %s)",
            (
                anchor.fingerprint,
                der,
                anchor.cert.subject.public_bytes(),
                anchor.cert.issuer.public_bytes(),
                anchor.name_key,
            ),
        )
        conn.execute(
            "INSERT INTO tenant_certificates VALUES ('acme', 'root', 0, %s, FALSE)",
            (anchor.fingerprint,),
        )
    with pytest.raises(SchemaError, match="schema version 1; this certgate needs version 2"):
        PostgresRegistry(pg_dsn)
    upgraded = PostgresRegistry(pg_dsn, create=True)
    tenant = upgraded.tenant_for_host("x.acme.test")
    assert tenant is not None
    assert tenant.trust_id == acme.trust_id
    assert upgraded.change_position() == 0
    versions = upgraded.session().execute("SELECT version FROM certgate_schema ORDER BY 1")
    assert [v[0] for v in versions] == [1, 2]
    upgraded.close()


def test_a_database_newer_than_the_code_is_refused(store: PostgresRegistry, pg_dsn: str) -> None:
    store.session().execute(
        "INSERT INTO certgate_schema VALUES (%s, 'from the future', 'later')",
        (SCHEMA_VERSION + 1,),
    )
    for create in (False, True):
        with pytest.raises(SchemaError, match="newer than this certgate"):
            PostgresRegistry(pg_dsn, create=create)


def test_a_foreign_database_is_refused(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE tenants (name text)")
    for create in (False, True):
        with pytest.raises(SchemaError, match="not a certgate tenant store"):
            PostgresRegistry(pg_dsn, create=create)


def test_a_failing_migration_leaves_the_last_complete_version(pg_dsn: str) -> None:
    """DDL is transactional in PostgreSQL: a migration that fails half-way
    leaves nothing of itself."""
    broken = (
        MIGRATIONS[0],
        Migration(2, "broken", (Sql("CREATE TABLE half (x int)"), Sql("SELECT no_such_fn()"))),
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        session = _OneConnection(conn)
        with pytest.raises(psycopg.errors.UndefinedFunction):
            migrate(session, migrations=broken)
        assert session.execute("SELECT MAX(version) FROM certgate_schema") == [(1,)]
        assert session.execute("SELECT to_regclass('half')") == [(None,)]
        assert migrate(session) == [2]


def test_concurrent_migrations_apply_each_version_once(pg_dsn: str) -> None:
    """Writers starting together on an empty database (a fleet deploying):
    the advisory lock makes one migrate and the others find it done."""
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    opened: list[PostgresRegistry] = []

    def open_one() -> None:
        barrier.wait()
        try:
            opened.append(PostgresRegistry(pg_dsn, create=True))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    rows = opened[0].session().execute("SELECT version FROM certgate_schema ORDER BY 1")
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    for one in opened:
        one.close()


# -- the writer API -------------------------------------------------------------------


def test_put_get_list_export_round_trip_through_sqlite(
    store: PostgresRegistry, pg_server: PgServer, pki: PKI, tmp_path: Path
) -> None:
    """Everything a tenant holds survives PostgreSQL -> export -> SQLite ->
    export -> another PostgreSQL database, and is enforced from there."""
    acme = pki["acme"]
    root, issuing = acme.roots[0], acme.issuer
    revoked = acme.client("revoked-device")
    crl = make_crl(
        issuing,
        {
            "crl_number": 0,
            "revoked": [
                {
                    "serial": f"{revoked.cert.serial_number:x}",
                    "revoked_at": "2026-01-01T00:00:00+00:00",
                }
            ],
        },
    )
    policy = {"common_name": ["device-of-acme", "revoked-device"], "min_days_left": 1}
    tenant = Tenant(
        "acme",
        ("pay.acme.test", "*.acme.test"),
        (root.cert,),
        (issuing.cert,),
        mode="report",
        policy=policy_from_config(policy, "test"),
        crls=(crl,),
    )
    assert store.put(tenant, policy=policy) == 1
    assert store.put(tenant, policy=policy) == 0  # unchanged: nothing written
    assert store.change_position() == 1
    record = store.get("acme")
    assert record is not None
    assert record.policy == policy
    assert (record.mode, record.version) == ("report", 1)
    assert record.build().trust_id == tenant.trust_id
    [summary] = store.list()
    assert summary.hosts == ("*.acme.test", "pay.acme.test")
    assert store.tenant_modes_present() is True

    lite = SqliteRegistry(tmp_path / "copy.db", create=True)
    lite.import_tenants(
        TenantRecord.from_json(json.loads(json.dumps(r.to_json())), "line") for r in store.export()
    )
    assert lite.get("acme") == record
    again_dsn = pg_server.create_database()
    again = PostgresRegistry(again_dsn, create=True)
    result = again.import_tenants(lite.export())
    assert (result.read, result.written) == (1, 1)
    assert again.get("acme") == record
    gate = CertGate(
        open_registry(again_dsn),
        trusted_proxies=["10.0.0.0/8"],
        header_sources=["cloudflare"],
    )
    good = gate.decide(leaf_facts("pay.acme.test", acme.client()))
    assert good.reason is None
    assert good.identity is not None
    assert gate.decide(leaf_facts("x.acme.test", revoked)).reason is Reason.REVOKED
    back = PostgresRegistry(pg_server.create_database(), create=True)
    back.import_tenants(SqliteRegistry(lite.path).export())
    assert back.get("acme") == record
    assert sqlite_url(lite.path).startswith("sqlite:///")
    for one in (again, back):
        one.close()


def test_refusals_write_nothing(store: PostgresRegistry, pki: PKI) -> None:
    store.put(pki["acme"].tenant())
    before = count(store, "certificates")
    globex_root = pki["globex"].roots[0].cert
    with pytest.raises(ConfigError, match="claimed by tenants 'acme' and 'globex'"):
        store.put(Tenant("globex", ("api.globex.test", "pay.acme.test"), (globex_root,)))
    with pytest.raises(ConfigError, match=r"share the trust anchor|same certificate"):
        store.put(Tenant("globex", ("api.globex.test",), (pki["acme"].roots[0].cert,)))
    leaf = pki["globex"].client()
    with pytest.raises(ConfigError, match="not a CA certificate"):
        store.put(TenantRecord("globex", ("api.globex.test",), (leaf.der,)))
    assert store.count() == 1
    assert count(store, "certificates") == before
    assert store.change_position() == 1
    assert store.changes_since(0) == (1, frozenset({"acme"}))


def test_remove_collects_unreferenced_certificates(store: PostgresRegistry, pki: PKI) -> None:
    store.put(pki["initech"].tenant())
    assert count(store, "certificates") == 3
    assert store.remove("initech") is True
    assert store.remove("initech") is False
    assert count(store, "certificates") == 0
    assert store.changes_since(0) == (2, frozenset({"initech"}))


def test_import_stops_at_the_first_bad_tenant(store: PostgresRegistry) -> None:
    roots = [CA.root(f"Root {i}") for i in range(5)]
    good = [Tenant(f"t{i}", (f"t{i}.test",), (roots[i].cert,)) for i in range(4)]
    clash = Tenant("clash", ("t0.test",), (roots[4].cert,))
    seen: list[int] = []
    with pytest.raises(ConfigError, match=r"'t0' and 'clash'.*2 tenants stored before"):
        store.import_tenants([*good[:2], good[2], clash, good[3]], batch=2, progress=seen.append)
    assert [t.id for t in store.list()] == ["t0", "t1"]
    result = store.import_tenants(good, batch=3)
    assert (result.read, result.written, result.unchanged) == (4, 2, 2)


def test_write_time_rule_matches_the_in_memory_rule(store: PostgresRegistry) -> None:
    """The anchor-sharing rule's indexed queries, in PostgreSQL: random puts
    and removes over related CAs are accepted exactly when the in-memory
    rule accepts the resulting set of tenants."""
    certs = _universe()
    rng = random.Random(20261207)
    outcomes = {True: 0, False: 0}
    for run in range(6):
        for summary in store.list():
            store.remove(summary.id)
        model: dict[str, Tenant] = {}
        for step in range(25):
            tenant_id = f"t{rng.randrange(5)}"
            if model and rng.random() < 0.15:
                gone = rng.choice(sorted(model))
                store.remove(gone)
                del model[gone]
                continue
            roots = tuple(rng.sample(certs, rng.choice((1, 1, 2))))
            inters = tuple(c for c in rng.sample(certs, rng.choice((0, 0, 1, 2))) if c not in roots)
            try:
                tenant = Tenant(
                    tenant_id,
                    (f"{tenant_id}.test",),
                    roots,  # type: ignore[arg-type]
                    inters,  # type: ignore[arg-type]
                    shared_anchors=rng.random() < 0.4,
                )
            except ConfigError:  # CA vetting: an intermediate not below the roots
                continue
            candidate = {**model, tenant_id: tenant}
            try:
                HostIndex.build(candidate.values())
            except ConfigError:
                expected = False
            else:
                expected = True
            error = ""
            try:
                store.put(tenant)
            except ConfigError as exc:
                accepted, error = False, str(exc)
            else:
                accepted = True
            assert accepted == expected, (run, step, error, _describe(candidate))
            outcomes[accepted] += 1
            if accepted:
                model = candidate
        assert {t.id for t in store.list()} == set(model)
    assert outcomes[True] > 15, outcomes
    assert outcomes[False] > 15, outcomes


def test_import_batches_match_the_in_memory_rule(store: PostgresRegistry) -> None:
    """Random import batches (tenants replaced, hosts moving between tenants
    of one batch, related CAs): a batch is stored exactly when the
    in-memory rules accept the resulting set of tenants, and then the store
    holds exactly that set."""
    certs = _universe()
    rng = random.Random(20261208)
    outcomes = {True: 0, False: 0}
    model: dict[str, Tenant] = {}
    for step in range(120):
        if model and rng.random() < 0.1:
            gone = rng.choice(sorted(model))
            store.remove(gone)
            del model[gone]
            continue
        batch: dict[str, Tenant] = {}
        for tenant_id in rng.sample([f"t{i}" for i in range(6)], rng.choice((1, 2, 3, 4))):
            roots = tuple(rng.sample(certs, rng.choice((1, 1, 2))))
            inters = tuple(c for c in rng.sample(certs, rng.choice((0, 0, 1))) if c not in roots)
            hosts = tuple(rng.sample([f"h{i}.test" for i in range(10)], rng.choice((1, 2))))
            try:
                batch[tenant_id] = Tenant(
                    tenant_id,
                    hosts,
                    roots,  # type: ignore[arg-type]
                    inters,  # type: ignore[arg-type]
                    shared_anchors=rng.random() < 0.4,
                )
            except ConfigError:  # CA vetting: an intermediate not below the roots
                continue
        if not batch:
            continue
        candidate = {**model, **batch}
        try:
            HostIndex.build(candidate.values())
        except ConfigError:
            expected = False
        else:
            expected = True
        error = ""
        try:
            store.import_tenants(batch.values(), batch=len(batch))
        except ConfigError as exc:
            accepted, error = False, str(exc)
        else:
            accepted = True
        assert accepted == expected, (step, error, _describe(candidate))
        outcomes[accepted] += 1
        if accepted:
            model = candidate
        stored = {t.id: t for t in (store.tenant_by_id(i) for i in model) if t is not None}
        assert {i: t.trust_id for i, t in stored.items()} == {
            i: t.trust_id for i, t in model.items()
        }
        assert store.count() == len(model)
    assert outcomes[True] > 20, outcomes
    assert outcomes[False] > 20, outcomes


def test_a_batch_moves_hosts_and_skips_unchanged_tenants(store: PostgresRegistry) -> None:
    roots = [CA.root(f"Batch Root {i}") for i in range(3)]
    a = Tenant("a", ("one.test", "two.test"), (roots[0].cert,))
    b = Tenant("b", ("three.test",), (roots[1].cert,))
    assert store.import_tenants([a, b]).written == 2
    # b takes two.test, which a gives up in the same batch (b listed first)
    b2 = Tenant("b", ("three.test", "two.test"), (roots[1].cert,))
    a2 = Tenant("a", ("one.test",), (roots[2].cert,))
    result = store.import_tenants([b2, a2, b2.__class__("c", ("four.test",), (roots[0].cert,))])
    assert (result.read, result.written) == (3, 3)
    found = store.tenant_for_host("two.test")
    assert found is not None
    assert found.id == "b"
    assert count(store, "certificates") == 3  # a's old root now c's: kept
    again = store.import_tenants([a2, b2])
    assert (again.written, again.unchanged) == (0, 2)
    assert store.changes_since(2) == (5, frozenset({"a", "b", "c"}))
    twice = store.import_tenants([a2, Tenant("a", ("five.test",), (roots[2].cert,))])
    assert twice.written == 1  # the same id twice in a batch: one at a time, the last wins
    assert store.tenant_for_host("five.test") is not None


# -- concurrency ---------------------------------------------------------------------


def test_concurrent_writers_and_readers(store: PostgresRegistry, pg_dsn: str) -> None:
    """Two writers (each its own store: its own connections, as two hosts
    would be) and three readers: every read is a whole tenant, every write
    lands, and the change counter counts each one."""
    url = pg_dsn
    roots = [CA.root(f"Root {i}") for i in range(40)]
    errors: list[BaseException] = []
    stop = threading.Event()
    reads = [0]

    def writer(offset: int) -> None:
        mine = PostgresRegistry(url)
        try:
            for i in range(offset, 40, 2):
                mine.put(Tenant(f"t{i}", (f"t{i}.test", f"*.t{i}.test"), (roots[i].cert,)))
            for i in range(offset, 40, 4):
                mine.remove(f"t{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            mine.close()

    def reader() -> None:
        mine = PostgresRegistry(url)
        try:
            while not stop.is_set():
                for i in range(0, 40, 3):
                    tenant = mine.tenant_for_host(f"x.t{i}.test")
                    if tenant is not None:
                        assert tenant.id == f"t{i}"
                        assert tenant.roots == (roots[i].cert,)
                        assert set(tenant.hosts) == {f"t{i}.test", f"*.t{i}.test"}
                    reads[0] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            mine.close()

    writers = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
    readers = [threading.Thread(target=reader) for _ in range(3)]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert not errors, errors
    assert {t.id for t in store.list()} == {f"t{i}" for i in range(40) if i % 4 not in (0, 1)}
    assert store.change_position() == 40 + 20
    assert reads[0] > 0


@pytest.mark.parametrize("claim", ["host", "anchor"])
def test_racing_writers_one_wins(store: PostgresRegistry, pg_dsn: str, claim: str) -> None:
    """Eight writers put, at the same moment, tenants that claim the same
    host (or trust the same anchor - the same subject and key, in another
    certificate each - without declaring it): the writer lock
    lets exactly one in, and every other gets the rule's ConfigError - never
    a database error, never two winners."""
    url = pg_dsn
    shared_root = CA.root("Contested Root")
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def write(i: int) -> None:
        mine = PostgresRegistry(url)
        if claim == "host":
            tenant = Tenant(f"w{i}", ("contested.test",), (CA.root(f"Root {i}").cert,))
        else:
            # each its own re-issue: another certificate, the same anchor
            tenant = Tenant(f"w{i}", (f"w{i}.test",), (reissued(shared_root, days=i),))
        barrier.wait()
        try:
            mine.put(tenant)
        except ConfigError as exc:
            outcomes.append("refused" if "w" in str(exc) else repr(exc))
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcomes.append(repr(exc))
        else:
            outcomes.append("stored")
        finally:
            mine.close()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["stored"], outcomes
    assert store.count() == 1


# -- the change feed ---------------------------------------------------------------------


def test_payloads() -> None:
    assert notify_payload([(5, 5, ("acme",))]) == "5 5 acme"
    assert notify_payload([(5, 5, ("b",)), (6, 7, ("a", "b"))]) == "5 7 a b"
    many = [(1, 2000, tuple(f"tenant-{i:05d}" for i in range(2000)))]
    assert notify_payload(many) == "1 2000 *"
    assert len(notify_payload([(1, 1, ("x" * 128,))])) < MAX_PAYLOAD


def test_change_log_answers_only_what_it_read() -> None:
    log = ChangeLog(keep=3)
    assert log.answer(0, 0.0, 1.0) is None  # not listening
    log.sync(10, [], 0.0)  # listening from 10 on
    assert log.answer(10, 0.5, 1.0) == (10, frozenset())
    assert log.answer(10, 1.5, 1.0) is None  # the database has not answered for too long
    log.sync(13, [(11, "a"), (12, "b"), (13, "c")], 0.6)
    assert log.answer(10, 0.7, 1.0) == (13, frozenset({"a", "b", "c"}))
    assert log.answer(11, 0.7, 1.0) == (13, frozenset({"b", "c"}))
    assert log.answer(9, 0.7, 1.0) is None  # before listening started
    assert log.answer(14, 0.7, 1.0) is None  # ahead of what was read
    log.sync(14, [(14, "d")], 0.7)  # the oldest entry is dropped (keep=3)
    assert log.answer(10, 0.7, 1.0) is None
    assert log.answer(11, 0.7, 1.0) == (14, frozenset({"b", "c", "d"}))
    log.sync(20, [(19, "e"), (20, "f")], 0.8)  # rows 15-18 pruned: only what follows 20
    assert log.answer(14, 0.8, 1.0) is None
    assert log.answer(20, 0.8, 1.0) == (20, frozenset())
    log.sync(25, [(21, "g")], 0.8)  # cut short: only what follows 25
    assert log.answer(20, 0.8, 1.0) is None
    log.sync(3, [], 0.9)  # the database went back (a restored backup)
    assert log.answer(25, 0.9, 1.0) is None
    assert log.answer(3, 0.9, 1.0) == (3, frozenset())
    log.lost()
    assert log.answer(3, 0.9, 1.0) is None


def _no_log_reads(registry: PostgresRegistry, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = registry.changes_since_in

    def counted(session: object, position: int) -> tuple[int, frozenset[str] | None]:
        calls.append(position)
        return original(session, position)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "changes_since_in", counted)
    return calls


def test_notified_changes_are_answered_without_a_query(
    store: PostgresRegistry, pg_dsn: str, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = PostgresRegistry(pg_dsn)
    position = reader.change_position()  # starts the listener
    assert wait_for(lambda: reader.changes_since(position) == (0, frozenset()))
    log_reads = _no_log_reads(reader, monkeypatch)
    store.put(pki["acme"].tenant())
    store.put(pki["globex"].tenant())
    assert wait_for(lambda: reader.changes_since(0)[0] == 2)
    assert reader.changes_since(0) == (2, frozenset({"acme", "globex"}))
    assert reader.changes_since(1) == (2, frozenset({"globex"}))
    assert reader.changes_since(2) == (2, frozenset())
    assert log_reads == []
    reader.close()


def test_a_missed_notification_is_caught_by_the_heartbeat(
    store: PostgresRegistry, pg_dsn: str, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change logged without a NOTIFY (another tool, a lost message): the
    listener's next heartbeat reads it from the change log."""
    store.put(pki["acme"].tenant())
    reader = PostgresRegistry(pg_dsn, heartbeat=0.1)
    reader.change_position()
    assert wait_for(lambda: reader.changes_since(1) == (1, frozenset()))
    log_reads = _no_log_reads(reader, monkeypatch)
    with psycopg.connect(store.settings.conninfo, autocommit=True) as conn:
        conn.execute("UPDATE certgate_counter SET seq = 2 WHERE id = 1")
        conn.execute("INSERT INTO changes VALUES (2, 'acme', 'put', 'now')")
    assert wait_for(lambda: reader.changes_since(1) == (2, frozenset({"acme"})))
    assert log_reads == []  # read by the listener, not by the poll
    reader.close()


def test_a_forged_notification_cannot_hide_a_change(
    store: PostgresRegistry, pg_dsn: str, pki: PKI
) -> None:
    """Any role that can connect can NOTIFY on certgate's channel. A payload
    naming the next sequence number and another tenant must not make the
    listener skip the real change with that number."""
    for tenant_id in ("acme", "globex"):
        store.put(pki[tenant_id].tenant())
    cache = CachingRegistry(PostgresRegistry(pg_dsn), poll_interval=0.05)
    assert cache.tenant_for_host("api.globex.test") is not None
    assert wait_for(lambda: cache.stats().polls > 2)
    with psycopg.connect(store.settings.conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_notify('certgate_changes', '3 3 acme')")
    time.sleep(0.3)
    store.remove("globex")  # the real sequence number 3
    assert wait_for(lambda: cache.tenant_for_host("api.globex.test") is None)
    cache.close()
    cache.inner.close()


def test_a_cache_over_postgres_drops_only_the_changed_tenant(
    store: PostgresRegistry, pg_dsn: str, pki: PKI
) -> None:
    for tenant_id in ("acme", "globex", "initech"):
        store.put(pki[tenant_id].tenant())
    cache = CachingRegistry(PostgresRegistry(pg_dsn), poll_interval=0.05)
    for host in ("pay.acme.test", "api.globex.test", "initech.test"):
        assert cache.tenant_for_host(host) is not None
    token = cache.change_token
    stats = cache.stats()
    acme = pki["acme"]
    store.put(Tenant("acme", ("pay.acme.test",), (acme.roots[0].cert,), (acme.issuer.cert,)))
    assert wait_for(lambda: cache.change_token is not token)
    assert cache.stats().tenants == stats.tenants - 1
    tenant = cache.tenant_for_host("pay.acme.test")
    assert tenant is not None
    assert tenant.intermediates == (acme.issuer.cert,)
    assert cache.tenant_for_host("x.acme.test") is None
    cache.close()
    cache.inner.close()


# -- processes ------------------------------------------------------------------------


def _lookup_in_child(
    store: PostgresRegistry, host: str, out: multiprocessing.Queue[object]
) -> None:
    try:
        tenant = store.tenant_for_host(host)
        out.put(None if tenant is None else tenant.id)
        out.put(store.changes_since(0))
    except BaseException as exc:  # noqa: BLE001 - sent to the parent
        out.put(repr(exc))
    finally:
        store.close()


def test_a_forked_worker_opens_its_own_connections(store: PostgresRegistry, pki: PKI) -> None:
    """The parent's pool and listener are in use when it forks (gunicorn
    --preload): the child opens its own, and the parent's keep working."""
    store.put(pki["acme"].tenant())
    assert store.tenant_for_host("pay.acme.test") is not None
    store.change_position()  # the listener runs in the parent
    context = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[object] = context.Queue()
    child = context.Process(target=_lookup_in_child, args=(store, "x.acme.test", out))
    child.start()
    assert out.get(timeout=30) == "acme"
    assert out.get(timeout=30) == (1, frozenset({"acme"}))
    child.join(30)
    assert child.exitcode == 0
    tenant = store.tenant_for_host("pay.acme.test")
    assert tenant is not None
    store.put(pki["globex"].tenant())
    assert wait_for(lambda: store.changes_since(1) == (2, frozenset({"globex"})))


def test_workers_need_only_a_read_only_role(
    store: PostgresRegistry, pg_server: PgServer, pg_dsn: str, pki: PKI
) -> None:
    """The README's advice: workers connect as a role that may only read;
    lookups and LISTEN work, a write is refused by the server."""
    dbname = pg_dsn.rsplit("/", 1)[1]
    with pg_server.admin(dbname) as admin:
        admin.execute("CREATE ROLE certgate_reader LOGIN PASSWORD 'reader-pw'")
        admin.execute(f"GRANT CONNECT ON DATABASE {dbname} TO certgate_reader")
        admin.execute("GRANT USAGE ON SCHEMA public TO certgate_reader")
        admin.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO certgate_reader")
    reader_url = f"postgresql://certgate_reader:reader-pw@127.0.0.1:{pg_server.port}/{dbname}"
    cache = open_registry(reader_url, poll_interval=0.05)
    assert cache.tenant_for_host("pay.acme.test") is None
    store.put(pki["acme"].tenant())
    assert wait_for(lambda: cache.tenant_for_host("pay.acme.test") is not None)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        cache.inner.put(pki["globex"].tenant())
    cache.close()
    cache.inner.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "certgate", "tenants", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_tenant_commands_on_a_postgresql_url(
    pg_dsn: str, pg_server: PgServer, pki: PKI, tmp_path: Path
) -> None:
    """migrate, add, list, show, export, import URL -> URL (through SQLite
    and back), remove - each a process that exits on its own; a wrong
    password is reported without the password."""
    acme = pki["acme"]
    root = tmp_path / "acme-root.pem"
    root.write_bytes(acme.roots[0].cert_pem)
    assert _cli("migrate", pg_dsn).returncode == 0
    added = _cli(
        "add", "acme", "--registry", pg_dsn, "--host", "pay.acme.test", "--root", str(root)
    )
    assert added.returncode == 0, added.stderr
    listed = _cli("list", "--registry", pg_dsn, "--json")
    assert [t["id"] for t in json.loads(listed.stdout)["tenants"]] == ["acme"]
    shown = _cli("show", "acme", "--registry", pg_dsn, "--json")
    assert json.loads(shown.stdout)["hosts"] == ["pay.acme.test"]
    lite = sqlite_url(tmp_path / "copy.db")
    assert _cli("import", "--from", pg_dsn, "--to", lite, "--quiet").returncode == 0
    again = pg_server.create_database()
    assert _cli("import", "--from", lite, "--to", again, "--quiet").returncode == 0
    exported = _cli("export", "--from", again)
    assert [json.loads(line)["id"] for line in exported.stdout.splitlines()] == ["acme"]
    assert _cli("remove", "acme", "--registry", pg_dsn).returncode == 0
    assert json.loads(_cli("list", "--registry", pg_dsn, "--json").stdout)["tenants"] == []
    wrong = pg_dsn.replace(pg_server.password, "hunter2")
    failed = _cli("list", "--registry", wrong)
    assert failed.returncode == 2
    assert "password authentication failed" in failed.stderr
    assert "hunter2" not in failed.stderr + failed.stdout
    backup = _cli("backup", pg_dsn, str(tmp_path / "x"))
    assert backup.returncode == 2
    assert "own tools" in backup.stderr


def test_a_store_in_another_schema(pg_server: PgServer, pg_dsn: str, pki: PKI) -> None:
    """The README's options=-csearch_path%3Dcertgate: the tables go to that
    schema, and changes reach a cache through its own channel."""
    dbname = pg_dsn.rsplit("/", 1)[1]
    with pg_server.admin(dbname) as admin:
        admin.execute("CREATE SCHEMA certgate AUTHORIZATION certgate")
    url = f"{pg_dsn}?options=-csearch_path%3Dcertgate"
    store = PostgresRegistry(url, create=True)
    assert store.channel == "certgate_changes:certgate"
    cache = open_registry(url, poll_interval=0.05)
    assert cache.tenant_for_host("pay.acme.test") is None
    store.put(pki["acme"].tenant())
    assert wait_for(lambda: cache.tenant_for_host("pay.acme.test") is not None)
    with psycopg.connect(pg_dsn) as conn:
        where = conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'tenants'"
        ).fetchall()
    assert where == [("certgate",)]
    cache.close()
    cache.inner.close()
    store.close()
