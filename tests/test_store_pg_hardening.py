"""PostgreSQL store hardening against a real server (tests/pg_server.py):
statement and lock timeouts (a stuck statement is a 503, not a held lookup
thread; writers are not cut short), the pinned ``search_path`` (tables
another role puts in a schema earlier in the path shadow nothing), and the
URL settings that control both."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from cryptography.hazmat.primitives import hashes

from certgate import CertGate, ConfigError, Reason, Tenant
from certgate.devpki import CA
from certgate.errors import TrustStoreUnavailable
from certgate.stores.postgres import AsyncPostgresRegistry, PostgresRegistry, parse_url
from tests.pg_server import PgServer
from tests.store_helpers import leaf_facts

CLOUDFLARE = {"trusted_proxies": ["10.0.0.0/8"], "header_sources": ["cloudflare"]}


@pytest.fixture(scope="module")
def roots() -> list[CA]:
    return [CA.root(f"Hardening Root {i}") for i in range(3)]


def _dbname(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1].split("?", 1)[0]


def _with(dsn: str, query: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}{query}"


# -- timeouts ------------------------------------------------------------------------


def test_url_timeouts_are_parsed_and_checked() -> None:
    base = "postgresql://u@db.example/certgate"
    settings = parse_url(_with(base, "statement_timeout=1.5&lock_timeout=0.25&schema=tenants"))
    assert (settings.statement_timeout, settings.lock_timeout) == (1.5, 0.25)
    assert settings.schema == "tenants"
    assert parse_url(base).statement_timeout == 5.0  # the gate's default registry_timeout
    with pytest.raises(ConfigError, match="statement_timeout must be a number of seconds"):
        parse_url(_with(base, "statement_timeout=forever"))
    with pytest.raises(ConfigError, match="lock_timeout"):
        parse_url(_with(base, "lock_timeout=0"))
    with pytest.raises(ConfigError, match="schema 'x;drop'"):
        parse_url(_with(base, "schema=x;drop"))
    pinned = settings.pinned("tenants")
    assert "search_path" in pinned.conninfo
    assert "statement_timeout=1500" in pinned.conninfo


def test_a_stuck_statement_is_cancelled(pg_dsn: str) -> None:
    """pg_sleep past statement_timeout: the server cancels it."""
    store = PostgresRegistry(_with(pg_dsn, "statement_timeout=0.3"), create=True)
    try:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            store.session().execute("SELECT pg_sleep(60)")
        assert time.monotonic() - started < 50  # cancelled, not slept out
        # a write transaction is not a lookup: no timeout in it
        session = store.session()
        with session.transaction():
            session.execute("SELECT pg_sleep(0.6)")
    finally:
        store.close()


def test_a_locked_table_gives_503_not_a_held_thread(
    pg_server: PgServer, pg_dsn: str, roots: list[CA]
) -> None:
    """A restore or a migration holding the hosts table: the lookup gives
    up after lock_timeout with a 503 (registry_timeout is far longer), and
    answers again once the lock is gone."""
    writer = PostgresRegistry(pg_dsn, create=True)
    writer.put(Tenant("acme", ("acme.test",), (roots[0].cert,)))
    writer.close()
    registry = PostgresRegistry(_with(pg_dsn, "lock_timeout=0.2&statement_timeout=30"))
    gate = CertGate(registry, registry_timeout=60.0, **CLOUDFLARE)  # type: ignore[arg-type]
    device = roots[0].issue("device")
    try:
        assert gate.decide(leaf_facts("acme.test", device)).reason is None
        with pg_server.admin(_dbname(pg_dsn)) as admin, admin.transaction():
            admin.execute("LOCK TABLE hosts IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(TrustStoreUnavailable, match="lock timeout"):
                registry.tenant_for_host("acme.test")
            decision = gate.decide(leaf_facts("acme.test", device))
            assert decision.reason is Reason.TRUST_STORE_UNAVAILABLE
            assert gate.refusal(Reason.TRUST_STORE_UNAVAILABLE).status == 503
            assert time.monotonic() - started < 25  # neither 60 s nor a hang
        assert gate.decide(leaf_facts("acme.test", device)).reason is None
    finally:
        registry.close()


# -- search_path -------------------------------------------------------------------------


@pytest.fixture
def intruder(pg_server: PgServer, pg_dsn: str) -> Iterator[str]:
    """A role owning schema ``shadow``, which comes before ``public`` in the
    certgate role's search path in this database; its name."""
    name = f"intruder_{uuid.uuid4().hex[:10]}"
    db = _dbname(pg_dsn)
    with pg_server.admin(db) as admin:
        admin.execute(f"CREATE ROLE {name} NOLOGIN")
        admin.execute(f"CREATE SCHEMA shadow AUTHORIZATION {name}")
        admin.execute("GRANT USAGE ON SCHEMA shadow TO certgate")
        admin.execute(f"ALTER ROLE certgate IN DATABASE {db} SET search_path = shadow, public")
    yield name
    with pg_server.admin(db) as admin:
        admin.execute(f"ALTER ROLE certgate IN DATABASE {db} RESET search_path")
        admin.execute(f"DROP OWNED BY {name}")
        admin.execute(f"DROP ROLE {name}")


