"""Review i9-rv5 (CA vetting and ``certgate tenants``): each finding as a
test that failed before its fix.

- a CA that expired after its tenant loaded stopped every later CRL of the
  tenant from applying (the rebuilt tenant was vetted with today's dates);
- a CA with a critical extension the verifier refuses on a CA (unknown,
  Certificate Policies, ...) passed vetting, then no chain verified;
- an EC CA key given by explicit curve parameters (or an RSA-PSS-only key)
  passed vetting, then the verifier refused it as an issuer;
- many same-named intermediates made the chain rule take minutes.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from certgate import CertGate, ConfigError, InMemoryRegistry, Tenant, load_config, vetting
from certgate.cli import main
from certgate.crlfetch import CrlRefresher
from certgate.devpki import CA, PrivateKey
from certgate.verifier import client_ee_policy
from certgate.vetting import CaVettingError, chain_check_budget, vet_cas

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def ca_cert(
    subject: str,
    key: PrivateKey,
    *,
    issuer: tuple[str, PrivateKey] | None = None,
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
    )
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def device_of(anchor: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    device_key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(name("device"))
        .issuer_name(anchor.subject)
        .public_key(device_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("device.test")]), False)
        .sign(key, hashes.SHA256())
    )


def verifier_outcome(anchor: x509.Certificate, device: x509.Certificate) -> str:
    """What cryptography's verifier, with certgate's policies, says."""
    verifier = (
        PolicyBuilder()
        .store(Store([anchor]))
        .time(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=client_ee_policy()
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(device, [])
    except VerificationError as exc:
        return f"refused: {exc}"
    return "verified"


def error_rules(roots: list[x509.Certificate], inters: list[x509.Certificate] = []) -> list[str]:  # noqa: B006
    return [f.rule for f in vet_cas("t", roots, inters) if f.level == "error"]


# -- finding 1: a CA expiring after the load froze the tenant's CRLs ------------


def build_crl(ca: CA, revoked: list[int], number: int) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(NOW - dt.timedelta(minutes=5))
        .next_update(NOW + dt.timedelta(days=7))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - dt.timedelta(minutes=1))
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(Encoding.DER)


def test_crls_keep_applying_after_one_of_the_tenants_cas_expired() -> None:
    """A rotation: the old root expires while the server runs. Revocations
    published later under the new root must still apply (before: every
    later CRL was 'not applied', as the rebuilt tenant failed vetting on
    the old root's date - revocation frozen, then the tenant's CRL stale)."""
    new_root = CA.root("Rotation New Root")
    expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=2)
    old_root = CA.root("Rotation Old Root", not_after=expires)
    device = new_root.issue("device")
    url = "http://crl.invalid/new-root.crl"
    served = {url: build_crl(new_root, [], 1)}
    tenant = Tenant(
        "rotating",
        ("rot.test",),
        (new_root.cert, old_root.cert),
        crl_urls=(url,),
    )
    registry = InMemoryRegistry([tenant])
    refresher = CrlRefresher(registry, fetch=lambda u: served[u])
    assert refresher.refresh() == 1
    gate = CertGate(registry)
    assert gate.check("rot.test", [device.der]).allowed
    while dt.datetime.now(dt.UTC) <= expires:  # the old root is now expired
        time.sleep(0.1)
    served[url] = build_crl(new_root, [device.cert.serial_number], 2)
    assert refresher.refresh() == 1
    decision = gate.check("rot.test", [device.der])
    assert decision.reason is not None
    assert decision.reason.value == "revoked"


# -- finding 2: critical extensions the verifier refuses on a CA -----------------

_UNKNOWN = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")


def _policies() -> x509.ExtensionType:
    return x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier("1.2.3"), None)])


@pytest.mark.parametrize(
    "make",
    [
        lambda key: _UNKNOWN,
        lambda key: _policies(),
        lambda key: x509.PolicyConstraints(require_explicit_policy=0, inhibit_policy_mapping=None),
        lambda key: x509.InhibitAnyPolicy(0),
        lambda key: x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
        lambda key: x509.IssuerAlternativeName([x509.DNSName("ca.test")]),
    ],
    ids=["unknown", "policies", "policy-constraints", "inhibit-any", "ski", "ian"],
)
def test_a_critical_extension_the_verifier_refuses_is_refused_at_load(
    make: Callable[[ec.EllipticCurvePrivateKey], x509.ExtensionType],
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    root = ca_cert("Critical Root", key, extra=((make(key), True),))
    # why: the verifier refuses every device under it
    assert verifier_outcome(root, device_of(root, key)).startswith("refused")
    with pytest.raises(CaVettingError) as info:
        Tenant("crit", ("crit.test",), (root,))
    assert [f.rule for f in info.value.findings] == ["critical-extension"]
    assert "[rule critical-extension]" in str(info.value)
    # the same as an intermediate
    inter_key = ec.generate_private_key(ec.SECP256R1())
    good = ca_cert("Good Root", key)
    inter = ca_cert(
        "Critical Issuing", inter_key, issuer=("Good Root", key), extra=((make(inter_key), True),)
    )
    assert error_rules([good], [inter]) == ["critical-extension"]


@pytest.mark.parametrize(
    "extension",
    [
        x509.NameConstraints(permitted_subtrees=[x509.DNSName("test")], excluded_subtrees=None),
        x509.SubjectAlternativeName([x509.DNSName("ca.test")]),
    ],
    ids=["name-constraints", "san"],
)
def test_critical_extensions_the_verifier_accepts_still_pass(
    extension: x509.ExtensionType,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    root = ca_cert("Fine Root", key, extra=((extension, True),))
    assert verifier_outcome(root, device_of(root, key)) == "verified"
    assert error_rules([root]) == []


# -- finding 3: key encodings the verifier refuses -------------------------------


def _openssl(tmp_path: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)


@pytest.fixture
def openssl() -> None:
    if shutil.which("openssl") is None:  # pragma: no cover - Debian has it
        pytest.skip("needs the openssl command to write explicit EC parameters")


def _self_signed(tmp_path: Path, key_file: str, cert_file: str) -> x509.Certificate:
    _openssl(
        tmp_path, "req", "-x509", "-new", "-key", key_file, "-subj", "/CN=Odd Key Root",
        "-days", "30", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", cert_file,
    )  # fmt: skip
    return x509.load_pem_x509_certificate((tmp_path / cert_file).read_bytes())


@pytest.mark.usefixtures("openssl")
def test_an_ec_key_with_explicit_curve_parameters_is_refused(tmp_path: Path) -> None:
    _openssl(tmp_path, "ecparam", "-name", "prime256v1", "-param_enc", "explicit",
             "-genkey", "-out", "explicit.key")  # fmt: skip
    root = _self_signed(tmp_path, "explicit.key", "explicit.pem")
    # the same key, written with its curve's name, signs a device
    _openssl(
        tmp_path, "ec", "-in", "explicit.key", "-param_enc", "named_curve", "-out", "named.key"
    )
    key = serialization.load_pem_private_key((tmp_path / "named.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert "Forbidden public key algorithm" in verifier_outcome(root, device_of(root, key))
    with pytest.raises(CaVettingError, match="explicit curve parameters") as info:
        Tenant("odd", ("odd.test",), (root,))
    assert [f.rule for f in info.value.findings] == ["key"]


@pytest.mark.usefixtures("openssl")
def test_a_compressed_ec_point_is_accepted_as_the_verifier_accepts_it(tmp_path: Path) -> None:
    _openssl(tmp_path, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "k.key")
    _openssl(tmp_path, "ec", "-in", "k.key", "-conv_form", "compressed", "-out", "c.key")
    root = _self_signed(tmp_path, "c.key", "c.pem")
    key = serialization.load_pem_private_key((tmp_path / "k.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert verifier_outcome(root, device_of(root, key)) == "verified"
    assert error_rules([root]) == []


@pytest.mark.usefixtures("openssl")
def test_an_rsa_pss_only_key_is_refused(tmp_path: Path) -> None:
    _openssl(tmp_path, "genpkey", "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", "pss.key")  # fmt: skip
    root = _self_signed(tmp_path, "pss.key", "pss.pem")
    findings = vet_cas("t", [root])
    assert "key" in [f.rule for f in findings if f.level == "error"]
    assert any("RSA-PSS-only key" in f.problem for f in findings)


# -- finding 4: the chain rule's cost --------------------------------------------


def _same_named_chain(count: int) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """A root named X and ``count`` intermediates all named X, each issued
    by the one before, listed last first (each pass of the old loop
    anchored one, after a failed signature check against every other)."""
    key = ec.generate_private_key(ec.SECP256R1())
    root = ca_cert("X", key)
    chain, issuer_key = [], key
    for _ in range(count):
        child_key = ec.generate_private_key(ec.SECP256R1())
        chain.append(ca_cert("X", child_key, issuer=("X", issuer_key)))
        issuer_key = child_key
    chain.reverse()
    return root, chain


def test_many_same_named_intermediates_cost_a_bounded_number_of_checks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    real = vetting._issued_by

    def counting(child: x509.Certificate, issuer: x509.Certificate) -> bool:
        calls.append(1)
        return real(child, issuer)

    monkeypatch.setattr(vetting, "_issued_by", counting)
    monkeypatch.setattr(vetting, "_SIGNED", {})
    count = 60  # 60 such CAs took ~20 s before (checks grew with the cube)
    root, chain = _same_named_chain(count)
    findings = vet_cas("t", [root], chain)
    assert len(calls) <= count + chain_check_budget(count) + 1
    assert [f.rule for f in findings] == ["chain"]
    assert "share a name" in findings[0].problem
    # a chain given in any order, with distinct names, needs one check per CA
    calls.clear()
    key = ec.generate_private_key(ec.SECP256R1())
    top = ca_cert("Top", key)
    ordered, issuer = [], ("Top", key)
    for position in range(count):
        child_key = ec.generate_private_key(ec.SECP256R1())
        ordered.append(ca_cert(f"Level {position}", child_key, issuer=issuer))
        issuer = (f"Level {position}", child_key)
    assert vet_cas("t", [top], list(reversed(ordered))) == []
    assert len(calls) == count


def test_a_rotation_with_same_named_cas_still_chains() -> None:
    """Two generations of one PKI with the same names: each intermediate
    is tried against both roots; all chain."""
    old, new = CA.root("Acme Root"), CA.root("Acme Root")
    inters = [old.intermediate("Acme Issuing").cert, new.intermediate("Acme Issuing").cert]
    assert error_rules([old.cert, new.cert], inters) == []
    stranger = CA.root("Acme Root").intermediate("Acme Issuing").cert
    findings = vet_cas("t", [old.cert, new.cert], [*inters, stranger])
    assert [f.rule for f in findings] == ["chain"]
    assert (
        "named 'CN=Acme Root,O=certgate dev' but none of its keys signed it" in findings[0].problem
    )


# -- finding 5: a UTF-8 BOM gave "Invalid statement (at line 1, column 1)" -------


def test_a_config_with_a_bom_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An editor that saves a byte order mark: the file and the fix are
    named, by `tenants add` and by the loader alike (the file unchanged)."""
    root = CA.root("Bom Root")
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    config = tmp_path / "certgate.toml"
    text = '[[tenants]]\nid = "a"\nhosts = ["a.test"]\nroots = ["root.pem"]\n'
    config.write_bytes(b"\xef\xbb\xbf" + text.encode())
    code = main(["tenants", "add", "b", "--config", str(config), "--host", "b.test",
                 "--root", str(tmp_path / "root.pem")])  # fmt: skip
    assert code == 2
    assert "byte order mark (BOM); save it as UTF-8 without BOM" in capsys.readouterr().err
    assert config.read_bytes() == b"\xef\xbb\xbf" + text.encode()
    with pytest.raises(ConfigError, match="byte order mark"):
        load_config(config)
