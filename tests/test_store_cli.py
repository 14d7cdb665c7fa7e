"""``certgate tenants`` commands on registry URLs (``--registry URL``,
import/export), against both backends (the ``backend`` / ``store_url``
fixtures: an SQLite file, a database in a real PostgreSQL): TOML -> store
in one command, export/import round trips (through SQLite and back),
migrate/add/remove/list/show, refusals naming the tenant and the rule.
SQLite's backup/restore and a missing file are SQLite-only; PostgreSQL's
connection errors are in tests/test_store_postgres.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from certgate import CertGate, Reason
from certgate.cli import main
from certgate.devpki import CA
from certgate.stores import open_store
from tests.store_backends import Backend
from tests.store_helpers import leaf_facts

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("cli_stores")  # in-process commands close their stores


@pytest.fixture
def config(tmp_path: Path) -> tuple[Path, dict[str, CA]]:
    cas = {name: CA.root(f"{name} root") for name in ("acme", "globex")}
    for name, ca in cas.items():
        (tmp_path / f"{name}.pem").write_bytes(ca.cert_pem)
    toml = tmp_path / "certgate.toml"
    toml.write_text(
        """
[[tenants]]
id = "acme"
hosts = ["pay.acme.test", "*.acme.test"]
roots = ["acme.pem"]
policy = { common_name = ["device-1"] }

