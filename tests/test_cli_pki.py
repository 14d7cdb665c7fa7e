"""`certgate pki`, `certgate inspect`, `--version` and `bundle` of nothing:
the cfssl steps of the reference flow, ending with curl --cert/--key
against a real certgate server."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID
from examples.devenv import DevEnv, make_dev_environment

import certgate
from certgate.cli import main
from certgate.gate import CertGate
from certgate.pem import pem_to_ders
from tests.servers import free_port, serve, uvicorn_cmd


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def init_ca(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> None:
    code, _, err = run(capsys, "pki", "init-ca", "--cn", "Tenant Root", "--out", str(out), *extra)
    assert code == 0, err


def issue(capsys: pytest.CaptureFixture[str], ca_dir: Path, *extra: str) -> tuple[int, str, str]:
    return run(
        capsys,
        "pki",
        "issue-client",
        "--ca-cert",
        str(ca_dir / "ca.pem"),
        "--ca-key",
        str(ca_dir / "ca.key"),
        "--out",
        str(ca_dir),
        *extra,
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"certgate {certgate.__version__}"


def test_bundle_of_a_config_without_tenants_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "empty.toml"
    config.write_text("[certgate]\n")
    code, out, err = run(capsys, "bundle", "--config", str(config))
    assert code == 2
    assert out == ""
    assert "no tenant CA" in err


@pytest.mark.parametrize(
    ("key_type", "check_key"),
    [
        (
            "ec256",
            lambda k: isinstance(k, ec.EllipticCurvePublicKey) and k.curve.name == "secp256r1",
        ),
        (
            "ec384",
            lambda k: isinstance(k, ec.EllipticCurvePublicKey) and k.curve.name == "secp384r1",
        ),
        ("rsa4096", lambda k: isinstance(k, rsa.RSAPublicKey) and k.key_size == 4096),
    ],
)
def test_init_ca_makes_a_vetted_root(
    key_type: str, check_key: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_ca(capsys, tmp_path, "--key-type", key_type, "--days", "30")
    cert = load(tmp_path / "ca.pem")
    assert callable(check_key)
    assert check_key(cert.public_key())
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert constraints.critical
    assert constraints.value.ca
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert cert.subject == cert.issuer
    expected = hashes.SHA384 if key_type == "ec384" else hashes.SHA256
    assert isinstance(cert.signature_hash_algorithm, expected)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 30 * 86400 <= lifetime.total_seconds() <= 30 * 86400 + 7200
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_init_ca_never_overwrites_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_ca(capsys, tmp_path)
    before = (tmp_path / "ca.key").read_bytes()
    code, _, err = run(capsys, "pki", "init-ca", "--cn", "Again", "--out", str(tmp_path))
    assert code == 2
    assert "exists" in err
    assert "--force" in err
    assert (tmp_path / "ca.key").read_bytes() == before
    init_ca(capsys, tmp_path, "--force")
    assert (tmp_path / "ca.key").read_bytes() != before


def test_issue_client_certificate_verifies_for_its_tenant_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_ca(capsys, tmp_path)
    code, _, err = issue(
        capsys,
        tmp_path,
        "--cn",
        "device 42",
        "--uri",
        "spiffe://acme.test/device/42",
        "--dns",
        "d42.acme.test",
        "--days",
        "10",
    )
    assert code == 0, err
    cert = load(tmp_path / "device_42.pem")
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert stat.S_IMODE((tmp_path / "device_42.key").stat().st_mode) == 0o600
    other = tmp_path / "other"
    init_ca(capsys, other)
    config = tmp_path / "certgate.toml"
    config.write_text(
        '[[tenants]]\nid = "acme"\nhosts = ["pay.acme.test"]\nroots = ["ca.pem"]\n'
        '[[tenants]]\nid = "globex"\nhosts = ["api.globex.test"]\nroots = ["other/ca.pem"]\n'
    )
    gate = CertGate.from_toml(config)
    ders = pem_to_ders((tmp_path / "device_42.pem").read_text())
    allowed = gate.check("pay.acme.test", ders)
    assert allowed.allowed
    assert allowed.identity is not None
    assert allowed.identity.spiffe_id == "spiffe://acme.test/device/42"
    assert allowed.identity.common_name == "device 42"
    refused = gate.check("api.globex.test", ders)
    assert not refused.allowed
    assert refused.reason == "untrusted_chain"


def test_client_validity_never_outlives_the_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_ca(capsys, tmp_path, "--days", "5")
    code, _, err = issue(capsys, tmp_path, "--cn", "long", "--days", "365")
    assert code == 0, err
    assert (
        load(tmp_path / "long.pem").not_valid_after_utc
        <= load(tmp_path / "ca.pem").not_valid_after_utc
    )


def test_pkcs12_bundle_opens_with_its_passphrase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_ca(capsys, tmp_path)
    (tmp_path / "pass").write_text("correct horse\n")
    code, _, err = issue(
        capsys, tmp_path, "--cn", "browser", "--p12-passphrase-file", str(tmp_path / "pass")
    )
    assert code == 0, err
    data = (tmp_path / "browser.p12").read_bytes()
    key, cert, _ = pkcs12.load_key_and_certificates(data, b"correct horse")
    assert cert == load(tmp_path / "browser.pem")
    assert key is not None
    with pytest.raises(ValueError, match="Invalid password"):
        pkcs12.load_key_and_certificates(data, b"wrong")
    assert stat.S_IMODE((tmp_path / "browser.p12").stat().st_mode) == 0o600


def test_encrypted_ca_key_needs_its_passphrase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pass").write_text("ca secret\n")
    init_ca(capsys, tmp_path, "--key-passphrase-file", str(tmp_path / "pass"))
    assert b"ENCRYPTED" in (tmp_path / "ca.key").read_bytes()
    code, _, err = issue(capsys, tmp_path, "--cn", "nopass")
    assert code == 2
    assert "cannot load the private key" in err
    code, _, err = issue(
        capsys, tmp_path, "--cn", "withpass", "--ca-key-passphrase-file", str(tmp_path / "pass")
    )
    assert code == 0, err


def test_a_leaf_cannot_act_as_a_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_ca(capsys, tmp_path)
    assert issue(capsys, tmp_path, "--cn", "leaf")[0] == 0
    code, _, err = run(
        capsys,
        "pki",
        "issue-client",
        "--ca-cert",
        str(tmp_path / "leaf.pem"),
        "--ca-key",
        str(tmp_path / "leaf.key"),
        "--cn",
        "x",
        "--out",
        str(tmp_path),
    )
    assert code == 2
    assert "not a CA" in err
    assert "CA:TRUE" in err
    assert not (tmp_path / "x.pem").exists()


def test_inspect_prints_identity_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_ca(capsys, tmp_path)
    issue(capsys, tmp_path, "--cn", "sensor", "--uri", "spiffe://t.test/s", "--ip", "192.0.2.7")
    code, out, _ = run(capsys, "inspect", str(tmp_path / "sensor.pem"), "--json")
    assert code == 0
    report = json.loads(out)
    cert = load(tmp_path / "sensor.pem")
    assert report["common_name"] == "sensor"
    assert report["spiffe_id"] == "spiffe://t.test/s"
    assert report["sans"]["ip"] == ["192.0.2.7"]
    assert report["serial"] == format(cert.serial_number, "x")
    assert report["extended_key_usage"] == ["clientAuth"]
    assert report["ca"] is False
    assert report["verified"] is False
    code, out, _ = run(capsys, "inspect", str(tmp_path / "sensor.pem"))
    assert code == 0
    assert "uri=spiffe://t.test/s" in out
    assert "verified:" in out


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_reference_flow_with_curl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """cfssl's steps with certgate: make a tenant CA, register it, issue a
    device certificate, and use it with curl --cert/--key against a real
    certgate-protected uvicorn server."""
    env: DevEnv = make_dev_environment(tmp_path / "dev")
    ca_dir = env.directory / "newtenant"
    init_ca(capsys, ca_dir)
    assert issue(capsys, ca_dir, "--cn", "kiosk-1")[0] == 0
    with env.config.open("a") as config:
        config.write('\n[[tenants]]\nid = "newtenant"\nhosts = ["localhost"]\n')
        config.write('roots = ["newtenant/ca.pem"]\n')
    with env.bundle.open("ab") as bundle:
        bundle.write((ca_dir / "ca.pem").read_bytes())
    port = free_port()
    with serve(uvicorn_cmd(env, port), env, port):
        base = ["curl", "-s", "--cacert", str(env.server_ca)]
        for host in ("localhost", "pay.acme.test"):
            base += ["--resolve", f"{host}:{port}:127.0.0.1"]
        device = ["--cert", str(ca_dir / "kiosk-1.pem"), "--key", str(ca_dir / "kiosk-1.key")]
        ok = subprocess.run(
            [*base, *device, f"https://localhost:{port}/whoami"],
            capture_output=True,
            check=True,
            timeout=30,
        )
        assert json.loads(ok.stdout)["tenant_id"] == "newtenant"
        other = subprocess.run(
            [*base, *device, "-o", "/dev/null", "-w", "%{http_code}",
             f"https://pay.acme.test:{port}/whoami"],
            capture_output=True,
            check=True,
            timeout=30,
        )  # fmt: skip
        assert other.stdout == b"403"


def revoke_args(ca_dir: Path, *extra: str) -> list[str]:
    return [
        "--ca-cert",
        str(ca_dir / "ca.pem"),
        "--ca-key",
        str(ca_dir / "ca.key"),
        "--db",
        str(ca_dir / "revoked.json"),
        *extra,
    ]


def test_revoke_records_and_crl_signs_with_increasing_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_ca(capsys, tmp_path)
    assert issue(capsys, tmp_path, "--cn", "lost")[0] == 0
    lost = load(tmp_path / "lost.pem")
    code, out, err = run(
        capsys,
        "pki",
        "revoke",
        *revoke_args(tmp_path, "--cert", str(tmp_path / "lost.pem"), "--reason", "keyCompromise"),
    )
    assert code == 0, err
    db = json.loads((tmp_path / "revoked.json").read_text())
    [entry] = db["revoked"]
    assert entry["serial"] == format(lost.serial_number, "x")
    assert entry["reason"] == "keyCompromise"
    assert entry["revoked_at"]
    # twice: not an error, not a second entry
    code, out, _ = run(
        capsys, "pki", "revoke", *revoke_args(tmp_path, "--cert", str(tmp_path / "lost.pem"))
    )
    assert code == 0
    assert "already revoked" in out
    ca = load(tmp_path / "ca.pem")
    numbers = []
    for der in (False, True):
        crl_path = tmp_path / ("ca.der.crl" if der else "ca.crl")
        extra = ["--out", str(crl_path), "--days", "3", *(["--der"] if der else [])]
        code, _, err = run(capsys, "pki", "crl", *revoke_args(tmp_path, *extra))
        assert code == 0, err
        data = crl_path.read_bytes()
        crl = x509.load_der_x509_crl(data) if der else x509.load_pem_x509_crl(data)
        assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
        numbers.append(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest
        revoked = crl.get_revoked_certificate_by_serial_number(lost.serial_number)
        assert revoked is not None
        reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert reason == x509.ReasonFlags.key_compromise
        assert crl.next_update_utc is not None
        lifetime = crl.next_update_utc - crl.last_update_utc
        assert 3 * 86400 <= lifetime.total_seconds() <= 3 * 86400 + 120
    assert numbers == [1, 2]


def test_revoke_refuses_a_certificate_of_another_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_ca(capsys, tmp_path)
    other = tmp_path / "other"
    init_ca(capsys, other)
    assert issue(capsys, other, "--cn", "stranger")[0] == 0
    code, _, err = run(
        capsys, "pki", "revoke", *revoke_args(tmp_path, "--cert", str(other / "stranger.pem"))
    )
    assert code == 2
    assert "not issued by this CA" in err
    assert not (tmp_path / "revoked.json").exists()
    # a database of one CA is not used for another
    run(capsys, "pki", "revoke", *revoke_args(tmp_path, "--serial", "0x1234"))
    code, _, err = run(
        capsys,
        "pki",
        "crl",
        "--ca-cert", str(other / "ca.pem"), "--ca-key", str(other / "ca.key"),
        "--db", str(tmp_path / "revoked.json"), "--out", str(other / "ca.crl"),
    )  # fmt: skip
    assert code == 2
    assert "belongs to another CA" in err


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_reference_flow_revocation_with_curl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue two devices with `pki issue-client`, revoke one with `pki
    revoke`, make the CRL with `pki crl`, configure it on the tenant: through
    a real certgate-protected uvicorn server, curl --cert/--key gets 403
    revoked for the revoked device and 200 for the other."""
    env: DevEnv = make_dev_environment(tmp_path / "dev")
    ca_dir = env.directory / "newtenant"
    init_ca(capsys, ca_dir)
    for name in ("kiosk-1", "kiosk-2"):
        assert issue(capsys, ca_dir, "--cn", name)[0] == 0
    code, _, err = run(
        capsys,
        "pki",
        "revoke",
        *revoke_args(ca_dir, "--cert", str(ca_dir / "kiosk-1.pem"), "--reason", "keyCompromise"),
    )
    assert code == 0, err
    code, _, err = run(capsys, "pki", "crl", *revoke_args(ca_dir, "--out", str(ca_dir / "ca.crl")))
    assert code == 0, err
    with env.config.open("a") as config:
        config.write('\n[[tenants]]\nid = "newtenant"\nhosts = ["localhost"]\n')
        config.write('roots = ["newtenant/ca.pem"]\ncrls = ["newtenant/ca.crl"]\n')
    with env.bundle.open("ab") as bundle:
        bundle.write((ca_dir / "ca.pem").read_bytes())
    port = free_port()
    with serve(uvicorn_cmd(env, port), env, port):
        base = ["curl", "-s", "--cacert", str(env.server_ca)]
        base += ["--resolve", f"localhost:{port}:127.0.0.1", "-D", "-"]
        url = f"https://localhost:{port}/whoami"

        def curl(name: str) -> str:
            device = ["--cert", str(ca_dir / f"{name}.pem"), "--key", str(ca_dir / f"{name}.key")]
            done = subprocess.run(
                [*base, *device, url], capture_output=True, check=True, timeout=30
            )
            return done.stdout.decode()

        refused = curl("kiosk-1")
        assert refused.startswith("HTTP/1.1 403"), refused
        assert "certgate-reason: revoked" in refused.lower()
        assert '"reason":"revoked"' in refused.replace(" ", "")
        allowed = curl("kiosk-2")
        assert allowed.startswith("HTTP/1.1 200"), allowed
        assert '"tenant_id":"newtenant"' in allowed.replace(" ", "")
