"""The real-PostgreSQL harness itself (tests/pg_server.py): the role's
password is required over TCP, databases are separate, and a stopped server
refuses connections until it is started again; without a server the
PostgreSQL tests skip on a developer machine and fail under CI=true."""

from __future__ import annotations

import psycopg
import pytest

from tests import pg_server as harness
from tests.pg_server import PgServer


def test_dsn_connects_with_password_over_tcp(pg_server: PgServer, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT current_user, inet_server_addr()::text").fetchone()
        timeout = conn.execute("SHOW authentication_timeout").fetchone()
    assert row == ("certgate", "127.0.0.1/32")
    assert timeout == ("5s",)  # a drop never waits a minute for a half-open connection
    assert pg_server.startup_seconds > 0


def test_wrong_password_is_refused(pg_server: PgServer, pg_dsn: str) -> None:
    wrong = pg_dsn.replace(pg_server.password, "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)


def test_databases_are_separate(pg_server: PgServer, pg_dsn: str) -> None:
    other = pg_server.create_database()
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE mark (x int)")
    with psycopg.connect(other) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'mark'").fetchone()
    assert tables == (0,)
    pg_server.drop_database(other.rsplit("/", 1)[1])


def test_private_server_stops_and_starts(pg_private: PgServer) -> None:
    dsn = pg_private.create_database("outage")
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    pg_private.stop()
    assert not pg_private.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    pg_private.start()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (7,)


@pytest.mark.parametrize(("ci", "outcome"), [("true", "Failed"), ("", "Skipped")])
def test_without_a_server_the_tests_fail_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str
) -> None:
    """No PostgreSQL on the machine: every real-PostgreSQL test (the shared
    store suite's ``postgresql`` params included: they go through
    ``pg_server``) fails under CI=true, and skips loudly elsewhere."""
    monkeypatch.setattr(harness, "find_bindir", lambda: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as raised:
        harness.require_postgres()
    assert type(raised.value).__name__ == outcome
    assert "REAL-POSTGRESQL TESTS NOT RUN" in str(raised.value)