[[tenants]]
id = "globex"
hosts = ["api.globex.test"]
roots = ["globex.pem"]
mode = "report"
"""
    )
    return toml, cas


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["tenants", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_toml_to_a_registry_in_one_command(
    backend: Backend,
    store_url: str,
    config: tuple[Path, dict[str, CA]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    toml, cas = config
    url = store_url
    code, out, err = run(capsys, "import", "--from", str(toml), "--to", url, "--progress")
    assert code == 0, err
    assert "imported 2 tenant(s)" in out
    assert "2 written, 0 unchanged" in out
    assert "2/2 tenants" in err  # the progress bar's last state (asked for: not a terminal)
    code, out, _ = run(capsys, "import", "--from", str(toml), "--to", url, "--quiet")
    assert "0 written, 2 unchanged" in out
    code, out, _ = run(capsys, "list", "--registry", url, "--json")
    listed = json.loads(out)["tenants"]
    assert [t["id"] for t in listed] == ["acme", "globex"]
    assert listed[1]["mode"] == "report"
    code, out, _ = run(capsys, "show", "acme", "--registry", url, "--json")
    shown = json.loads(out)
    assert shown["policy"] == {"common_name": ["device-1"]}
    assert shown["roots"][0]["subject"] == "CN=acme root,O=certgate dev"
    # the policy is enforced through the store
    gate = CertGate(
        backend.registry(url), trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"]
    )
    assert gate.decide(leaf_facts("x.acme.test", cas["acme"].issue("device-1"))).reason is None
    refused = gate.decide(leaf_facts("x.acme.test", cas["acme"].issue("device-2")))
    assert refused.reason is Reason.POLICY_DENIED


def test_export_import_round_trip(
    backend: Backend,
    store_url: str,
    tmp_path: Path,
    config: tuple[Path, dict[str, CA]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """TOML -> store -> JSON lines -> another store -> SQLite -> a third
    store (URL to URL): the same tenants all the way."""
    toml, _ = config
    first, second = store_url, backend.new_url()
    assert run(capsys, "import", "--from", str(toml), "--to", first, "--quiet")[0] == 0
    export = tmp_path / "tenants.jsonl"
    code, _, err = run(capsys, "export", "--from", first, "--out", str(export))
    assert code == 0
    assert "exported 2 tenant(s)" in err
    lines = export.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["acme", "globex"]
    assert run(capsys, "import", "--from", str(export), "--to", second, "--quiet")[0] == 0
    lite, third = f"sqlite:///{tmp_path / 'copy.db'}", backend.new_url()
    assert run(capsys, "import", "--from", second, "--to", lite, "--quiet")[0] == 0  # URL -> URL
    assert run(capsys, "import", "--from", lite, "--to", third, "--quiet")[0] == 0
    stores = [open_store(url) for url in (first, second, lite, third)]
    exported = [list(one.export()) for one in stores]
    assert [[r.id for r in records] for records in exported] == [["acme", "globex"]] * 4
    assert all(records == exported[0] for records in exported)
    for one in stores:
        one.close()  # type: ignore[attr-defined]


def test_migrate_add_remove_and_refusals(
    store_url: str,
    tmp_path: Path,
    config: tuple[Path, dict[str, CA]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, cas = config
    url = store_url
    code, out, _ = run(capsys, "migrate", url)
    assert code == 0
    assert "0 tenant(s)" in out
    acme_pem = str(tmp_path / "acme.pem")
    code, out, err = run(
        capsys, "add", "acme", "--registry", url, "--host", "pay.acme.test", "--root", acme_pem
    )
    assert code == 0, err
    assert "stored tenant acme" in out
    code, _, err = run(
        capsys, "add", "evil", "--registry", url, "--host", "evil.test", "--root", acme_pem
    )
    assert code == 2
    assert "tenants 'acme' and 'evil' share the trust anchor" in err
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(cas["globex"].issue("not-a-ca").cert_pem)
    code, _, err = run(
        capsys, "add", "evil", "--registry", url, "--host", "evil.test", "--root", str(leaf)
    )
    assert code == 2
    assert "is not a CA certificate" in err
    code, _, err = run(
        capsys,
        "add",
        "evil",
        "--registry",
        url,
        "--host",
        "x",
        "--root",
        acme_pem,
        "--policy",
        "[1]",
    )
    assert code == 2
    assert "--policy must be a JSON object" in err
    code, out, _ = run(capsys, "list", "--registry", url, "--json")
    assert [t["id"] for t in json.loads(out)["tenants"]] == ["acme"]
    assert run(capsys, "remove", "acme", "--registry", url)[0] == 0
    code, _, err = run(capsys, "remove", "acme", "--registry", url)
    assert code == 2
    assert "no tenant acme" in err
    code, out, _ = run(capsys, "list", "--registry", url, "--json")
    assert json.loads(out)["tenants"] == []


def test_a_bad_line_stops_the_import_and_names_it(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = CA.root("one root")
    good = {"id": "one", "hosts": ["one.test"], "roots": [ca.cert_pem.decode()]}
    lines = tmp_path / "in.jsonl"
    lines.write_text(json.dumps(good) + "\n" + '{"id": "two", "hosts": ["two.test"]}\n')
    url = store_url
    code, _, err = run(capsys, "import", "--from", str(lines), "--to", url, "--quiet")
    assert code == 2
    assert "line 2: tenant 'two': 'roots' must not be empty" in err
    assert "1 tenants stored before it" in err
    store = open_store(url)
    assert store.count() == 1
    store.close()  # type: ignore[attr-defined]


def test_toml_and_registry_options_exclude_each_other(
    tmp_path: Path, config: tuple[Path, dict[str, CA]], capsys: pytest.CaptureFixture[str]
) -> None:
    toml, _ = config
    url = f"sqlite:///{tmp_path / 'tenants.db'}"
    code, _, err = run(capsys, "list", "--config", str(toml), "--registry", url)
    assert code == 2
    assert "not allowed with argument" in err
    code, _, err = run(capsys, "list", "--config", str(toml), "--limit", "1")
    assert code == 2
    assert "--after and --limit page a registry URL" in err
    code, out, _ = run(capsys, "list", "--config", str(toml))  # the TOML file's own listing
    assert code == 0
    assert "acme" in out


def test_migrate_backup_and_missing_store(
    tmp_path: Path, config: tuple[Path, dict[str, CA]], capsys: pytest.CaptureFixture[str]
) -> None:
    toml, _ = config
    url = f"sqlite:///{tmp_path / 'tenants.db'}"
    code, _, err = run(capsys, "list", "--registry", url)
    assert code == 2
    assert "no such file" in err
    code, out, _ = run(capsys, "migrate", url)
    assert code == 0
    assert "0 tenant(s)" in out
    run(capsys, "import", "--from", str(toml), "--to", url, "--quiet")
    copy = tmp_path / "copy.db"
    assert run(capsys, "backup", url, str(copy))[0] == 0
    assert open_store(f"sqlite:///{copy}").count() == 2
    code, _, err = run(capsys, "backup", url, str(copy))
    assert code == 2
    assert "exists" in err
    assert run(capsys, "remove", "acme", "--registry", url)[0] == 0
    code, out, _ = run(capsys, "restore", url, str(copy))
    assert code == 0
    assert "2 tenant(s)" in out
    assert open_store(url).get("acme") is not None
    code, _, err = run(capsys, "restore", url, str(toml))
    assert code == 2
    assert "cannot restore" in err


def test_the_module_runs_as_a_command(store_url: str, config: tuple[Path, dict[str, CA]]) -> None:
    """A process that imports into the store and exits on its own (no
    connection pool or listener keeps it alive)."""
    toml, _ = config
    url = store_url
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "certgate",
            "tenants",
            "import",
            "--from",
            str(toml),
            "--to",
            url,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "imported 2 tenant(s)" in done.stdout
