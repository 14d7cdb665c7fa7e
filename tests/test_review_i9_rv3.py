"""Review i9-rv3 (issue 9, operator CLI, diagnostics and CRL revocation):
each finding of the adversarial review as a test, with real sockets, real
files and real certificates made at test time."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from certgate import CertGate, InMemoryRegistry, Tenant, pki
from certgate.cli import main
from certgate.crlfetch import fetch_url
from certgate.devpki import CA

# -- CRL download: the timeout bounds the whole download ---------------------


class TrickleServer:
    """An HTTP server that sends its response one byte at a time, each well
    within any socket timeout: ``headers_too`` trickles the status line and
    headers as well as the body."""

    def __init__(self, *, headers_too: bool) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.headers_too = headers_too
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.recv(65536)
            head = b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n"
            data = head if self.headers_too else b""
            if not self.headers_too:
                conn.sendall(head)
            data += b"x" * 100000
            try:
                for byte in data:
                    if self.stop.wait(0.05):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.fixture(params=[False, True], ids=["body", "headers"])
def trickle(request: pytest.FixtureRequest) -> Iterator[TrickleServer]:
    server = TrickleServer(headers_too=request.param)
    yield server
    server.close()


def test_crl_download_deadline_holds_against_a_trickling_server(trickle: TrickleServer) -> None:
    """README: "a download still running after 10 s is abandoned". Before
    the fix a server sending a byte every 50 ms held ``fetch_url`` (and with
    it the refresh thread of every tenant) for as long as it liked: the
    socket timeout bounds each read, and ``read(65536)`` loops until full."""
    outcome: list[BaseException | bytes] = []

    def fetch() -> None:
        try:
            outcome.append(fetch_url(f"http://127.0.0.1:{trickle.port}/ca.crl", timeout=1.0))
        except Exception as exc:  # noqa: BLE001 - the outcome is asserted below
            outcome.append(exc)

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(15)  # generous under load; the deadline is 1 s
    assert not worker.is_alive(), "the download was not cut off at its deadline"
    assert len(outcome) == 1
    assert isinstance(outcome[0], TimeoutError), outcome[0]


# -- pki: --force replaces an existing path, never writes through it --------


def make_ca_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    ca_dir = tmp_path / "ca"
    assert main(["pki", "init-ca", "--cn", "Review Root", "--out", str(ca_dir)]) == 0
    capsys.readouterr()
    return ca_dir


def issue_args(ca_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "pki",
        "issue-client",
        "--ca-cert",
        str(ca_dir / "ca.pem"),
        "--ca-key",
        str(ca_dir / "ca.key"),
        "--cn",
        "dev",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_force_replaces_a_planted_link_instead_of_writing_the_key_through_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], link: str
) -> None:
    """Someone who can write the output directory plants ``dev.key`` as a
    link to a file of their choosing (or a file they own): ``--force`` wrote
    the new private key *into that file* (O_TRUNC through the link) and
    chmod-ed it, so the key ended where the planter could read it."""
    ca_dir = make_ca_dir(tmp_path, capsys)
    out = tmp_path / "shared"
    out.mkdir()
    planted = tmp_path / "planted.txt"
    planted.write_bytes(b"the planter's file\n")
    planted.chmod(0o666)
    if link == "symlink":
        (out / "dev.key").symlink_to(planted)
    else:
        os.link(planted, out / "dev.key")
    assert main(issue_args(ca_dir, out, "--force")) == 0, capsys.readouterr().err
    assert planted.read_bytes() == b"the planter's file\n"
    assert stat.S_IMODE(planted.stat().st_mode) == 0o666
    key = out / "dev.key"
    assert not key.is_symlink()
    assert key.stat().st_nlink == 1
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes()


def test_without_force_a_planted_symlink_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir = make_ca_dir(tmp_path, capsys)
    out = tmp_path / "shared"
    out.mkdir()
    (out / "dev.key").symlink_to(tmp_path / "does-not-exist-yet")
    assert main(issue_args(ca_dir, out)) == 2
    assert "exists" in capsys.readouterr().err
    assert not (tmp_path / "does-not-exist-yet").exists()


# -- pki revoke / crl: concurrent runs do not lose a revocation --------------


def test_a_revocation_made_meanwhile_is_not_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two operators (or a script with ``xargs -P``) revoke at once: each
    run read the JSON database, added its entry and wrote the file back, so
    the later write silently dropped the earlier revocation - a device
    believed revoked stayed valid. Here a second ``certgate pki revoke``
    process runs while this one holds the database it read."""
    ca_dir = make_ca_dir(tmp_path, capsys)
    db = tmp_path / "revoked.json"
    ca_args = ["--ca-cert", str(ca_dir / "ca.pem"), "--ca-key", str(ca_dir / "ca.key")]
    original = pki.read_revocations
    other: list[subprocess.Popen[bytes]] = []

    def read_then_let_another_revoke(path: Path, ca: CA) -> dict[str, Any]:
        data = original(path, ca)
        if not other:
            command = [sys.executable, "-m", "certgate", "pki", "revoke", *ca_args]
            other.append(subprocess.Popen([*command, "--serial", "b0b", "--db", str(db)]))
            with contextlib.suppress(subprocess.TimeoutExpired):  # blocked on the lock: fine
                other[0].wait(4)
        return data

    monkeypatch.setattr(pki, "read_revocations", read_then_let_another_revoke)
    assert main(["pki", "revoke", *ca_args, "--serial", "a11ce", "--db", str(db)]) == 0
    assert other[0].wait(30) == 0
    serials = {entry["serial"] for entry in json.loads(db.read_text())["revoked"]}
    assert serials == {"a11ce", "b0b"}


# -- inspect: an odd certificate is described, not a traceback ---------------


