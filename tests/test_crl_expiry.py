"""CRL nextUpdate in `certgate expiry` and `certgate config check`: CRLs
near or past their nextUpdate are items of kind "crl"."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certgate.devpki import CA
from certgate.expiry import ca_expiry
from certgate.pki import make_crl
from certgate.tenant import Tenant
from tests.cli_config import ConfigTenant, run, write_config

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def crl_of(ca: CA, *, days: int, issued_days_ago: float = 0) -> x509.CertificateRevocationList:
    """A CRL of ``ca`` issued ``issued_days_ago``, valid for ``days``."""
    when = NOW - dt.timedelta(days=issued_days_ago)
    return make_crl(ca, {"revoked": [], "crl_number": 0}, days=days, now=when)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tenants: a CRL with 2 days left, one with 10, one stale."""
    return write_config(
        tmp_path_factory.mktemp("crl-expiry"),
        [
            ConfigTenant(
                name,
                ca := CA.root(f"{name.title()} Root"),
                crl=crl_of(ca, days=crl_days, issued_days_ago=ago),
                extra='crl_stale = "warn"\n',
            )
            for name, crl_days, ago in (("soon", 2, 0), ("fine", 10, 0), ("stale", 7, 10))
        ],
    )


def test_expiry_lists_crls_near_or_past_their_next_update(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "expiry", "--config", str(config))
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[0] == "expired"
    assert "stale" in lines[0]
    assert " crl " in lines[0]
    assert "CN=Stale Root" in lines[0]
    assert lines[0].endswith(str(config.parent / "stale.crl"))
    assert lines[1].split()[:2] == ["warning", "2.0"]
    assert "CN=Soon Root" in lines[1]


def test_expiry_json_and_crl_thresholds(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "expiry", "--config", str(config), "--json", "--all")
    assert code == 1
    report = json.loads(out)
    assert (report["crl_warning_days"], report["crl_critical_days"]) == (3, 1)
    crls = {i["tenant_id"]: i for i in report["items"] if i["kind"] == "crl"}
    assert {t: i["level"] for t, i in crls.items()} == {
        "stale": "expired",
        "soon": "warning",
        "fine": "ok",
    }
    assert crls["soon"]["source"] == str(config.parent / "soon.crl")
    assert 1.9 < crls["soon"]["days_left"] < 2.1
    assert len(crls["soon"]["fingerprint_sha256"]) == 64
    code, out, _ = run(
        capsys,
        "expiry", "--config", str(config), "--json",
        "--crl-warning-days", "12", "--crl-critical-days", "3",
    )  # fmt: skip
    levels = {(i["tenant_id"], i["level"]) for i in json.loads(out)["items"]}
    assert levels == {("stale", "expired"), ("soon", "critical"), ("fine", "warning")}
    code, _, err = run(
        capsys, "expiry", "--config", str(config), "--crl-warning-days", "1",
        "--crl-critical-days", "2",
    )  # fmt: skip
    assert code == 2
    assert "crl_critical_days (2.0) must not exceed crl_warning_days (1.0)" in err


def test_nothing_late_mentions_the_crls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = CA.root("Fresh Root")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "ca.crl").write_bytes(crl_of(ca, days=7).public_bytes(Encoding.DER))
    path = tmp_path / "certgate.toml"
    path.write_text(
        '[[tenants]]\nid = "t"\nhosts = ["t.test"]\nroots = ["ca.pem"]\ncrls = ["ca.crl"]\n'
    )
    code, out, _ = run(capsys, "expiry", "--config", str(path))
    assert code == 0
    assert out == (
        "all 1 tenant CAs have 30 days or more left, and all 1 CRLs 3 days or more before "
        "their nextUpdate\n"
    )


def test_config_check_warns_about_late_crls(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "config", "check", str(config))
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning: tenant")]
    assert len(warnings) == 2
    assert warnings[0].startswith("warning: tenant 'stale': the CRL of CN=Stale Root")
    assert "is stale (past its nextUpdate" in warnings[0]
    assert warnings[1].startswith("warning: tenant 'soon': the CRL of CN=Soon Root")
    assert f"({config.parent / 'soon.crl'}) is due for renewal in 2.0 days" in warnings[1]
    assert run(capsys, "config", "check", "--strict", str(config))[0] == 1


def test_fetched_crls_are_items_named_by_their_url() -> None:
    ca = CA.root("Fetched Root")
    url = "https://pki.example.test/root.crl"
    tenant = Tenant("f", ("f.test",), (ca.cert,), crl_urls=(url,))
    tenant = tenant.with_fetched_crls([(url, crl_of(ca, days=1))])
    items = [i for i in ca_expiry([tenant]) if i.kind == "crl"]
    assert [(i.source, i.level) for i in items] == [(url, "critical")]
    # a Python-API CRL without a label has no source
    tenant = Tenant("g", ("g.test",), (ca.cert,), crls=(crl_of(ca, days=30),))
    items = [i for i in ca_expiry([tenant]) if i.kind == "crl"]
    assert [(i.source, i.level) for i in items] == [(None, "ok")]


def test_a_crl_not_yet_valid_is_expired() -> None:
    ca = CA.root("Early Root")
    early = crl_of(ca, days=7, issued_days_ago=-1)  # thisUpdate tomorrow
    tenant = Tenant("e", ("e.test",), (ca.cert,), crls=(early,))
    (item,) = (i for i in ca_expiry([tenant]) if i.kind == "crl")
    assert item.level == "expired"
