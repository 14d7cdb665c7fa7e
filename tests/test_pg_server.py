"""The real-PostgreSQL harness itself (tests/pg_server.py): the role's
password is required over TCP, databases are separate, and a stopped server
refuses connections until it is started again; without a server the
PostgreSQL tests skip on a developer machine and fail under CI=true."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.pg_server import ROOT, PgServer


def test_dsn_connects_with_password_over_tcp(pg_server: PgServer, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT current_user, inet_server_addr()::text").fetchone()
    assert row == ("certgate", "127.0.0.1/32")
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


def _run_without_postgres(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    """A one-test suite over ``store_url`` (both backends) on a machine
    where no PostgreSQL is found."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(
        "import tests.pg_server\n"
        "tests.pg_server.find_bindir = lambda: None  # no server on this machine\n"
        'pytest_plugins = ["tests.pg_server", "tests.store_backends"]\n'
    )
    (tmp_path / "test_one.py").write_text("def test_one(store_url):\n    assert store_url\n")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CI": ci},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_postgresql_params_fail_in_ci_without_a_server(tmp_path: Path) -> None:
    """The shared store suite's ``postgresql`` params fail, never skip,
    under CI=true when there is no server; a developer machine skips them
    loudly."""
    ci = _run_without_postgres(tmp_path, "true")
    assert ci.returncode == 1, ci.stdout
    assert re.search(r"\b1 passed\b.*\b1 error\b", ci.stdout), ci.stdout
    assert "CI=true: a missing PostgreSQL is a failure, not a skip" in ci.stdout
    dev = _run_without_postgres(tmp_path, "")
    assert dev.returncode == 0, dev.stdout
    assert re.search(r"\b1 passed, 1 skipped\b", dev.stdout), dev.stdout
