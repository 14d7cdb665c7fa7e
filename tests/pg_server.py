"""A real PostgreSQL server for the tests, from Debian's ``postgresql`` package.

:func:`pg_cluster` makes a throwaway cluster in a temporary directory -
initdb, a free loopback TCP port, a unix socket in the directory - and
removes it afterwards. PostgreSQL refuses to run as root, so as root the
cluster belongs to a system user of its own (``certgate-pg``, created with
useradd when missing) and every server command runs through ``runuser``; as
another user it simply runs as that user.

Authentication: the harness connects as the superuser ``postgres`` over the
unix socket (``trust``: only the directory's owner reaches it); the code
under test gets a DSN for the role ``certgate`` over TCP on 127.0.0.1 with a
random password (``scram-sha-256``), as a real deployment would.

Start-up: initdb costs seconds on a loaded machine, so the first cluster's
fresh data directory is kept in ``.venv/pg-template-<version>`` and later
clusters start from a copy of it (well under a second to start).

Fixtures (registered by ``tests/conftest.py``):

* ``pg_server`` - one cluster for the whole session; do not stop it;
* ``pg_dsn`` - a fresh database in it for one test (dropped afterwards);
* ``pg_private`` - a cluster of the test's own, for tests that stop and
  restart the server (an outage).

A missing PostgreSQL (or psycopg) skips these tests with a loud reason on a
developer machine and fails them in CI (``CI=true``: the test command
installs the package, so a missing server there is a broken set-up).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from examples.devenv import free_port

if TYPE_CHECKING:
    import psycopg

ROOT = Path(__file__).resolve().parents[1]
OS_USER = "certgate-pg"
"""The system user owning the clusters when the tests run as root."""
ROLE = "certgate"
"""The database role the code under test connects as (password, TCP)."""
START_TIMEOUT = 60
"""Seconds the server may take to accept connections (the machine is shared)."""
SETTINGS = {
    # Throwaway data: durability off for speed.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "64MB",
    "log_min_messages": "warning",
    "log_connections": "off",
    # A connection attempt cut off half-way (an event loop closed under a
    # pool) leaves a server process waiting for the client to authenticate;
    # DROP DATABASE anywhere in the cluster waits for it (60 s by default).
    "authentication_timeout": "'5s'",
}

__all__ = [
    "PgServer",
    "chown_tree",
    "find_bindir",
    "os_user",
    "pg_cluster",
    "pg_dsn",
    "pg_private",
    "pg_server",
    "require_postgres",
]


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding a server."""
    found = glob.glob("/usr/lib/postgresql/*/bin/postgres")

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(path).parts[-3]))

    return Path(max(found, key=version)).parent if found else None


def _missing(message: str) -> None:
    message = f"REAL-POSTGRESQL TESTS NOT RUN: {message}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " CI=true: a missing PostgreSQL is a failure, not a skip.")
    print(f"\n*** {message} ***", file=sys.stderr)
    pytest.skip(message)


def require_postgres() -> Path:
    """The server's bin directory; skip loudly (fail when ``CI=true``) when
    PostgreSQL or psycopg is missing, or root cannot switch users."""
    bindir = find_bindir()
    if bindir is None:
        _missing(
            "no /usr/lib/postgresql/*/bin/postgres. Run `python3 dev.py setup` as root "
            "(it installs Debian's postgresql package)."
        )
        raise AssertionError("unreachable")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("psycopg is not installed. Run `python3 dev.py setup` (the dev extra has it).")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        _missing("running as root without runuser (util-linux) to start PostgreSQL as a user.")
    return bindir


