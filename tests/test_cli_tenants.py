"""`certgate tenants add / list / remove` on the TOML file: the round trip,
the load-time rules, and the rest of the file kept byte for byte."""

from __future__ import annotations

import datetime as dt
import json
import logging
import stat
from pathlib import Path

import pytest

from certgate import load_config
from certgate.cli import main
from certgate.devpki import CA
from certgate.errors import ConfigError
from certgate.reasons import Reason
from certgate.tenantfile import add_tenant, remove_tenant, toml_value

HEAD = """\
# certgate configuration - hand-written
[certgate]
exempt_paths = ["/healthz"]   # keep this comment

# Acme, the first customer
[[tenants]]
id = "acme"
hosts = ["pay.acme.test", "*.acme.test"]   # both
roots = ["pki/acme-root.pem"]
"""

TAIL = """
# Initech: report-only while it rolls out
[[tenants]]
id = "initech"
hosts = ["initech.test"]
roots = ["pki/initech-root.pem"]
mode = "report"

[tenants.policy]
common_name = ["alice", "bob"]
"""


@pytest.fixture(scope="module")
def cas() -> dict[str, CA]:
    globex = CA.root("Globex Root", organization="Globex")
    return {
        "acme": CA.root("Acme Root", organization="Acme"),
        "initech": CA.root("Initech Root", organization="Initech"),
        "globex": globex,
        "globex-issuing": globex.intermediate("Globex Issuing", organization="Globex"),
        "stranger": CA.root("Stranger Root").intermediate("Stranger Issuing"),
        "old": CA.root("Old Root", not_before=_ago(400), not_after=_ago(1)),
    }


