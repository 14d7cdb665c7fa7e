"""A tenant store named in the TOML file (``[certgate].registry``).

* a real uvicorn server (certgate's adapter, mutual TLS, SNI = Host) whose
  TOML names a SQLite store: a tenant added by ``certgate tenants add
  --registry`` while it runs is allowed within 2 s, and refused (403) once
  removed - same process, no reload;
* reloads keep the same registry object for the same URL and cache options,
  open a new one (and close the old) when they change; the file watch never
  watches the database;
* refusals: ``[[tenants]]`` beside ``registry``, a missing store, an old
  schema, bad URLs and cache options - never a password in a message;
* ``certgate check``, ``bundle``, ``expiry`` and ``config check`` on a store
  (``--registry URL`` and a ``--config`` naming one);
* the gate's expiry check (at load, periodic) on a store tenant whose CA
  expires soon; PostgreSQL variants.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from certgate import CertGate, ConfigError, Reason, Tenant, load_config
from certgate.cli import main
from certgate.config import load_gate_config
from certgate.devpki import CA
from certgate.events import TrustExpiryEvent
from certgate.reload import expiry_report
from certgate.stores import open_store
from certgate.stores.caching import CachingRegistry
from certgate.stores.postgres import PostgresRegistry
from certgate.stores.scan import store_expiry
from certgate.stores.sqlite import SqliteRegistry, sqlite_url
from certgate.testing import RecordingObserver
from tests.pg_server import PgServer
from tests.store_helpers import leaf_facts
from tests.test_reload_e2e import eventually, get, make_site, uvicorn

ACME = "acme.store.test"
GLOBEX = "globex.store.test"
HEADERS = '[certgate]\ntrusted_proxies = ["10.0.0.0/8"]\nheader_sources = ["cloudflare"]\n'


def soon(days: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=days)


@pytest.fixture
def cas() -> dict[str, CA]:
    return {"acme": CA.root("Acme Store Root"), "globex": CA.root("Globex Store Root")}


def put(store: SqliteRegistry | object, tenant_id: str, host: str, ca: CA) -> None:
    open_put = getattr(store, "put")  # noqa: B009 - SQLite or PostgreSQL store
    open_put(Tenant.from_pem(tenant_id, [host], roots=ca.cert_pem))


def write_config(directory: Path, text: str) -> Path:
    path = directory / "certgate.toml"
    path.write_text(text)
    return path


# -- a real server --------------------------------------------------------------------


def test_uvicorn_follows_tenants_added_and_removed_in_the_store(tmp_path: Path) -> None:
    site = make_site(tmp_path, [ACME, GLOBEX])
    for name in ("acme", "globex"):
        site.certgate("pki", "init-ca", "--cn", f"{name} devices", "--out", f"{name}/")
        ca = ("--ca-cert", f"{name}/ca.pem", "--ca-key", f"{name}/ca.key")
        site.certgate("pki", "issue-client", *ca, "--cn", f"{name}-1", "--out", f"{name}/")
    url = "sqlite:///tenants.db"  # relative: to the working directory here, to the TOML there
    site.certgate("tenants", "add", "globex", "--registry", url, "--host", GLOBEX,
                  "--root", "globex/ca.pem")  # fmt: skip
    site.write(
        "certgate.toml",
        '[certgate]\nregistry = "sqlite:///tenants.db"\nexempt_paths = ["/version"]\n'
        "[certgate.registry_cache]\npoll_interval = 0.2\n",
    )
    # the handshake bundle: the store's CAs (certgate bundle) and the CA of the tenant to come
    bundle = subprocess.run(
        [sys.executable, "-m", "certgate", "bundle", "--config", "certgate.toml"],
        cwd=site.dir, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert bundle.count("BEGIN CERTIFICATE") == 1
    (site.dir / "bundle.pem").write_text(bundle + (site.dir / "acme/ca.pem").read_text())
    with (
        uvicorn(site, "--ssl-ca-certs", str(site.dir / "bundle.pem")) as (port, proc, _log),
        site.client("acme/acme-1.pem", "acme/acme-1.key") as acme,
        site.client("globex/globex-1.pem", "globex/globex-1.key") as globex,
    ):
        assert get(globex, port, GLOBEX).json()["tenant"] == "globex"
        before = get(acme, port, ACME)
        assert before.status_code in (403, 421), before.text  # no tenant for that host yet
        pid = get(globex, port, GLOBEX).json()["pid"]

        site.certgate("tenants", "add", "acme", "--registry", url, "--host", ACME,
                      "--root", "acme/ca.pem")  # fmt: skip
        eventually(lambda: get(acme, port, ACME).status_code == 200, "acme allowed", 2.0)
        assert get(acme, port, ACME).json() | {"pid": pid} == get(acme, port, ACME).json()

        site.certgate("tenants", "remove", "acme", "--registry", url)
        eventually(lambda: get(acme, port, ACME).status_code == 403, "acme refused", 2.0)
        assert get(globex, port, GLOBEX).json()["pid"] == pid  # one process, never reloaded
        assert proc.poll() is None


def test_per_tenant_handshakes_from_a_toml_naming_a_store(tmp_path: Path) -> None:
    """``--per-tenant certgate.toml`` with ``registry``: no bundle; a tenant
    added to the store is reachable on a later handshake, and refused in
    the handshake once removed."""
    site = make_site(tmp_path, [ACME, GLOBEX])
    for name in ("acme", "globex"):
        site.certgate("pki", "init-ca", "--cn", f"{name} devices", "--out", f"{name}/")
        ca = ("--ca-cert", f"{name}/ca.pem", "--ca-key", f"{name}/ca.key")
        site.certgate("pki", "issue-client", *ca, "--cn", f"{name}-1", "--out", f"{name}/")
    url = "sqlite:///tenants.db"
    site.certgate("tenants", "add", "globex", "--registry", url, "--host", GLOBEX,
                  "--root", "globex/ca.pem")  # fmt: skip
    site.write(
        "certgate.toml",
        '[certgate]\nregistry = "sqlite:///tenants.db"\n'
        "[certgate.registry_cache]\npoll_interval = 0.2\n",
    )
    with (
        uvicorn(site, "--per-tenant", str(site.config)) as (port, _proc, _log),
        site.client("acme/acme-1.pem", "acme/acme-1.key") as acme,
        site.client("globex/globex-1.pem", "globex/globex-1.key") as globex,
    ):
        assert get(globex, port, GLOBEX).json()["tenant"] == "globex"
        with pytest.raises(httpx.HTTPError):  # no tenant for that SNI: no anchors
            get(acme, port, ACME)

        def status() -> int:
            try:
                return get(acme, port, ACME).status_code
            except httpx.HTTPError:
                return 0  # refused in the handshake

        site.certgate("tenants", "add", "acme", "--registry", url, "--host", ACME,
                      "--root", "acme/ca.pem")  # fmt: skip
        eventually(lambda: status() == 200, "acme reachable", 10.0)
        site.certgate("tenants", "remove", "acme", "--registry", url)
        eventually(lambda: status() in (0, 403), "acme refused", 10.0)


# -- loading and reloading -----------------------------------------------------------


def test_relative_sqlite_path_is_relative_to_the_toml_file(
    tmp_path: Path, cas: dict[str, CA], monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    put(SqliteRegistry(conf / "tenants.db", create=True), "acme", ACME, cas["acme"])
    path = write_config(conf, HEADERS + 'registry = "sqlite:///tenants.db"\n')
    monkeypatch.chdir(tmp_path)  # not the TOML file's directory
    gate = CertGate.from_toml(path.relative_to(tmp_path))
    try:
        registry = gate.registry
        assert isinstance(registry, CachingRegistry)
        assert registry.inner.path == conf.absolute() / "tenants.db"
        assert gate.decide(leaf_facts(ACME, cas["acme"].issue("d1"))).allowed
        assert gate.decide(leaf_facts(GLOBEX, cas["acme"].issue("d1"))).reason is not None
    finally:
        gate.close()


def test_reload_keeps_the_registry_for_the_same_url_and_options(
    tmp_path: Path, cas: dict[str, CA]
) -> None:
    put(SqliteRegistry(tmp_path / "a.db", create=True), "acme", ACME, cas["acme"])
    put(SqliteRegistry(tmp_path / "b.db", create=True), "globex", GLOBEX, cas["globex"])
    cache = "[certgate.registry_cache]\nmax_tenants = 100\npoll_interval = 0.2\n"
    path = write_config(tmp_path, HEADERS + 'registry = "sqlite:///a.db"\n' + cache)
    gate = CertGate.from_toml(path)
    try:
        first = gate.registry
        assert isinstance(first, CachingRegistry)
        assert first.max_tenants == 100
        assert first.poll_interval == 0.2
        device = leaf_facts(ACME, cas["acme"].issue("d1"))
        assert gate.decide(device).allowed
        assert first.stats().tenants == 1
        assert gate._reloader is not None
        assert gate._reloader.files == (path,)  # the database is never watched

        # settings change, same store: the same object, its cache kept
        path.write_text(HEADERS + 'registry = "sqlite:///a.db"\nrefusal_format = "text"\n' + cache)
        event = gate.reload()
        assert event.settings_changed
        assert gate.registry is first
        assert gate.snapshot.settings.refusal_format == "text"
        assert first.stats().tenants == 1
        assert not first._stop.is_set()

        # a broken file changes nothing and closes nothing
        path.write_text(HEADERS + 'registry = "sqlite:///a.db"\n[[tenants]]\nid = "x"\n')
        with pytest.raises(ConfigError, match="tenants import"):
            gate.reload()
        assert gate.registry is first
        assert not first._stop.is_set()
        assert gate.decide(device).allowed

        # other cache options: a new registry; the old one closed after the swap
        path.write_text(HEADERS + 'registry = "sqlite:///a.db"\n' + cache.replace("100", "50"))
        gate.reload()
        second = gate.registry
        assert isinstance(second, CachingRegistry)
        assert second is not first
        assert second.max_tenants == 50
        assert first._stop.is_set()
        assert gate.decide(device).allowed

        # another URL: the other store's tenants
        path.write_text(HEADERS + 'registry = "sqlite:///b.db"\n')
        gate.reload()
        assert gate.registry is not second
        assert second._stop.is_set()
        assert gate.decide(device).reason is not None
        assert gate.decide(leaf_facts(GLOBEX, cas["globex"].issue("g"))).allowed

        # back to [[tenants]] in the file: a TOML registry; the store closed
        (tmp_path / "acme.pem").write_bytes(cas["acme"].cert_pem)
        third = gate.registry
        path.write_text(HEADERS + f'[[tenants]]\nid = "acme"\nhosts = ["{ACME}"]\n'
                        'roots = ["acme.pem"]\n')  # fmt: skip
        gate.reload()
        assert isinstance(third, CachingRegistry)
        assert third._stop.is_set()
        assert gate.decide(device).allowed
    finally:
        gate.close()


def test_tenants_beside_a_registry_are_refused(tmp_path: Path, cas: dict[str, CA]) -> None:
    SqliteRegistry(tmp_path / "tenants.db", create=True)
    (tmp_path / "acme.pem").write_bytes(cas["acme"].cert_pem)
    path = write_config(
        tmp_path,
        '[certgate]\nregistry = "sqlite:///tenants.db"\n'
        f'[[tenants]]\nid = "acme"\nhosts = ["{ACME}"]\nroots = ["acme.pem"]\n',
    )
    with pytest.raises(ConfigError) as caught:
        CertGate.from_toml(path)
    message = str(caught.value)
    assert "[[tenants]] cannot be used together with [certgate].registry" in message
    assert "certgate tenants import" in message
    # load_config (the file's own tenants) refuses a store configuration
    path.write_text('[certgate]\nregistry = "sqlite:///tenants.db"\n')
    with pytest.raises(ConfigError, match="names a tenant store"):
        load_config(path)


def test_a_missing_store_or_old_schema_is_refused_never_created(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[certgate]\nregistry = "sqlite:///missing.db"\n')
    with pytest.raises(ConfigError, match=r"no such file .*certgate tenants import") as caught:
        CertGate.from_toml(path)
    assert str(path) in str(caught.value)
    assert not (tmp_path / "missing.db").exists()

    old = tmp_path / "old.db"
    conn = SqliteRegistry(old, create=True)._connect()
    conn.execute("DROP TABLE changes")  # a store of schema version 1
    conn.execute("DROP TABLE certgate_counter")
    conn.execute("DELETE FROM certgate_schema WHERE version > 1")
    conn.close()
    path.write_text('[certgate]\nregistry = "sqlite:///old.db"\n')
    with pytest.raises(ConfigError, match="certgate tenants migrate"):
        CertGate.from_toml(path)
    with contextlib.closing(sqlite3.connect(old)) as conn:
        assert conn.execute("SELECT MAX(version) FROM certgate_schema").fetchone() == (1,)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('registry = "tenants.db"', "must be a URL: sqlite:///PATH"),
        ('registry = "mysql://app:hunter2@db/x"', "unknown registry URL scheme 'mysql'"),
        ('registry = "sqlite:///t.db?mode=ro"', "takes no query"),
        ("registry = 5", r"\[certgate\].registry has the wrong type"),
        ("[certgate.registry_cache]\nmax_tenants = 10", "needs \\[certgate\\].registry"),
    ],
)
def test_bad_registry_settings(tmp_path: Path, line: str, message: str) -> None:
    path = write_config(tmp_path, f"[certgate]\n{line}\n")
    with pytest.raises(ConfigError, match=message) as caught:
        CertGate.from_toml(path)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ("max_tenant = 10", r"unknown key \[certgate.registry_cache\].max_tenant"),
        ("max_tenants = 1.5", "max_tenants must be a number"),
        ("max_tenants = true", "max_tenants must be a number"),
        ("max_stale = true", "max_stale must be a number of seconds, or false"),
        ("max_tenants = 0", "max_tenants must be a positive integer"),
        ("poll_interval = 3.0", r"max_stale \(2 s\) must be at least poll_interval"),
    ],
)
def test_bad_cache_options(tmp_path: Path, cache: str, message: str) -> None:
    SqliteRegistry(tmp_path / "t.db", create=True)
    path = write_config(
        tmp_path, f'[certgate]\nregistry = "sqlite:///t.db"\n[certgate.registry_cache]\n{cache}\n'
    )
    with pytest.raises(ConfigError, match=message) as caught:
        CertGate.from_toml(path)
    assert str(path) in str(caught.value)


def test_max_stale_false_keeps_the_cache_through_an_outage(tmp_path: Path) -> None:
    SqliteRegistry(tmp_path / "t.db", create=True)
    path = write_config(
        tmp_path,
        '[certgate]\nregistry = "sqlite:///t.db"\n'
        "[certgate.registry_cache]\nmax_stale = false\nnegative_ttl = 1\nmax_negative = 7\n",
    )
    config = load_gate_config(path)
    registry = config.registry
    assert isinstance(registry, CachingRegistry)
    assert registry.max_stale is None
    assert (registry.negative_ttl, registry.max_negative) == (1.0, 7)
    assert config.files == (path,)


# -- the command line ------------------------------------------------------------------


@pytest.fixture
def store_site(tmp_path: Path, cas: dict[str, CA]) -> tuple[Path, str]:
    store = SqliteRegistry(tmp_path / "tenants.db", create=True)
    put(store, "acme", ACME, cas["acme"])
    put(store, "globex", GLOBEX, cas["globex"])
    path = write_config(tmp_path, '[certgate]\nregistry = "sqlite:///tenants.db"\n')
    return path, sqlite_url(tmp_path / "tenants.db")


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_check_against_a_store(
    tmp_path: Path,
    store_site: tuple[Path, str],
    cas: dict[str, CA],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, url = store_site
    device = tmp_path / "device.pem"
    device.write_bytes(cas["acme"].issue("d1").cert_pem)
    for where in (("--registry", url), ("--config", str(path))):
        code, out, err = cli(capsys, "check", str(device), "--host", ACME, *where, "--json")
        assert code == 0, err
        assert json.loads(out)["tenant"] == "acme"
        code, out, _ = cli(capsys, "check", str(device), "--host", GLOBEX, *where, "--explain")
        assert code == 1
        assert "valid_for_tenants:   acme" in out
    code, _, err = cli(
        capsys, "check", str(device), "--host", ACME, "--registry", "sqlite:///no.db"
    )
    assert code == 2
    assert "no such file" in err
    before = path.read_text()
    code, _, err = cli(capsys, "tenants", "remove", "acme", "--config", str(path))
    assert code == 2
    assert "use --registry URL instead of --config" in err
    assert path.read_text() == before


def test_cli_bundle_streams_each_ca_once(
    store_site: tuple[Path, str], cas: dict[str, CA], capsys: pytest.CaptureFixture[str]
) -> None:
    path, url = store_site
    store = open_store(url)
    for where in (("--registry", url), ("--config", str(path))):
        code, out, err = cli(capsys, "bundle", *where)
        assert code == 0, err
        assert out.count("BEGIN CERTIFICATE") == 2
        for ca in cas.values():
            assert ca.cert_pem.decode() in out
    store.remove("acme")
    store.remove("globex")
    code, out, err = cli(capsys, "bundle", "--registry", url)
    assert code == 2
    assert "no tenant CA to bundle" in err
    assert out == ""


def test_cli_expiry_and_config_check_against_a_store(
    tmp_path: Path, store_site: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, url = store_site
    code, out, err = cli(capsys, "expiry", "--registry", url)
    assert code == 0, err
    assert "have 30 days or more left" in out
    code, out, _ = cli(capsys, "config", "check", str(path))
    assert code == 0
    assert "tenants: 2 in the store" in out
    assert "warning" not in out

    late = CA.root("Late Root", not_after=soon(5))
    put(open_store(url), "late", "late.store.test", late)
    for where in (("--registry", url), ("--config", str(path))):
        code, out, _ = cli(capsys, "expiry", *where)
        assert code == 1
        lines = out.splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("critical")
        assert "late" in lines[0]
        assert "CN=Late Root" in lines[0]
    code, out, _ = cli(capsys, "expiry", "--registry", url, "--all", "--json")
    report = json.loads(out)
    assert code == 1
    assert report["late"] == 1
    assert sorted(item["tenant_id"] for item in report["items"]) == ["acme", "globex", "late"]
    code, out, _ = cli(capsys, "expiry", "--registry", url, "--at", soon(40 * 365).isoformat())
    assert code == 1
    assert out.count("expired") == 3  # every CA, as of 40 years from now
    code, out, _ = cli(capsys, "config", "check", str(path), "--strict")
    assert code == 1
    assert "tenants: 3 in the store" in out
    assert "warning: tenant 'late': root CN=Late Root" in out


# -- the gate's expiry check --------------------------------------------------------


class ThreadRecorder(RecordingObserver):
    """Also notes the thread each expiry check was observed on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def on_trust_expiry(self, event: TrustExpiryEvent) -> None:
        self.threads.append(threading.current_thread().name)
        super().on_trust_expiry(event)


