"""`certgate check` and `certgate bundle`: output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from examples.devenv import DevEnv, make_dev_environment

from certgate.cli import main


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> DevEnv:
    return make_dev_environment(tmp_path_factory.mktemp("cli-pki"))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def check(
    capsys: pytest.CaptureFixture[str],
    env: DevEnv,
    cert: str | Path,
    host: str,
    *extra: str,
    config: Path | None = None,
) -> tuple[int, str, str]:
    """``certgate check CERT --host HOST --config TOML [extra...]``; a ``str``
    cert names a file of the dev environment."""
    path = env.path(cert) if isinstance(cert, str) else cert
    config_path = str(config or env.config)
    return run(capsys, "check", str(path), "--host", host, "--config", config_path, *extra)


def test_allowed_prints_identity_and_exits_0(
    env: DevEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = check(capsys, env, "acme-device-chain.pem", "pay.acme.test")
    assert code == 0
    assert "decision:            allowed" in out
    assert "tenant:              acme" in out
    assert "common_name:         sensor-17" in out
    assert "spiffe_id:           spiffe://acme.test/device/sensor-17" in out
    assert "CN=Acme Root CA,O=Acme" in out


def test_chain_option_supplies_intermediates(
    env: DevEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf_only = check(capsys, env, "acme-device.pem", "pay.acme.test")
    assert leaf_only[0] == 1
    assert "reason:              untrusted_chain" in leaf_only[1]
    code, out, _ = check(
        capsys,
        env,
        "acme-device.pem",
        "pay.acme.test",
        "--chain",
        str(env.path("acme-issuing.pem")),
    )
    assert code == 0, out


def test_rejections_exit_1_with_reason(env: DevEnv, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        ("acme-device-chain.pem", "api.globex.test", "untrusted_chain"),
        ("acme-expired-chain.pem", "pay.acme.test", "expired"),
        ("acme-device-chain.pem", "nobody.example", "unknown_tenant"),
    ]
    for cert, host, reason in cases:
        code, out, _ = check(capsys, env, cert, host, "--json")
        assert code == 1
        report = json.loads(out)
        assert report["decision"] == "rejected"
        assert report["reason"] == reason
        assert len(report["fingerprint_sha256"]) == 64


def test_at_sets_the_validation_time(env: DevEnv, capsys: pytest.CaptureFixture[str]) -> None:
    cert = x509.load_pem_x509_certificate(env.path("acme-expired.pem").read_bytes())
    when = cert.not_valid_before_utc.isoformat()
    code, out, _ = check(
        capsys, env, "acme-expired-chain.pem", "pay.acme.test", "--at", when, "--json"
    )
    assert code == 0, out
    later = "2999-01-01T00:00:00Z"
    code, out, _ = check(
        capsys, env, "acme-device-chain.pem", "pay.acme.test", "--at", later, "--json"
    )
    assert code == 1
    assert json.loads(out)["reason"] == "expired"


def test_der_input(env: DevEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = x509.load_pem_x509_certificate(env.path("globex-device.pem").read_bytes())
    der = tmp_path / "device.der"
    der.write_bytes(cert.public_bytes(Encoding.DER))
    code, _, _ = check(capsys, env, der, "api.globex.test")
    assert code == 0


def test_bad_usage_and_bad_config_exit_2(
    env: DevEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "check")
    assert code == 2
    assert "required" in err
    code, _, err = check(capsys, env, "acme-device.pem", "x", config=tmp_path / "missing.toml")
    assert code == 2
    assert "configuration error" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[certgate]\ntrusted_proxy = []\n")
    code, _, err = check(capsys, env, "acme-device.pem", "x", config=bad)
    assert code == 2
    assert "trusted_proxy" in err
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    code, _, err = check(capsys, env, garbage, "pay.acme.test")
    assert code == 2
    assert "malformed_certificate" in err
    code, _, err = check(capsys, env, "acme-device.pem", "pay.acme.test", "--at", "yesterday")
    assert code == 2


def test_bundle_lists_every_tenant_ca_once(env: DevEnv, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "bundle", "--config", str(env.config))
    assert code == 0
    subjects = sorted(
        c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(out.encode())
    )
    assert subjects == sorted(
        [
            "CN=Acme Root CA,O=Acme",
            "CN=Globex Root CA,O=Globex",
            "CN=Initech Root CA,O=Initech",
            "CN=Initech Issuing CA,O=Initech",
        ]
    )


def test_console_script_and_module_entry_points(env: DevEnv) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "certgate",
            "check",
            str(env.path("initech-device.pem")),
            "--host",
            "initech.test",
            "--config",
            str(env.config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "tenant:              initech" in result.stdout