def _ago(days: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(days=days)


@pytest.fixture
def config(tmp_path: Path, cas: dict[str, CA]) -> Path:
    pki = tmp_path / "pki"
    pki.mkdir()
    for name, ca in cas.items():
        (pki / f"{name}.pem").write_bytes(ca.cert_pem)
    (pki / "acme-root.pem").write_bytes(cas["acme"].cert_pem)
    (pki / "initech-root.pem").write_bytes(cas["initech"].cert_pem)
    path = tmp_path / "certgate.toml"
    path.write_text(HEAD + TAIL)
    path.chmod(0o640)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def add_globex(
    capsys: pytest.CaptureFixture[str], config: Path, *extra: str
) -> tuple[int, str, str]:
    pki = config.parent / "pki"
    return run(
        capsys,
        "tenants", "add", "globex", "--config", str(config),
        "--host", "api.globex.test", "--host", "*.globex.test",
        "--root", str(pki / "globex.pem"), "--intermediate", str(pki / "globex-issuing.pem"),
        *extra,
    )  # fmt: skip


def test_round_trip(config: Path, cas: dict[str, CA], capsys: pytest.CaptureFixture[str]) -> None:
    original = config.read_text()
    code, out, err = add_globex(
        capsys, config, "--mode", "report", "--policy", '{"common_name": ["gw"]}'
    )
    assert (code, err) == (0, "")
    assert out.startswith(f"added tenant globex to {config}: hosts api.globex.test, *.globex.test")
    text = config.read_text()
    assert text.startswith(original)  # every byte before is kept
    assert text[len(original) :] == (
        '\n[[tenants]]\nid = "globex"\nhosts = ["api.globex.test", "*.globex.test"]\n'
        'roots = ["pki/globex.pem"]\nintermediates = ["pki/globex-issuing.pem"]\n'
        'mode = "report"\npolicy = { common_name = ["gw"] }\n'
    )
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    # it loads, and the new tenant works
    registry = load_config(config).registry
    assert [t.id for t in registry.tenants()] == ["acme", "initech", "globex"]
    globex = registry.tenant_by_id("globex")
    assert globex is not None
    assert globex.mode == "report"
    assert globex.intermediates == (cas["globex-issuing"].cert,)

    code, out, _ = run(capsys, "tenants", "list", "--config", str(config))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["id", "hosts", "roots", "intermediates", "earliest", "CA", "expiry"]
    assert lines[1].startswith("acme ")
    assert "pay.acme.test, *.acme.test" in lines[1]
    assert lines[3].split()[0] == "globex"
    issuing_end = cas["globex-issuing"].cert.not_valid_after_utc
    assert lines[3].rstrip().endswith(issuing_end.strftime("%Y-%m-%dT%H:%M:%SZ"))
    code, out, _ = run(capsys, "tenants", "list", "--config", str(config), "--json")
    rows = json.loads(out)["tenants"]
    assert [(r["id"], r["roots"], r["intermediates"]) for r in rows] == [
        ("acme", 1, 0),
        ("initech", 1, 0),
        ("globex", 1, 1),
    ]
    assert rows[2]["hosts"] == ["api.globex.test", "*.globex.test"]

    code, out, _ = run(capsys, "config", "check", str(config), "--strict")
    assert code == 0
    assert "tenants: 3" in out

    # remove the first tenant: its table and the comment right above it go
    code, out, _ = run(capsys, "tenants", "remove", "acme", "--config", str(config))
    assert code == 0
    assert out.startswith(f"removed tenant acme from {config}")
    head_rest = HEAD[: HEAD.index("# Acme, the first customer")]
    assert config.read_text() == text.replace(HEAD + "\n", head_rest)
    assert "# keep this comment" in config.read_text()
    # remove the middle one, with its [tenants.policy] sub-table
    assert run(capsys, "tenants", "remove", "initech", "--config", str(config))[0] == 0
    assert "Initech" not in config.read_text()
    assert 'common_name = ["alice"' not in config.read_text()
    registry = load_config(config).registry
    assert [t.id for t in registry.tenants()] == ["globex"]
    assert run(capsys, "tenants", "remove", "globex", "--config", str(config))[0] == 0
    assert config.read_text() == head_rest.rstrip("\n") + "\n"
    assert load_config(config).registry.tenants() == []
    assert stat.S_IMODE(config.stat().st_mode) == 0o640


def test_added_tenant_accepts_its_devices(
    config: Path, cas: dict[str, CA], capsys: pytest.CaptureFixture[str]
) -> None:
    from certgate import CertGate

    assert add_globex(capsys, config)[0] == 0
    gate = CertGate.from_toml(config)
    device = cas["globex-issuing"].issue("sensor")
    assert gate.check("api.globex.test", [device.der]).allowed  # the intermediate is configured
    assert gate.check("pay.acme.test", [device.der]).reason is Reason.UNTRUSTED_CHAIN


@pytest.mark.parametrize(
    "case",
    [
        ("acme", "g.test", "pki/globex.pem", [], "duplicate tenant id 'acme'"),
        ("globex", "pay.acme.test", "pki/globex.pem", [], "host 'pay.acme.test' is claimed by"),
        (
            "globex",
            "g.test",
            "pki/globex.pem",
            ["--intermediate", "pki/stranger.pem"],
            "[rule chain]",
        ),
        ("globex", "g.test", "pki/old.pem", [], "[rule validity]"),
        ("globex", "g.test", "pki/missing.pem", [], "cannot read PEM file"),
        ("globex", "g.test", "pki/acme.pem", [], "share the trust anchor"),
        ("globex", "g.test", "pki/globex.pem", ["--policy", '{"colour": 1}'], "colour"),
        ("globex", "g.test", "pki/globex.pem", ["--policy", "[1]"], "must be a JSON object"),
        ("globex", "g.test", "pki/globex.pem", ["--crl-url", "ftp://x"], "not an http"),
    ],
)
def test_add_refuses_what_would_not_load(
    config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, str, str, list[str], str],
) -> None:
    tenant_id, host, root, extra, message = case
    before = config.read_bytes()
    monkeypatch.chdir(config.parent)  # the file names are relative to the working directory
    code, out, err = run(
        capsys,
        "tenants", "add", tenant_id, "--config", str(config), "--host", host, "--root", root,
        *extra,
    )  # fmt: skip
    assert code == 2
    assert out == ""
    assert message in err
    assert config.read_bytes() == before
    assert not any(p.name.startswith(".certgate.toml.") for p in config.parent.iterdir())