def test_expiry_monitor_reports_a_store_tenant_whose_ca_expires_soon(
    tmp_path: Path, store_site: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, url = store_site
    late = CA.root("Late Root", not_after=soon(20))
    issuing = late.intermediate("Late Issuing", not_after=soon(10))
    open_store(url).put(
        Tenant.from_pem(
            "late", ["late.store.test"], roots=late.cert_pem, intermediates=issuing.cert_pem
        )
    )
    recorder = ThreadRecorder()
    gate = CertGate.from_toml(path, observers=[recorder])
    try:
        gate.start_monitor()  # the load-time check (what the middlewares call) ...
        eventually(lambda: len(recorder.trust_expiry) == 1, "the load-time check", 10.0)
        # ... made off the caller's thread (and off the monitor thread, which runs the file
        # watches and signal reloads): a store may hold a million tenants
        assert recorder.threads == ["certgate-expiry-scan"]
        event = recorder.trust_expiry[0]
        assert event.trigger == "load"
        assert [(i.tenant, i.kind, i.level) for i in event.items] == [
            ("late", "intermediate", "critical"),
            ("late", "root", "warning"),
        ]
        assert event.omitted == 0
        assert event.items[1].fingerprint == late.cert.fingerprint(hashes.SHA256()).hex()
        # the cap: the soonest items, the rest counted
        monkeypatch.setattr("certgate.reload.MAX_STORE_EXPIRY_ITEMS", 1)
        capped: TrustExpiryEvent = gate.check_expiry()
        assert [i.kind for i in capped.items] == ["intermediate"]
        assert capped.omitted == 1
    finally:
        gate.close()


def test_periodic_expiry_check_of_a_store(tmp_path: Path, cas: dict[str, CA]) -> None:
    store = SqliteRegistry(tmp_path / "t.db", create=True)
    put(store, "acme", ACME, cas["acme"])
    path = write_config(
        tmp_path, '[certgate]\nregistry = "sqlite:///t.db"\nexpiry_check_interval = 0.2\n'
    )
    recorder = RecordingObserver()
    gate = CertGate.from_toml(path, observers=[recorder])
    try:
        gate.start_monitor()
        eventually(lambda: len(recorder.trust_expiry) >= 1, "the load-time check", 10.0)
        assert recorder.trust_expiry[0].items == ()  # nothing late
        put(store, "late", "late.store.test", CA.root("Late", not_after=soon(2)))
        eventually(
            lambda: any(e.items for e in recorder.trust_expiry if e.trigger == "periodic"),
            "a periodic check sees the late tenant",
            10.0,
        )
        event = next(e for e in recorder.trust_expiry if e.items)
        assert [(i.tenant, i.level) for i in event.items] == [("late", "critical")]
    finally:
        gate.close()


def test_store_expiry_matches_ca_expiry_of_the_same_tenants(
    tmp_path: Path, cas: dict[str, CA]
) -> None:
    """The store's paged scan and :func:`ca_expiry` over the same tenants agree
    (shared CAs listed once per tenant, CRLs included), at every level."""
    store = SqliteRegistry(tmp_path / "t.db", create=True)
    shared = CA.root("Shared Root", not_after=soon(9))
    crl_ca = CA.root("CRL Root")
    from certgate.pki import make_crl

    crl = make_crl(crl_ca, {"revoked": [], "crl_number": 1}, days=2)
    tenants = [
        Tenant.from_pem(f"t{i}", [f"t{i}.test"], roots=shared.cert_pem, shared_anchors=True)
        for i in range(3)
    ]
    tenants.append(
        Tenant.from_pem(
            "crl", ["crl.test"], roots=crl_ca.cert_pem, crls=[crl.public_bytes(Encoding.DER)]
        )
    )
    tenants.append(Tenant.from_pem("acme", [ACME], roots=cas["acme"].cert_pem))
    for tenant in tenants:
        store.put(tenant)
    from certgate.expiry import ca_expiry

    def key(item: object) -> tuple[object, ...]:
        return tuple(getattr(item, f) for f in ("tenant_id", "kind", "fingerprint_sha256", "level"))

    now = dt.datetime.now(dt.UTC)
    for every in (False, True):
        scanned = sorted(map(key, store_expiry(store, now=now, every=every)))
        expected = sorted(key(i) for i in ca_expiry(tenants, now=now) if every or i.level != "ok")
        assert scanned == expected
    assert len(sorted(map(key, store_expiry(store, now=now)))) == 4  # 3 shared + 1 CRL
    report = expiry_report(store, _Levels())
    assert [i.tenant_id for i in report.items][:1] == ["crl"]  # soonest first


class _Levels:
    expiry_warning_days = 30.0
    expiry_critical_days = 14.0
    crl_warning_days = 3.0
    crl_critical_days = 1.0


# -- PostgreSQL ----------------------------------------------------------------------


@pytest.fixture
def pg_store_config(pg_dsn: str, tmp_path: Path, cas: dict[str, CA]) -> Path:
    store = PostgresRegistry(pg_dsn, create=True)
    put(store, "acme", ACME, cas["acme"])
    store.close()
    return write_config(tmp_path, HEADERS + f'registry = "{pg_dsn}"\n')


def test_postgresql_registry_in_toml(
    pg_store_config: Path, pg_dsn: str, cas: dict[str, CA], capsys: pytest.CaptureFixture[str]
) -> None:
    gate = CertGate.from_toml(pg_store_config)
    try:
        first = gate.registry
        assert gate.decide(leaf_facts(ACME, cas["acme"].issue("d"))).allowed
        pg_store_config.write_text(pg_store_config.read_text() + 'refusal_format = "html"\n')
        gate.reload()
        assert gate.registry is first
        writer = PostgresRegistry(pg_dsn)
        put(writer, "globex", GLOBEX, cas["globex"])
        device = leaf_facts(GLOBEX, cas["globex"].issue("g"))
        eventually(lambda: gate.decide(device).allowed, "globex allowed", 2.0)
        writer.remove("globex")
        eventually(
            lambda: gate.decide(device).reason is Reason.UNKNOWN_TENANT, "globex refused", 2.0
        )
        writer.close()
    finally:
        gate.close()
    code, out, err = cli(capsys, "bundle", "--config", str(pg_store_config))
    assert code == 0, err
    assert out == cas["acme"].cert_pem.decode()
    code, out, _ = cli(capsys, "expiry", "--registry", pg_dsn)
    assert code == 0


def test_postgresql_errors_never_show_the_password(tmp_path: Path, pg_server: PgServer) -> None:
    from examples.devenv import free_port

    url = f"postgresql://app:hunter2-pw@127.0.0.1:{free_port()}/tenants?connect_timeout=1"
    path = write_config(tmp_path, f'[certgate]\nregistry = "{url}"\n')
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        CertGate.from_toml(path)
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert "hunter2" not in message
    assert str(path) in message
    path.write_text('[certgate]\nregistry = "postgresql://app:hun/ter2@db/x"\n')
    with pytest.raises(ConfigError) as caught:
        CertGate.from_toml(path)
    assert "ter2" not in str(caught.value)
    code = main(["expiry", "--registry", url])
    assert code == 2