def _shadow_tables(server: PgServer, dsn: str, role: str, evil: CA) -> None:
    """The intruder copies certgate's tables into ``shadow`` and points
    ``acme.test`` at a tenant of its own whose root is ``evil``."""
    with server.admin(_dbname(dsn)) as admin:
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        admin.execute(f"SET ROLE {role}")
        for table in ("certgate_schema", "tenants", "hosts", "certificates"):
            admin.execute(f"CREATE TABLE shadow.{table} AS TABLE public.{table}")
        for table in ("tenant_certificates", "crls", "certgate_counter", "changes"):
            admin.execute(f"CREATE TABLE shadow.{table} AS TABLE public.{table}")
        sha = evil.cert.fingerprint(hashes.SHA256())
        admin.execute(
            "INSERT INTO shadow.certificates SELECT %s, %s, subject, issuer, name_key "
            "FROM shadow.certificates LIMIT 1",
            (sha, evil.der),
        )
        admin.execute("UPDATE shadow.tenant_certificates SET sha256 = %s", (sha,))
        admin.execute("GRANT SELECT ON ALL TABLES IN SCHEMA shadow TO certgate")


def test_tables_shadowing_the_store_are_refused_or_ignored(
    pg_server: PgServer, pg_dsn: str, intruder: str, roots: list[CA]
) -> None:
    public = _with(pg_dsn, "schema=public")
    writer = PostgresRegistry(public, create=True)
    writer.put(Tenant("acme", ("acme.test",), (roots[0].cert,)))
    writer.close()
    # opened before the intruder acts (no schema= in the URL): the tables are
    # found in public, and every connection stays there
    early = PostgresRegistry(pg_dsn)
    assert early.settings.schema == "public"
    early_async = AsyncPostgresRegistry(pg_dsn)
    _shadow_tables(pg_server, pg_dsn, intruder, roots[2])
    with psycopg.connect(pg_dsn) as raw:  # what an unpinned connection would read
        shadowed = raw.execute(
            "SELECT c.der FROM hosts h JOIN tenant_certificates tc ON tc.tenant_id = h.tenant_id "
            "JOIN certificates c ON c.sha256 = tc.sha256 WHERE h.pattern = 'acme.test'"
        ).fetchall()
    assert shadowed  # the attack is real
    assert bytes(shadowed[0][0]) == roots[2].der
    try:
        early.close()  # a new pool: new connections, pinned as well
        found = early.tenant_for_host("acme.test")
        assert found is not None
        assert found.roots == (roots[0].cert,)

        async def lookup() -> Tenant | None:
            try:
                return await early_async.tenant_for_host("acme.test")
            finally:
                await early_async.aclose()

        tenant = asyncio.run(lookup())
        assert tenant is not None
        assert tenant.roots == (roots[0].cert,)
    finally:
        early.close()
    # opened now, without schema=: which tables a statement used would depend
    # on the path - refused, naming the fix
    shadowed_by = r"schema\(s\) public .* as well as in 'shadow'.*schema=NAME"
    with pytest.raises(ConfigError, match=shadowed_by):
        PostgresRegistry(pg_dsn)
    with pytest.raises(ConfigError, match="schema=NAME"):
        AsyncPostgresRegistry(pg_dsn)
    # with the schema named: the real tables
    named = PostgresRegistry(public)
    try:
        found = named.tenant_for_host("acme.test")
        assert found is not None
        assert found.roots == (roots[0].cert,)
        named.put(Tenant("globex", ("globex.test",), (roots[1].cert,)))
    finally:
        named.close()
    with pg_server.admin(_dbname(pg_dsn)) as admin:
        assert admin.execute("SELECT count(*) FROM public.tenants").fetchone() == (2,)
        assert admin.execute("SELECT count(*) FROM shadow.tenants").fetchone() == (1,)
