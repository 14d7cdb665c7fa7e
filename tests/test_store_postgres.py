"""What only the PostgreSQL tenant store has, against a real server
(tests/pg_server.py): URLs and connection errors, batched imports, the
change feed (LISTEN/NOTIFY, heartbeat, missed and forged notifications),
fork safety, read-only roles, another schema, and its CLI errors.

The behaviour it shares with SQLite (schema and migrations, the writer API
and its rules, concurrency, isolation, an outage and its recovery,
propagation across processes, the tenant commands) is tested against both
in tests/test_store_backends.py and tests/test_store_cli.py; the async
registry, pg_dump / pg_restore are in tests/test_store_postgres_gate.py.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from certgate import ConfigError, Tenant
from certgate.cli import main
from certgate.devpki import CA
from certgate.registry import HostIndex
from certgate.stores import SchemaError, open_registry, open_store
from certgate.stores.caching import CachingRegistry
from certgate.stores.postgres import (
    MAX_PAYLOAD,
    ChangeLog,
    PostgresRegistry,
    notify_payload,
    parse_url,
)
from tests.conftest import PKI
from tests.pg_server import PgServer
from tests.store_backends import count
from tests.store_helpers import describe, related_cas, wait_for


@pytest.fixture
def store(pg_dsn: str) -> Iterator[PostgresRegistry]:
    created = PostgresRegistry(pg_dsn, create=True)
    yield created
    created.close()


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


def test_certificates_are_stored_as_bytea(store: PostgresRegistry) -> None:
    session = store.session()
    types = dict(
        session.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'certificates'"
        )
    )
    assert types["der"] == "bytea"


def test_a_reader_refuses_an_empty_database_and_creates_nothing(pg_dsn: str) -> None:
    with pytest.raises(SchemaError, match="certgate tenants migrate"):
        PostgresRegistry(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)


# -- batched imports -------------------------------------------------------------------


def test_import_batches_match_the_in_memory_rule(store: PostgresRegistry) -> None:
    """PostgreSQL imports a batch as one (batch.py). Random import batches
    (tenants replaced, hosts moving between tenants of one batch, related
    CAs): a batch is stored exactly when the in-memory rules accept the set
    of tenants after each of its tenants in order (what put() of each
    checks), and then the store holds exactly the final set."""
    certs = related_cas()
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
                    roots,
                    inters,
                    shared_anchors=rng.random() < 0.4,
                )
            except ConfigError:  # CA vetting: an intermediate not below the roots
                continue
        if not batch:
            continue
        candidate = dict(model)
        expected = True
        for tenant_id, tenant in batch.items():  # put() of each, in order
            candidate[tenant_id] = tenant
            try:
                HostIndex.build(candidate.values())
            except ConfigError:
                expected = False
                break
        error = ""
        try:
            store.import_tenants(batch.values(), batch=len(batch))
        except ConfigError as exc:
            accepted, error = False, str(exc)
        else:
            accepted = True
        assert accepted == expected, (step, error, describe(candidate))
        outcomes[accepted] += 1
        if accepted:
            model = candidate
        stored = {t.id: t for t in (store.tenant_by_id(i) for i in model) if t is not None}
        assert {i: t.trust_id for i, t in stored.items()} == {
            i: t.trust_id for i, t in model.items()
        }
        assert store.count() == len(model)
    assert outcomes[True] > 10, outcomes
    assert outcomes[False] > 20, outcomes


def test_a_batch_moves_hosts_and_skips_unchanged_tenants(store: PostgresRegistry) -> None:
    """A host may move between tenants of one batch when the tenant giving
    it up comes first (as put() of each in order; listed the other way round
    the batch is refused, with put()'s message, as SQLite refuses it)."""
    roots = [CA.root(f"Batch Root {i}") for i in range(3)]
    a = Tenant("a", ("one.test", "two.test"), (roots[0].cert,))
    b = Tenant("b", ("three.test",), (roots[1].cert,))
    assert store.import_tenants([a, b]).written == 2
    # b takes two.test, which a gives up in the same batch
    b2 = Tenant("b", ("three.test", "two.test"), (roots[1].cert,))
    a2 = Tenant("a", ("one.test",), (roots[2].cert,))
    with pytest.raises(ConfigError, match=r"host 'two\.test' is claimed by tenants 'a' and 'b'"):
        store.import_tenants([b2, a2])  # b listed first: put(b2) would clash
    result = store.import_tenants([a2, b2, b2.__class__("c", ("four.test",), (roots[0].cert,))])
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
    store: PostgresRegistry, pg_dsn: str, pki: PKI
) -> None:
    """A change logged without a NOTIFY (another tool, a lost message): the
    listener's next heartbeat reads it from the change log. (The counter
    and the log row in one transaction, as the store writes them: a
    heartbeat between two autocommit statements saw a counter without its
    row. What the listener holds is checked, not whether a poll read the
    log: under load a poll may find the listener's answer too old to use.)"""
    store.put(pki["acme"].tenant())
    reader = PostgresRegistry(pg_dsn, heartbeat=0.1)
    reader.change_position()
    feed = reader._process().feed
    assert wait_for(lambda: feed.answer(1, time.monotonic(), 60.0) == (1, frozenset()))
    with psycopg.connect(store.settings.conninfo) as conn, conn.transaction():
        conn.execute("UPDATE certgate_counter SET seq = 2 WHERE id = 1")
        conn.execute("INSERT INTO changes VALUES (2, 'acme', 'put', 'now')")
    # read by the listener (only it writes the feed), not by a poll
    assert wait_for(lambda: feed.answer(1, time.monotonic(), 60.0) == (2, frozenset({"acme"})))
    assert reader.changes_since(1) == (2, frozenset({"acme"}))
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


@pytest.mark.usefixtures("cli_stores")
def test_tenant_commands_on_a_postgresql_url_name_what_failed(
    pg_dsn: str, pg_server: PgServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What only a PostgreSQL URL gives (the commands themselves run on both
    backends in tests/test_store_cli.py): a wrong password is reported
    without the password, and ``backup`` points to PostgreSQL's own tools."""
    assert main(["tenants", "migrate", pg_dsn]) == 0
    capsys.readouterr()
    wrong = pg_dsn.replace(pg_server.password, "hunter2")
    assert main(["tenants", "list", "--registry", wrong]) == 2
    out, err = capsys.readouterr()
    assert "password authentication failed" in err
    assert "hunter2" not in err + out
    assert main(["tenants", "backup", pg_dsn, str(tmp_path / "x")]) == 2
    assert "own tools" in capsys.readouterr().err


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
