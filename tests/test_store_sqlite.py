"""The SQLite tenant store: schema and migrations, the writer API, the
write-time anchor-sharing rule (checked against the in-memory rule over
random configurations), tenant isolation through the store, and outages.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from certgate import CertGate, ConfigError, Reason, Tenant
from certgate.devpki import CA, IssuedCert
from certgate.errors import TrustStoreUnavailable
from certgate.pki import make_crl
from certgate.policy import policy_from_config
from certgate.registry import HostIndex
from certgate.stores import SCHEMA_VERSION, SchemaError, TenantRecord, open_registry, open_store
from certgate.stores.caching import CachingRegistry
from certgate.stores.schema import MIGRATIONS, POSTGRESQL, SQLITE, ddl, migrate
from certgate.stores.sqlite import SqliteRegistry, SqliteSession, path_of_url
from certgate.tenant import name_key
from tests.conftest import PKI
from tests.store_helpers import cross_certificate, leaf_facts, new_store, reissued, url_of

# -- schema and migrations ----------------------------------------------------


def test_fresh_store_is_at_the_code_version_in_wal_mode(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    session = store.session()
    versions = [row[0] for row in session.execute("SELECT version FROM certgate_schema")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert session.execute("PRAGMA journal_mode")[0][0] == "wal"
    assert store.count() == 0
    assert store.change_position() == 0


def test_a_reader_refuses_a_missing_file_and_never_creates_one(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(ConfigError, match="no such file"):
        SqliteRegistry(path)
    with pytest.raises(ConfigError, match="no such file"):
        open_registry(f"sqlite:///{path}")
    assert not path.exists()


def test_upgrade_from_v1_keeps_the_tenants(tmp_path: Path, pki: PKI) -> None:
    """A v1 database (no change log, no tenants.version) with a tenant in it
    is migrated by a writer; a reader refuses it until then."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(SqliteSession(conn, 0), target=1)
    acme = pki["acme"]
    der = acme.roots[0].der
    record = TenantRecord.of(acme.tenant())
    conn.execute(
        "INSERT INTO tenants (id, mode, shared_anchors, settings, digest, created, updated) "
        "VALUES ('acme', NULL, 0, ?, ?, 'then', 'then')",
        (record.settings_json(), record.digest()),
    )
    for pattern in acme.hosts:
        conn.execute("INSERT INTO hosts VALUES (?, 'acme')", (pattern,))
    cert = acme.roots[0].cert
    sha = hashlib.sha256(der).digest()
    conn.execute(
        "INSERT INTO certificates VALUES (?, ?, ?, ?, ?)",
        (sha, der, cert.subject.public_bytes(), cert.issuer.public_bytes(), name_key(cert)),
    )
    conn.execute("INSERT INTO tenant_certificates VALUES ('acme', 'root', 0, ?, 0)", (sha,))
    conn.close()

    with pytest.raises(SchemaError, match="certgate tenants migrate"):
        SqliteRegistry(path)
    store = SqliteRegistry(path, create=True)  # a writer migrates
    assert [r[0] for r in store.session().execute("SELECT version FROM certgate_schema")] == [1, 2]
    tenant = store.tenant_for_host("pay.acme.test")
    assert tenant is not None
    assert tenant.id == "acme"
    assert tenant.trust_id == acme.tenant().trust_id
    assert store.put(acme.tenant()) == 0  # the v1 row was already this tenant
    store.remove("acme")
    assert store.changes_since(0) == (1, frozenset({"acme"}))


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.session().execute(
        "INSERT INTO certgate_schema VALUES (?, 'from the future', 'later')", (SCHEMA_VERSION + 1,)
    )
    for create in (False, True):
        with pytest.raises(SchemaError, match="newer than this certgate"):
            SqliteRegistry(store.path, create=create)


def test_a_store_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"not a database at all" * 200)
    with pytest.raises(ConfigError, match="cannot open the tenant store: file is not a database"):
        SqliteRegistry(path)


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE tenants (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="not a certgate tenant store"):
        SqliteRegistry(path, create=True)


def test_a_failing_migration_leaves_the_last_complete_version(tmp_path: Path) -> None:
    from certgate.stores.schema import Migration, Sql

    broken = (*MIGRATIONS, Migration(3, "broken", (Sql("CREATE TABLE x (a)"), Sql("NOT SQL"))))
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    session = SqliteSession(conn, 0)
    with pytest.raises(sqlite3.OperationalError):
        migrate(session, target=3, migrations=broken)
    assert conn.execute("SELECT MAX(version) FROM certgate_schema").fetchone()[0] == 2
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'x'").fetchall()


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


# -- the writer API -----------------------------------------------------------