def test_add_warns_for_an_expired_ca_it_is_told_to_keep(
    config: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="certgate")
    code, out, _ = run(
        capsys,
        "tenants", "add", "old", "--config", str(config), "--host", "old.test",
        "--root", str(config.parent / "pki" / "old.pem"), "--ca-expired", "warn",
    )  # fmt: skip
    assert code == 0
    assert 'ca_expired = "warn"' in config.read_text()
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "[rule validity]" in warnings[0]
    assert not caplog.records  # printed once, not logged as well
    # an inventory lists it; `expiry` reports it
    assert "old" in run(capsys, "tenants", "list", "--config", str(config))[1]
    code, out, _ = run(capsys, "expiry", "--config", str(config))
    assert code == 1
    assert out.startswith("expired")


def test_a_ca_outside_the_config_directory_is_written_absolute(
    config: Path, tmp_path_factory: pytest.TempPathFactory, cas: dict[str, CA]
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "globex.pem"
    elsewhere.write_bytes(cas["globex"].cert_pem)
    assert (
        main(
            [
                "tenants",
                "add",
                "globex",
                "--config",
                str(config),
                "--host",
                "g.test",
                "--root",
                str(elsewhere),
            ]
        )
        == 0
    )
    assert f'roots = ["{elsewhere}"]' in config.read_text()


def test_remove_refuses_unknown_ids_and_unsafe_files(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "tenants", "remove", "nobody", "--config", str(config))
    assert code == 2
    assert "no tenant 'nobody'" in err
    # a header-like line in a multi-line string: the table cannot be cut
    # exactly, so the file is left alone
    tricky = config.read_text().replace(
        'exempt_paths = ["/healthz"]',
        'exempt_paths = ["/healthz"]\nproxy_names = ["""\n[[tenants]]\n"""]',
    )
    config.write_text(tricky)
    with pytest.raises(ConfigError, match="remove it by hand"):
        remove_tenant(config, "initech")
    assert config.read_text() == tricky
    # tenants as an inline array: nothing can be appended
    inline = tmp_path / "inline.toml"
    inline.write_text('tenants = [{ id = "a", hosts = ["a.test"], roots = ["pki/acme.pem"] }]\n')
    with pytest.raises(ConfigError, match="inline array"):
        add_tenant(inline, {"id": "b", "hosts": ["b.test"], "roots": ["pki/globex.pem"]})


def test_a_symlinked_config_is_edited_through_the_link(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = config.parent / "link.toml"
    link.symlink_to(config.name)
    code, _, err = run(
        capsys,
        "tenants", "add", "globex", "--config", str(link),
        "--host", "g.test", "--root", str(config.parent / "pki" / "globex.pem"),
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert link.is_symlink()
    assert 'id = "globex"' in config.read_text()


def test_crlf_files_stay_crlf(tmp_path: Path, config: Path) -> None:
    crlf = config.read_text().replace("\n", "\r\n")
    config.write_bytes(crlf.encode())
    add_tenant(config, {"id": "globex", "hosts": ["g.test"], "roots": ["pki/globex.pem"]})
    data = config.read_bytes()
    assert data.startswith(crlf.encode())
    assert b"\n" not in data.replace(b"\r\n", b"")
    remove_tenant(config, "globex")
    assert config.read_bytes() == crlf.encode()


def test_toml_values_are_escaped() -> None:
    assert toml_value('a"b\\c\n\x1b\u2028é') == '"a\\"b\\\\c\\u000A\\u001B\\u2028é"'
    assert toml_value({"a b": [1, 2.5, True]}) == '{ "a b" = [1, 2.5, true] }'
    with pytest.raises(ConfigError):
        toml_value(None)
    with pytest.raises(ConfigError):
        toml_value(float("nan"))
    with pytest.raises(ConfigError):
        toml_value("\udcff")


def test_output_is_escaped(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "tenants", "remove", "x\x1b[31m", "--config", str(config))
    assert code == 2
    assert "\x1b" not in err
