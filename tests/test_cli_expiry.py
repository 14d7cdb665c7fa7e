"""`certgate expiry`: tenant CAs that expire soon, for cron and monitoring."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from certgate.devpki import CA
from certgate.errors import ConfigError
from certgate.expiry import ca_expiry
from certgate.tenant import Tenant
from tests.cli_config import ConfigTenant, run, write_config

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def days(n: float) -> dt.datetime:
    return NOW + dt.timedelta(days=n)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four tenants: a root with 5 days left, one with 20 (its issuing CA
    has 400), one already expired, one with ten years."""
    month = CA.root("Month Root", not_after=days(20))
    gone = CA.root("Gone Root", not_before=days(-100), not_after=days(-1))
    return write_config(
        tmp_path_factory.mktemp("expiry"),
        [
            ConfigTenant("soon", CA.root("Soon Root", not_after=days(5))),
            ConfigTenant("month", month, month.intermediate("Month Issuing", not_after=days(400))),
            # an expired root loads only with ca_expired = "warn"
            ConfigTenant("gone", gone, extra='ca_expired = "warn"\n'),
            ConfigTenant("fine", CA.root("Fine Root")),
        ],
    )


def test_lists_late_cas_soonest_first_and_exits_1(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "expiry", "--config", str(config))
    assert code == 1
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["expired", "critical", "warning"]
    assert "CN=Gone Root" in lines[0]
    assert "CN=Soon Root" in lines[1]
    assert "CN=Month Root" in lines[2]
    assert "Fine" not in out
    assert "Month Issuing" not in out


def test_json_and_all(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "expiry", "--config", str(config), "--json", "--all")
    assert code == 1
    report = json.loads(out)
    assert report["late"] == 3
    levels = {(i["tenant_id"], i["kind"]): i["level"] for i in report["items"]}
    assert levels == {
        ("gone", "root"): "expired",
        ("soon", "root"): "critical",
        ("month", "root"): "warning",
        ("month", "intermediate"): "ok",
        ("fine", "root"): "ok",
    }
    soon = next(i for i in report["items"] if i["tenant_id"] == "soon")
    assert 4.9 < soon["days_left"] < 5.1
    assert len(soon["fingerprint_sha256"]) == 64


def test_thresholds_and_time_are_options(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "expiry", "--config", str(config), "--warning-days", "3", "--critical-days", "1"
    )
    assert code == 1
    assert [line.split()[0] for line in out.splitlines()] == ["expired"]
    at = (NOW - dt.timedelta(days=200)).isoformat()
    code, out, _ = run(
        capsys,
        "expiry",
        "--config",
        str(config),
        "--warning-days",
        "1",
        "--critical-days",
        "1",
        "--at",
        at,
    )
    assert code == 1  # 200 days ago, the gone root was not yet valid
    assert [line.split()[0] for line in out.splitlines()] == ["expired"]


def test_nothing_late_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fine.pem").write_bytes(CA.root("Fine").cert_pem)
    path = tmp_path / "certgate.toml"
    path.write_text('[[tenants]]\nid = "fine"\nhosts = ["fine.test"]\nroots = ["fine.pem"]\n')
    code, out, _ = run(capsys, "expiry", "--config", str(path))
    assert code == 0
    assert "all 1 tenant CAs have 30 days or more left" in out


def test_bad_thresholds(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "expiry", "--config", str(config), "--warning-days", "5", "--critical-days", "9"
    )
    assert code == 2
    assert "must not exceed" in err
    with pytest.raises(ConfigError, match="warning_days"):
        ca_expiry([], warning_days=float("nan"))


def test_a_ca_shared_by_two_tenants_is_listed_for_each() -> None:
    root = CA.root("Shared", not_after=days(3))
    tenants = [
        Tenant(id=t, hosts=(f"{t}.test",), roots=(root.cert,), shared_anchors=True)
        for t in ("a", "b")
    ]
    items = ca_expiry(tenants)
    assert [(i.tenant_id, i.level) for i in items] == [("a", "critical"), ("b", "critical")]


def test_config_check_reports_late_cas_as_warnings(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "config", "check", str(config))
    assert code == 0
    assert out.splitlines()[:2] == [
        f"{config}: valid",
        "tenants: 4, host patterns: 4, CA certificates: 5",
    ]
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3
    # the CA vetting warning of a root loaded with ca_expired = "warn"
    assert "tenant 'gone': root 'CN=Gone Root" in warnings[0]
    assert "expired on" in warnings[0]
    assert "[rule validity]" in warnings[0]
    assert run(capsys, "config", "check", str(config), "--strict")[0] == 1


def test_config_check_of_a_good_and_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "fine.pem").write_bytes(CA.root("Fine").cert_pem)
    good = tmp_path / "good.toml"
    good.write_text('[[tenants]]\nid = "fine"\nhosts = ["fine.test"]\nroots = ["fine.pem"]\n')
    code, out, _ = run(capsys, "config", "check", str(good), "--strict")
    assert code == 0
    assert "warning" not in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[certgate]\nheader_sources = ["cloudflare"]\n' + good.read_text())
    code, out, err = run(capsys, "config", "check", str(bad))
    assert code == 2
    assert out == ""
    assert "trusted_proxies is empty" in err