def test_put_get_list_export_round_trip(tmp_path: Path, pki: PKI) -> None:
    store = new_store(tmp_path)
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
    assert record.mode == "report"
    assert record.version == 1
    rebuilt = record.build()
    assert rebuilt.trust_id == tenant.trust_id  # same certificates and CRL
    assert rebuilt.policy is not None
    [summary] = store.list()
    assert summary.id == "acme"
    assert summary.hosts == ("*.acme.test", "pay.acme.test")
    assert summary.mode == "report"
    assert summary.version == 1
    exported = [r.to_json() for r in store.export()]
    again = new_store(tmp_path, "again.db")
    result = again.import_tenants(
        TenantRecord.from_json(json.loads(json.dumps(line)), "line 1") for line in exported
    )
    assert (result.read, result.written) == (1, 1)
    assert again.get("acme") == record
    # the stored CRL and policy are enforced through the store
    gate = CertGate(
        open_registry(url_of(again)), trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"]
    )
    good = gate.decide(leaf_facts("pay.acme.test", acme.client()))
    assert good.reason is None
    assert good.identity is not None
    bad = gate.decide(leaf_facts("x.acme.test", revoked))
    assert bad.reason is Reason.REVOKED
    assert bad.tenant_id == "acme"


def test_a_python_policy_needs_its_toml_form(tmp_path: Path, pki: PKI) -> None:
    from certgate.policy import common_name

    store = new_store(tmp_path)
    acme = pki["acme"]
    tenant = Tenant("acme", acme.hosts, (acme.roots[0].cert,), policy=common_name("x"))
    with pytest.raises(ConfigError, match="Python policy object"):
        store.put(tenant)
    with pytest.raises(ConfigError, match="unknown key"):
        store.put(tenant, policy={"no_such_rule": 1})
    assert store.count() == 0


def test_refusals_write_nothing(tmp_path: Path, pki: PKI) -> None:
    store = new_store(tmp_path)
    store.put(pki["acme"].tenant())
    before = store.session().execute("SELECT COUNT(*) FROM certificates")[0][0]
    globex_root = pki["globex"].roots[0].cert
    with pytest.raises(ConfigError, match="claimed by tenants 'acme' and 'globex'"):
        store.put(Tenant("globex", ("api.globex.test", "pay.acme.test"), (globex_root,)))
    with pytest.raises(ConfigError, match="lists the host"):
        store.put(Tenant("globex", ("a.globex.test", "A.globex.test"), (globex_root,)))
    with pytest.raises(ConfigError, match="crl_urls are not supported"):
        store.put(Tenant("globex", ("api.globex.test",), (globex_root,), crl_urls=("http://x/c",)))
    leaf = pki["globex"].client()
    with pytest.raises(ConfigError, match="not a CA certificate"):
        store.put(TenantRecord("globex", ("api.globex.test",), (leaf.der,)))
    assert store.count() == 1
    assert store.session().execute("SELECT COUNT(*) FROM certificates")[0][0] == before
    assert store.change_position() == 1