def os_user() -> str | None:
    """The user to run the server as: ``None`` (ourselves) unless root, else
    :data:`OS_USER`, created when missing."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        result = subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                OS_USER,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:  # another suite may have created it meanwhile (useradd exits 9)
            pwd.getpwnam(OS_USER)
        except KeyError:
            raise RuntimeError(f"useradd {OS_USER} failed: {result.stderr.strip()}") from None
    return OS_USER


def chown_tree(path: Path, user: str) -> None:
    """``path`` and everything below it to ``user`` (and its group)."""
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(base, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


class PgServer:
    """One throwaway cluster under ``root`` (a temporary directory).

    ``dsn(dbname)`` is what the code under test uses; :meth:`admin` is the
    harness's superuser connection. :meth:`stop` and :meth:`start` simulate
    an outage and its end (same port, same data).
    """

    def __init__(self, bindir: Path, root: Path, owner: str | None) -> None:
        self.bindir = bindir
        self.root = root
        self.owner = owner
        self.data = root / "data"
        self.sockets = root / "run"
        self.log = root / "server.log"
        self.port = 0
        self.password = secrets.token_urlsafe(18)
        self.startup_seconds = 0.0
        """How long initdb (or the template copy), start and role took."""

    # -- commands ---------------------------------------------------------

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / cmd[0]), *cmd[1:]]
        if self.owner is not None:
            argv = ["runuser", "-u", self.owner, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=self.root)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}\n"
                f"{self._log_tail()}"
            )
        return result

    def _log_tail(self) -> str:
        try:
            return "server log:\n" + "\n".join(self.log.read_text().splitlines()[-20:])
        except OSError:
            return "(no server log)"

    def initdb(self) -> None:
        """A fresh data directory: from the template copy when there is one
        (nothing to do for a kept cluster's existing one)."""
        if (self.data / "PG_VERSION").is_file():
            return
        template = _template_dir(self.bindir)
        if template is not None and (template / "PG_VERSION").is_file():
            shutil.copytree(template, self.data, symlinks=True)
            if self.owner is not None:
                chown_tree(self.data, self.owner)
        else:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            )
            if template is not None:
                _save_template(self.data, template)
        self.sockets.mkdir(mode=0o700, exist_ok=True)
        if self.owner is not None:
            chown_tree(self.sockets, self.owner)

    def _configure(self) -> None:
        settings = {
            **SETTINGS,
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockets}'",
        }
        conf = "".join(f"{key} = {value}\n" for key, value in settings.items())
        (self.data / "postgresql.auto.conf").write_text(conf)

    def start(self) -> None:
        """Start the server (on a new free port the first time); returns
        once it accepts connections."""
        first = self.port == 0
        for _attempt in range(3):
            if first:
                self.port = free_port()
            self._configure()
            result = self._run(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                str(START_TIMEOUT),
                "start",
                check=False,
            )
            if result.returncode == 0:
                return
            if not first or "could not bind" not in self._log_tail():
                break  # only a port taken meanwhile is worth another try
        raise RuntimeError(
            f"PostgreSQL did not start on port {self.port}: {result.stderr.strip()}\n"
            f"{self._log_tail()}"
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: ``fast`` or ``immediate``)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    # -- connections --------------------------------------------------------

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection over the unix socket (autocommit)."""
        import psycopg

        return psycopg.connect(
            host=str(self.sockets),
            port=self.port,
            user="postgres",
            dbname=dbname,
            autocommit=True,
            connect_timeout=10,
        )

    def dsn(self, dbname: str) -> str:
        """The URL the code under test connects with (role ``certgate``,
        password, TCP on 127.0.0.1)."""
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def create_role(self) -> None:
        """The role ``certgate`` with this run's password (created, or given
        the new password in a kept cluster)."""
        with self.admin() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                f"{verb} ROLE {ROLE} LOGIN PASSWORD '{self.password}'"  # token_urlsafe: no quote
            )

    def create_database(self, name: str | None = None) -> str:
        """A new database owned by the role; its DSN."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits, _")
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _template_dir(bindir: Path) -> Path | None:
    """Where a fresh data directory is kept between sessions (in .venv,
    which only its owner writes), ``None`` without a .venv."""
    venv = ROOT / ".venv"
    if not venv.is_dir():
        return None
    return venv / f"pg-template-{bindir.parent.name}"


def _save_template(data: Path, template: Path) -> None:
    """Keep a copy of a fresh (never started) data directory; another suite
    saving at the same time is harmless (the rename is atomic)."""
    staging = template.with_name(f"{template.name}.{os.getpid()}.tmp")
    try:
        shutil.copytree(data, staging, symlinks=True)
        os.rename(staging, template)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def pg_cluster(bindir: Path | None = None, *, keep: Path | None = None) -> Iterator[PgServer]:
    """A started throwaway cluster with the role ``certgate``; stopped and
    deleted on exit. ``keep``: the cluster's directory, reused when it holds
    one and left in place on exit (benchmarks keep their databases)."""
    bindir = bindir or require_postgres()
    owner = os_user()
    if keep is None:
        root = Path(tempfile.mkdtemp(prefix="certgate-pg-"))
    else:
        root = keep
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if owner is not None:
        chown_tree(root, owner)
    server = PgServer(bindir, root, owner)
    try:
        started = time.monotonic()
        server.initdb()
        server.start()
        server.create_role()
        server.startup_seconds = time.monotonic() - started
        yield server
    finally:
        with contextlib.suppress(RuntimeError, OSError):
            if server.port and server.running:
                server.stop("immediate" if keep is None else "fast")
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL for the session (do not stop it: see ``pg_private``)."""
    with pg_cluster() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database for one test; its DSN."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    dsn = pg_server.create_database(name)
    yield dsn
    pg_server.drop_database(name)


@pytest.fixture
def pg_private() -> Iterator[PgServer]:
    """A cluster of the test's own, which it may stop and start."""
    with pg_cluster() as server:
        yield server