def test_inspect_of_a_certificate_with_an_unknown_curve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate whose EC curve OID ``cryptography`` does not know made
    ``certgate inspect`` die with an UnsupportedAlgorithm traceback (exit 1,
    which for inspect means nothing) - yet an odd certificate from a device
    is exactly what an operator inspects."""
    der = CA.root("Odd Root").issue("odd-device").der
    p256 = bytes.fromhex("06082a8648ce3d030107")  # OID 1.2.840.10045.3.1.7
    assert der.count(p256) == 1
    path = tmp_path / "odd.der"
    path.write_bytes(der.replace(p256, bytes.fromhex("06082a8648ce3d030163")))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "common_name:         odd-device" in out
    assert "key:                 unsupported (" in out
    assert main(["inspect", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["key"].startswith("unsupported")


# -- a stale CRL is reported before requests fail on it ----------------------


def stale_crl_config(tmp_path: Path) -> Path:
    root = CA.root("Stale CRL Root")
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    db = pki.read_revocations(tmp_path / "revoked.json", root)
    crl = pki.make_crl(root, db, days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    pki.write_crl(tmp_path / "root.crl", crl)
    config = tmp_path / "certgate.toml"
    config.write_text(
        '[[tenants]]\nid = "acme"\nhosts = ["pay.acme.test"]\nroots = ["root.pem"]\n'
        'crls = ["root.crl"]\n'
    )
    return config


def test_config_check_warns_about_a_stale_crl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CRL past its nextUpdate loaded silently: ``config check --strict``
    said "valid" and exited 0, and then every request of the tenant was
    refused as ``revocation_unavailable``."""
    config = stale_crl_config(tmp_path)
    assert main(["config", "check", "--strict", str(config)]) == 1
    out = capsys.readouterr().out
    assert "warning: tenant 'acme': the CRL of CN=Stale CRL Root" in out
    assert "is stale" in out
    assert main(["config", "check", str(config)]) == 0


def test_expiry_lists_a_stale_crl_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 9 item 4: ``certgate expiry`` covers CRL nextUpdate too; it
    exited 0 ("all 1 tenant CAs have 30 days or more left") with a stale CRL."""
    config = stale_crl_config(tmp_path)
    assert main(["expiry", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("expired")
    assert " crl " in out
    assert "CN=Stale CRL Root" in out
    assert main(["expiry", "--config", str(config), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["late"] == 1
    assert [item["kind"] for item in report["items"]] == ["crl"]


def test_crls_have_their_own_day_thresholds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Decided: a CRL's nextUpdate is judged by ``crl_warning_days`` (3) and
    ``crl_critical_days`` (1), not by the CAs' 30/14 days - with those, every
    weekly CRL (``pki crl``'s default) would be "critical" all its life and
    ``expiry`` would always exit 1. A fresh weekly CRL passes; one with two
    days left warns (exit 1); the thresholds are options."""
    root = CA.root("Weekly CRL Root")
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    config = tmp_path / "certgate.toml"
    config.write_text(
        '[[tenants]]\nid = "acme"\nhosts = ["pay.acme.test"]\nroots = ["root.pem"]\n'
        'crls = ["root.crl"]\n'
    )
    db = pki.read_revocations(tmp_path / "db.json", root)
    pki.write_crl(tmp_path / "root.crl", pki.make_crl(root, db, days=7))
    assert main(["expiry", "--config", str(config)]) == 0
    capsys.readouterr()
    pki.write_crl(tmp_path / "root.crl", pki.make_crl(root, db, days=2))
    assert main(["expiry", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("warning"), out
    assert " crl " in out
    assert (
        main(
            [
                "expiry",
                "--config",
                str(config),
                "--crl-warning-days",
                "1.5",
                "--crl-critical-days",
                "1",
            ]
        )
        == 0
    )


# -- diagnostics: an issuer of the right name but another key ----------------


def test_an_issuer_with_the_tenants_name_but_another_key_is_explained() -> None:
    """A device certificate signed by a CA *re-created* under the tenant
    root's name (a new key, the same CN: a common operator mistake) got only
    "candidates exhausted: signature does not match": the walk by names
    found the tenant's root and stopped, though the key ids differ."""
    real = CA.root("Acme Devices Root")
    recreated = CA.root("Acme Devices Root")
    device = recreated.issue("sensor-17")
    gate = CertGate(InMemoryRegistry([Tenant("acme", ("pay.acme.test",), (real.cert,))]))
    decision = gate.check("pay.acme.test", [device.der])
    assert decision.reason is not None
    assert decision.reason.value == "untrusted_chain"
    detail = decision.detail or ""
    wanted = recreated.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    have = real.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert f"key id {wanted.value.digest.hex()}" in detail, detail
    assert have.value.digest.hex() in detail
    assert "another key" in detail


# -- pki crl: a CRL no tenant would accept is not written --------------------


def test_pki_crl_refuses_a_ca_without_crl_sign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``pki crl`` with a CA whose Key Usage lacks cRLSign (one made
    elsewhere) wrote a CRL and said "wrote": every tenant then refused to
    load it. It now says why, and writes nothing."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "No cRLSign Root")])
    now = dt.datetime.now(dt.UTC)
    usage = x509.KeyUsage(True, False, False, False, False, True, False, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=100))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "ca.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    (tmp_path / "ca.key").write_bytes(
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    crl = tmp_path / "ca.crl"
    args = ["--ca-cert", str(tmp_path / "ca.pem"), "--ca-key", str(tmp_path / "ca.key")]
    code = main(["pki", "crl", *args, "--db", str(tmp_path / "db.json"), "--out", str(crl)])
    assert code == 2
    assert "cRLSign" in capsys.readouterr().err
    assert not crl.exists()