def test_import_stops_at_the_first_bad_tenant(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    roots = [CA.root(f"Root {i}") for i in range(5)]
    good = [Tenant(f"t{i}", (f"t{i}.test",), (roots[i].cert,)) for i in range(4)]
    clash = Tenant("clash", ("t0.test",), (roots[4].cert,))
    seen: list[int] = []
    with pytest.raises(ConfigError, match=r"'t0' and 'clash'.*2 tenants stored before"):
        store.import_tenants([*good[:2], good[2], clash, good[3]], batch=2, progress=seen.append)
    assert [t.id for t in store.list()] == ["t0", "t1"]
    assert seen == [2]
    result = store.import_tenants(good, batch=3)
    assert (result.read, result.written, result.unchanged) == (4, 2, 2)


def test_remove_collects_unreferenced_certificates(tmp_path: Path, pki: PKI) -> None:
    store = new_store(tmp_path)
    initech = pki["initech"].tenant()
    store.put(initech)
    assert store.session().execute("SELECT COUNT(*) FROM certificates")[0][0] == 3
    assert store.remove("initech") is True
    assert store.remove("initech") is False
    assert store.session().execute("SELECT COUNT(*) FROM certificates")[0][0] == 0
    assert store.changes_since(0) == (2, frozenset({"initech"}))


# -- the anchor-sharing rule at write time --------------------------------------


def test_write_time_rule_names_both_tenants(tmp_path: Path) -> None:
    vendor = CA.root("Vendor Root CA", organization="Vendor")
    issuing = vendor.intermediate("Vendor Issuing CA for Acme", organization="Vendor")
    store = new_store(tmp_path)
    store.put(Tenant("acme", ("pay.acme.test",), (issuing.cert,)))
    with pytest.raises(ConfigError, match="'globex' would accept every device of 'acme'"):
        store.put(Tenant("globex", ("api.globex.test",), (vendor.cert,)))
    with pytest.raises(ConfigError, match="the same subject and public key"):
        store.put(Tenant("globex", ("api.globex.test",), (reissued(issuing),)))
    store.put(Tenant("acme", ("pay.acme.test",), (issuing.cert,), shared_anchors=True))
    store.put(Tenant("globex", ("api.globex.test",), (vendor.cert,), shared_anchors=True))
    with pytest.raises(ConfigError, match="'globex'"):  # acme may not stop declaring it
        store.put(Tenant("acme", ("pay.acme.test",), (issuing.cert,)))


def _universe() -> list[object]:
    """CA certificates with every relation the rule knows: a vendor root, a
    regional CA and two customer CAs below it, a re-issued vendor root, a
    look-alike (same name, other key), a bridge CA with a cross-certificate
    of a customer CA, and two unrelated roots."""
    vendor = CA.root("Vendor Root CA", organization="Vendor")
    regional = vendor.intermediate("Vendor EU CA", organization="Vendor", path_length=2)
    acme = regional.intermediate("Vendor CA for Acme", organization="Vendor", path_length=0)
    globex = regional.intermediate("Vendor CA for Globex", organization="Vendor", path_length=0)
    bridge = CA.root("Bridge CA", organization="Bridge")
    lookalike = CA.root("Vendor Root CA", organization="Vendor")
    return [
        vendor.cert,
        regional.cert,
        acme.cert,
        globex.cert,
        reissued(vendor),
        lookalike.cert,
        bridge.cert,
        cross_certificate(acme, bridge),
        CA.root("Lone Root A").cert,
        CA.root("Lone Root B").cert,
    ]


def _describe(tenants: dict[str, Tenant]) -> list[str]:
    return [
        f"{t.id} shared={t.shared_anchors} roots={[c.subject.rfc4514_string() for c in t.roots]} "
        f"inters={[c.subject.rfc4514_string() for c in t.intermediates]}"
        for t in tenants.values()
    ]


def test_write_time_rule_matches_the_in_memory_rule(tmp_path: Path) -> None:
    """Random puts and removes of tenants over one set of related CAs: the
    store accepts a write exactly when the in-memory rule accepts the
    resulting set of tenants."""
    certs = _universe()
    rng = random.Random(20260510)
    outcomes = {True: 0, False: 0}
    for run in range(12):
        store = new_store(tmp_path, f"rule-{run}.db")
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
                accepted = False
                error = str(exc)
            else:
                accepted = True
            assert accepted == expected, (run, step, error, _describe(candidate))
            outcomes[accepted] += 1
            if accepted:
                model = candidate
        assert {t.id for t in store.list()} == set(model)
    assert outcomes[True] > 30, outcomes
    assert outcomes[False] > 30, outcomes


# -- isolation through the store --------------------------------------------------


ISOLATION_TENANTS = {
    # a wildcard tenant and an exact host under the same suffix owned by another
    "shop": ("*.shop.test", "shop.test"),
    "vip": ("vip.shop.test",),
    "acme": ("pay.acme.test", "*.acme.test"),
    "hooli": ("hooli.test", "192.0.2.10"),
}
REQUEST_HOSTS = {
    "shop": ("a.shop.test", "shop.test", "VIP2.shop.test"),
    "vip": ("vip.shop.test", "VIP.Shop.Test:443"),
    "acme": ("pay.acme.test", "x.acme.test"),
    "hooli": ("hooli.test", "192.0.2.10"),
}
UNKNOWN = ("a.vip.shop.test", "acme.test", "a.b.acme.test", "evil.test", "192.0.2.11")


@pytest.fixture(scope="module")
def isolation(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertGate, dict[str, IssuedCert]]:
    store = new_store(tmp_path_factory.mktemp("isolation"))
    devices = {}
    for tenant_id, hosts in ISOLATION_TENANTS.items():
        root = CA.root(f"{tenant_id} root")
        issuing = root.intermediate(f"{tenant_id} issuing")
        store.put(Tenant(tenant_id, hosts, (root.cert,), (issuing.cert,)))
        devices[tenant_id] = issuing.issue(f"device-of-{tenant_id}")
    gate = CertGate(
        open_registry(url_of(store)), trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"]
    )
    return gate, devices


@pytest.mark.parametrize(
    ("client", "owner", "host"),
    [
        (client, owner, host)
        for client in ISOLATION_TENANTS
        for owner, hosts in REQUEST_HOSTS.items()
        for host in hosts
    ],
)
def test_isolation_matrix(
    isolation: tuple[CertGate, dict[str, IssuedCert]], client: str, owner: str, host: str
) -> None:
    gate, devices = isolation
    for _ in range(3):  # cold, then from the caches and the decision memo
        decision = gate.decide(leaf_facts(host, devices[client]))
        assert decision.tenant_id == owner
        if client == owner:
            assert decision.reason is None, decision.detail
            assert decision.identity is not None
            assert decision.identity.tenant_id == owner
        else:
            assert decision.reason is Reason.UNTRUSTED_CHAIN
            assert decision.identity is None


@pytest.mark.parametrize("host", UNKNOWN)
def test_isolation_unknown_hosts(
    isolation: tuple[CertGate, dict[str, IssuedCert]], host: str
) -> None:
    gate, devices = isolation
    for device in devices.values():
        for _ in range(2):
            decision = gate.decide(leaf_facts(host, device))
            assert decision.reason is Reason.UNKNOWN_TENANT


# -- concurrency ---------------------------------------------------------------


def test_concurrent_writers_and_readers_in_threads(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    roots = [CA.root(f"Root {i}") for i in range(40)]
    errors: list[BaseException] = []
    stop = threading.Event()
    seen_versions: list[int] = []

    def writer(offset: int) -> None:
        writer_store = SqliteRegistry(store.path, busy_timeout=10)
        try:
            for i in range(offset, 40, 2):
                hosts = (f"t{i}.test", f"*.t{i}.test")
                writer_store.put(Tenant(f"t{i}", hosts, (roots[i].cert,)))
            for i in range(offset, 40, 4):
                writer_store.remove(f"t{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader() -> None:
        reader_store = SqliteRegistry(store.path)
        try:
            while not stop.is_set():
                for i in range(0, 40, 7):
                    tenant = reader_store.tenant_for_host(f"t{i}.test")
                    if tenant is not None:
                        assert tenant.id == f"t{i}"
                        assert tenant.roots[0] == roots[i].cert
                seen_versions.append(reader_store.change_position())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
    readers = [threading.Thread(target=reader) for _ in range(3)]
    for thread in readers + threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert not errors, errors
    remaining = {t.id for t in store.list()}
    assert remaining == {f"t{i}" for i in range(40) if i % 4 not in (0, 1)}
    assert store.change_position() == 40 + 20
    assert seen_versions == sorted(seen_versions) or len(seen_versions) > 0


# -- outages ---------------------------------------------------------------------


def _wait_for(predicate: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@dataclass
class Outage:
    store: SqliteRegistry
    registry: CachingRegistry
    gate: CertGate
    device: IssuedCert

    def reason(self) -> Reason | None:
        return self.gate.decide(leaf_facts("pay.acme.test", self.device)).reason

    def refused(self) -> bool:
        return self.reason() is Reason.TRUST_STORE_UNAVAILABLE

    def allowed(self) -> bool:
        return self.reason() is None


@pytest.fixture
def outage(tmp_path: Path, pki: PKI) -> Outage:
    store = new_store(tmp_path)
    acme = pki["acme"]
    store.put(Tenant("acme", acme.hosts, (acme.roots[0].cert,), (acme.issuer.cert,)))
    registry = open_registry(url_of(store), poll_interval=0.05, max_stale=0.2)
    gate = CertGate(registry, trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])
    state = Outage(store, registry, gate, acme.client())
    assert state.allowed()
    return state


def test_outage_file_removed_then_restored(outage: Outage) -> None:
    backup = outage.store.path.with_name("backup.db")
    outage.store.backup(backup)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{outage.store.path}{suffix}").unlink(missing_ok=True)
    assert _wait_for(outage.refused)
    os.replace(backup, outage.store.path)
    assert _wait_for(outage.allowed)


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
    assert _wait_for(lambda: gate.decide(leaf_facts("pay.acme.test", device)).reason is None)


def test_outage_corrupted_then_repaired(outage: Outage) -> None:
    store = outage.store
    store.session().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    good = store.path.read_bytes()
    store.close()
    outage.registry.inner.close()
    store.path.write_bytes(b"this is not a database" * 100)
    assert _wait_for(outage.refused)
    store.path.write_bytes(good)
    assert _wait_for(outage.allowed)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_outage_permissions(outage: Outage) -> None:
    outage.registry.inner.close()
    outage.store.path.chmod(0)
    try:
        assert _wait_for(outage.refused)
    finally:
        outage.store.path.chmod(0o600)
    assert _wait_for(outage.allowed)


def test_a_store_error_is_a_503_not_an_exception(tmp_path: Path, pki: PKI) -> None:
    store = new_store(tmp_path)
    store.put(pki["acme"].tenant())
    reader = SqliteRegistry(store.path)
    reader.session().execute("SELECT 1")
    store.session().execute("DROP TABLE hosts")
    with pytest.raises(TrustStoreUnavailable, match="no such table"):
        reader.tenant_for_host("pay.acme.test")
