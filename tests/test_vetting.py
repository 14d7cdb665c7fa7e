"""CA vetting (certgate.vetting): every kind of bad tenant root or
intermediate is refused when it is registered - by the Python API, the TOML
file and the CLI - with the tenant, the certificate, the rule and the fix."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from certgate import CertGate, ConfigError, InMemoryRegistry, Tenant, load_config
from certgate.cli import main
from certgate.devpki import CA, PrivateKey
from certgate.pki import make_crl
from certgate.verifier import client_ee_policy
from certgate.vetting import (
    RULES,
    SIGNATURE_ALGORITHMS,
    CaVettingError,
    Finding,
    quiet,
    vet_cas,
)

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def days(n: float) -> dt.datetime:
    return NOW + dt.timedelta(days=n)


# -- making bad CAs ----------------------------------------------------------

_SHA256_WITH_RSA = bytes.fromhex("06092a864886f70d01010b")
_LEGACY_RSA = {
    "sha1": (bytes.fromhex("06092a864886f70d010105"), hashes.SHA1()),
    "md5": (bytes.fromhex("06092a864886f70d010104"), hashes.MD5()),
}


def resign(cert: x509.Certificate, key: PrivateKey, legacy: str) -> x509.Certificate:
    """``cert`` (signed with sha256WithRSAEncryption) re-signed by the RSA
    ``key`` with SHA-1 or MD5: cryptography refuses to sign with either, so
    both AlgorithmIdentifiers are switched to the same-length legacy OID and
    the new TBS is signed with PKCS#1 v1.5 over that hash."""
    oid, digest = _LEGACY_RSA[legacy]
    der = cert.public_bytes(Encoding.DER)
    assert der.count(_SHA256_WITH_RSA) == 2
    rewritten = der.replace(_SHA256_WITH_RSA, oid)
    tbs = x509.load_der_x509_certificate(rewritten).tbs_certificate_bytes
    assert isinstance(key, rsa.RSAPrivateKey)
    signature = key.sign(tbs, padding.PKCS1v15(), digest)
    assert len(signature) == key.key_size // 8
    return x509.load_der_x509_certificate(rewritten[: -len(signature)] + signature)


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def ca_cert(
    subject: str,
    key: PrivateKey,
    *,
    issuer: tuple[str, PrivateKey] | None = None,
    bc_critical: bool = True,
    key_usage: bool = True,
    eku: list[x509.ObjectIdentifier] | None = None,
    digest: hashes.HashAlgorithm | None = None,
    pss: padding.PSS | None = None,
) -> x509.Certificate:
    """A CA certificate of ``key``, self-signed unless ``issuer`` is given."""
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(days(-1))
        .not_valid_after(days(365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=bc_critical)
    )
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if pss is not None:
        return builder.sign(issuer_key, digest or hashes.SHA256(), rsa_padding=pss)  # type: ignore[arg-type]
    return builder.sign(issuer_key, digest or hashes.SHA256())  # type: ignore[arg-type]


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@pytest.fixture(scope="module")
def root() -> CA:
    return CA.root("Vet Root", organization="Vet")


@pytest.fixture(scope="module")
def rsa_root() -> CA:
    return CA.root("Vet RSA Root", organization="Vet", key_type="rsa")


def refused(
    roots: tuple[x509.Certificate, ...],
    intermediates: tuple[x509.Certificate, ...] = (),
    **kwargs: object,
) -> CaVettingError:
    with pytest.raises(CaVettingError) as info:
        Tenant("vet", ("vet.test",), roots, intermediates, **kwargs)  # type: ignore[arg-type]
    return info.value


def rules(error: CaVettingError) -> list[str]:
    return [f.rule for f in error.findings if f.level == "error"]


# -- each rule, through the Python API -----------------------------------------


def test_a_good_tenant_has_no_finding(root: CA) -> None:
    issuing = root.intermediate("Vet Issuing")
    assert vet_cas("vet", (root.cert,), (issuing.cert,)) == []
    tenant = Tenant("vet", ("vet.test",), (root.cert,), (issuing.cert,))
    assert tenant.ca_warnings == ()


def test_not_a_ca_is_refused() -> None:
    error = refused((CA.root("Leafy", ca=False).cert,))
    assert rules(error) == ["basic-constraints"]
    message = str(error)
    assert message.startswith("tenant 'vet': root 'CN=Leafy,O=certgate dev' (SHA-256 ")
    assert "is not a CA certificate (Basic Constraints cA=FALSE" in message
    assert "[rule basic-constraints]. Fix: register the CA" in message


def test_non_critical_basic_constraints_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    error = refused((ca_cert("Soft BC", key, bc_critical=False),))
    assert rules(error) == ["basic-constraints"]
    assert "non-critical Basic Constraints" in str(error)


def test_key_usage_without_key_cert_sign_is_refused() -> None:
    error = refused((CA.root("No Sign", key_cert_sign=False).cert,))
    assert rules(error) == ["key-usage"]
    assert "Key Usage without keyCertSign" in str(error)


def test_a_ca_without_key_usage_is_refused(root: CA) -> None:
    """RFC 5280 allows it, but cryptography's verifier (webpki CA profile)
    refuses every path through such a CA - anchors included - so it is
    refused at load instead of failing every device."""
    inter = root.intermediate("No KU Issuing", key_usage=False)
    error = refused((root.cert,), (inter.cert,))
    assert rules(error) == ["key-usage"]
    assert "intermediate 'CN=No KU Issuing,O=certgate dev'" in str(error)
    assert "has no Key Usage" in str(error)
    key = ec.generate_private_key(ec.SECP256R1())
    assert rules(refused((ca_cert("No KU Root", key, key_usage=False),))) == ["key-usage"]


def test_the_verifier_refuses_a_root_without_key_usage() -> None:
    """Why the rule above exists (fails if a cryptography release changes it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    anchor = ca_cert("No KU Anchor", key, key_usage=False)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("device"))
        .issuer_name(anchor.subject)
        .public_key(leaf_key.public_key())
        .serial_number(1)
        .not_valid_before(days(-1))
        .not_valid_after(days(10))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("device.test")]), False)
        .sign(key, hashes.SHA256())
    )
    verifier = PolicyBuilder().store(Store([anchor])).time(NOW).build_client_verifier()
    with pytest.raises(VerificationError, match="keyUsage"):
        verifier.verify(leaf, [])


def test_extended_key_usage_without_client_auth_is_refused(root: CA) -> None:
    server_only = root.intermediate(
        "Server Issuing",
        extra_extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)],
    )
    error = refused((root.cert,), (server_only.cert,))
    assert rules(error) == ["extended-key-usage"]
    client_only = root.intermediate(
        "Client Issuing",
        extra_extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
    )
    Tenant("vet", ("vet.test",), (root.cert,), (client_only.cert,))  # control


def test_md5_signed_intermediate_is_refused(rsa_root: CA) -> None:
    inter = rsa_root.intermediate("MD5 Issuing")
    md5 = resign(inter.cert, rsa_root.key, "md5")
    error = refused((rsa_root.cert,), (md5,))
    assert rules(error) == ["signature-algorithm"]
    assert "signed with md5WithRSAEncryption, which is not on the allow-list" in str(error)
    assert "Fix: re-issue it signed with SHA-256" in str(error)


def test_sha1_signed_intermediate_is_refused(rsa_root: CA) -> None:
    sha1 = resign(rsa_root.intermediate("SHA1 Issuing").cert, rsa_root.key, "sha1")
    error = refused((rsa_root.cert,), (sha1,))
    assert rules(error) == ["signature-algorithm"]
    assert "SHA-1 is accepted only on a self-signed root" in str(error)


def test_sha1_self_signed_root_loads_with_one_warning(
    rsa_root: CA, caplog: pytest.LogCaptureFixture
) -> None:
    sha1_root = resign(rsa_root.cert, rsa_root.key, "sha1")
    with caplog.at_level(logging.WARNING, logger="certgate"):
        tenant = Tenant("vet", ("vet.test",), (sha1_root,))
    assert [f.rule for f in tenant.ca_warnings] == ["sha1-root"]
    records = [r for r in caplog.records if "sha1-root" in r.getMessage()]
    assert len(records) == 1
    assert records[0].certgate["rule"] == "sha1-root"  # type: ignore[attr-defined]
    assert "self-signed root signed with sha1WithRSAEncryption" in records[0].getMessage()
    # a device under it (SHA-256 below the root) verifies: the root's own
    # signature is never checked
    device = rsa_root.issue("device")
    gate = CertGate(InMemoryRegistry([tenant]))
    assert gate.check("vet.test", [device.der]).allowed


def test_sha1_on_a_root_that_is_not_self_signed_is_refused(rsa_root: CA) -> None:
    """An issuing CA registered as a tenant's anchor: SHA-1 is refused."""
    issuing = rsa_root.intermediate("Anchored Issuing", key_type="rsa")
    sha1 = resign(issuing.cert, rsa_root.key, "sha1")
    assert rules(refused((sha1,))) == ["signature-algorithm"]


def test_rsa_pss_with_the_verifiers_parameters_only() -> None:
    key = rsa_key()
    good = ca_cert(
        "PSS Root",
        key,
        pss=padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH),
    )
    assert good.signature_algorithm_oid in SIGNATURE_ALGORITHMS
    Tenant("vet", ("vet.test",), (good,))
    bad = ca_cert(
        "PSS Max Salt Root",
        key,
        pss=padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH),
    )
    error = refused((bad,))
    assert rules(error) == ["signature-algorithm"]
    assert "32-byte salt" in str(error)


def test_sha224_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    error = refused((ca_cert("SHA224 Root", key, digest=hashes.SHA224()),))
    assert rules(error) == ["signature-algorithm"]
    assert "ecdsa-with-SHA224" in str(error)


def test_rsa_1024_is_refused() -> None:
    error = refused((CA.root("Small RSA", key_type="rsa", rsa_bits=1024).cert,))
    assert rules(error) == ["key"]
    assert "has a 1024-bit RSA key (at least 2048)" in str(error)


@pytest.mark.parametrize("curve", [ec.SECP256K1(), ec.SECP224R1()])
def test_an_unsupported_curve_is_refused(curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve)
    error = refused((ca_cert("Odd Curve", key),))
    assert rules(error) == ["key"]
    assert f"EC key on {curve.name} (allowed: P-256, P-384, P-521)" in str(error)


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()])
def test_the_nist_curves_are_accepted(curve: ec.EllipticCurve) -> None:
    Tenant("vet", ("vet.test",), (ca_cert("NIST", ec.generate_private_key(curve)),))


def test_an_ed25519_ca_is_refused_as_the_verifier_refuses_it() -> None:
    ed = CA.root("Ed Root", key_type="ed25519")
    error = refused((ed.cert,))
    assert rules(error) == ["signature-algorithm", "key"]
    assert "is signed with ed25519, which is not on the allow-list" in str(error)
    assert "(and 1 more CA problem in this tenant)" in str(error)
    key_problem = error.findings[1].text()
    assert "Ed25519 key (cryptography's verifier does not accept Ed25519 issuers)" in key_problem
    # the reason: fails when a cryptography release starts accepting Ed25519
    # issuers (then widen the allow-list)
    device = ed.issue("device")
    verifier = (
        PolicyBuilder()
        .store(Store([ed.cert]))
        .time(NOW)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=client_ee_policy()
        )
        .build_client_verifier()
    )
    with pytest.raises(VerificationError, match="Forbidden public key algorithm"):
        verifier.verify(device.cert, [])


def test_expired_and_not_yet_valid_cas_are_refused(root: CA) -> None:
    old = CA.root("Old Root", not_before=days(-400), not_after=days(-2))
    error = refused((old.cert,))
    assert rules(error) == ["validity"]
    assert f"expired on {old.cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC" in str(error)
    assert 'set ca_expired = "warn" on it' in str(error)
    future = root.intermediate("Future Issuing", not_before=days(2), not_after=days(400))
    error = refused((root.cert,), (future.cert,))
    assert rules(error) == ["validity"]
    assert "is not valid before" in str(error)


def test_ca_expired_warn_loads_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    old = CA.root("Lapsed Root", not_before=days(-400), not_after=days(-2))
    with caplog.at_level(logging.WARNING, logger="certgate"):
        tenant = Tenant("vet", ("vet.test",), (old.cert,), ca_expired="warn")
    assert [(f.level, f.rule) for f in tenant.ca_warnings] == [("warning", "validity")]
    assert "ca_expired" not in tenant.ca_warnings[0].fix  # already set
    assert sum("[rule validity]" in r.getMessage() for r in caplog.records) == 1
    # still refused on a request: the verifier checks every date
    gate = CertGate(InMemoryRegistry([tenant]))
    device = old.issue("d", not_before=days(-300), not_after=days(-100))
    assert gate.check("vet.test", [device.der]).reason == "expired"
    with pytest.raises(ConfigError, match='ca_expired must be "fail" or "warn"'):
        Tenant("vet", ("vet.test",), (old.cert,), ca_expired="ignore")


def test_an_intermediate_must_chain_to_the_tenants_roots(root: CA) -> None:
    stranger = CA.root("Stranger Root").intermediate("Stranger Issuing")
    error = refused((root.cert,), (stranger.cert,))
    assert rules(error) == ["chain"]
    assert "does not chain to any of the tenant's roots" in str(error)
    assert "no root or intermediate of the tenant is its issuer 'CN=Stranger Root" in str(error)
    # the same issuer name, another key: named, but not signed by it
    impostor = CA.root("Vet Root", organization="Vet")
    error = refused((impostor.cert,), (root.intermediate("Real Issuing").cert,))
    assert rules(error) == ["chain"]
    assert "is named 'CN=Vet Root,O=Vet' but none of its keys signed it" in str(error)


def test_an_intermediate_may_chain_through_another_in_any_order(root: CA) -> None:
    upper = root.intermediate("Upper Issuing", path_length=1)
    lower = upper.intermediate("Lower Issuing")
    tenant = Tenant("vet", ("vet.test",), (root.cert,), (lower.cert, upper.cert))
    gate = CertGate(InMemoryRegistry([tenant]))
    assert gate.check("vet.test", [lower.issue("d").der]).allowed
    assert rules(refused((root.cert,), (lower.cert,))) == ["chain"]


def test_every_problem_of_a_tenant_is_in_the_findings(root: CA) -> None:
    small = CA.root("Small", key_type="rsa", rsa_bits=1024, key_cert_sign=False)
    stranger = CA.root("Other").intermediate("Other Issuing")
    error = refused((small.cert,), (stranger.cert,))
    assert rules(error) == ["key-usage", "key", "chain"]
    assert str(error).endswith("(and 2 more CA problems in this tenant)")
    assert all(isinstance(f, Finding) and f.rule in RULES for f in error.findings)


def test_from_pem_and_put_are_vetted(root: CA) -> None:
    old = CA.root("Put Root", not_before=days(-400), not_after=days(-2))
    with pytest.raises(CaVettingError, match=r"\[rule validity\]"):
        Tenant.from_pem("vet", ["vet.test"], roots=old.cert_pem.decode())
    tenant = Tenant.from_pem("vet", ["vet.test"], roots=old.cert_pem, ca_expired="warn")
    registry = InMemoryRegistry()
    registry.put(tenant)
    assert registry.tenant_by_id("vet") is tenant


def test_a_tenant_rebuilt_for_a_fetched_crl_does_not_log_again(
    rsa_root: CA, caplog: pytest.LogCaptureFixture
) -> None:
    sha1_root = resign(rsa_root.cert, rsa_root.key, "sha1")
    url = "https://crl.vet.test/root.crl"
    with caplog.at_level(logging.WARNING, logger="certgate"):
        tenant = Tenant("vet", ("vet.test",), (sha1_root,), crl_urls=(url,))
        crl = make_crl(rsa_root, {"revoked": [], "crl_number": 0})
        again = tenant.with_fetched_crls([(url, crl)])
        with quiet():
            Tenant("vet", ("vet.test",), (sha1_root,))
    assert again.ca_warnings == tenant.ca_warnings
    assert sum("sha1-root" in r.getMessage() for r in caplog.records) == 1


# -- the TOML file -------------------------------------------------------------


Certs = list[CA | x509.Certificate]


def write_config(tmp_path: Path, tenants: dict[str, tuple[Certs, str]]) -> Path:
    """One [[tenants]] table per item: its certificates (first the root,
    then intermediates) in files, and extra TOML lines."""
    text = "# vetting test\n"
    for tenant_id, (certs, extra) in tenants.items():
        files = []
        for position, item in enumerate(certs):
            cert = item.cert if isinstance(item, CA) else item
            file = tmp_path / f"{tenant_id}-{position}.pem"
            file.write_bytes(cert.public_bytes(Encoding.PEM))
            files.append(file.name)
        intermediates = f"intermediates = {files[1:]!r}\n".replace("'", '"') if files[1:] else ""
        text += (
            f'\n[[tenants]]\nid = "{tenant_id}"\nhosts = ["{tenant_id}.test"]\n'
            f'roots = ["{files[0]}"]\n{intermediates}{extra}'
        )
    path = tmp_path / "certgate.toml"
    path.write_text(text)
    return path


def test_the_toml_error_names_the_config_the_file_and_the_rule(tmp_path: Path) -> None:
    old = CA.root("Toml Old", not_before=days(-400), not_after=days(-2))
    path = write_config(tmp_path, {"acme": ([old], "")})
    with pytest.raises(CaVettingError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: tenant 'acme': root 'CN=Toml Old,O=certgate dev'")
    assert f"file '{tmp_path / 'acme-0.pem'}'" in message
    assert "[rule validity]" in message
    # the setting
    path = write_config(tmp_path, {"acme": ([old], 'ca_expired = "warn"\n')})
    assert load_config(path).registry.tenant_by_id("acme") is not None
    path = write_config(tmp_path, {"acme": ([old], "ca_expired = true\n")})
    with pytest.raises(ConfigError, match="'ca_expired' must be"):
        load_config(path)


@pytest.mark.parametrize(
    ("make", "rule"),
    [
        (lambda r: [CA.root("T Leaf", ca=False)], "basic-constraints"),
        (lambda r: [CA.root("T NoSign", key_cert_sign=False)], "key-usage"),
        (lambda r: [r, resign(r.intermediate("T MD5").cert, r.key, "md5")], "signature-algorithm"),
        (
            lambda r: [r, resign(r.intermediate("T SHA1").cert, r.key, "sha1")],
            "signature-algorithm",
        ),
        (lambda r: [CA.root("T RSA1024", key_type="rsa", rsa_bits=1024)], "key"),
        (lambda r: [ca_cert("T k1", ec.generate_private_key(ec.SECP256K1()))], "key"),
        (lambda r: [r, CA.root("T Other").intermediate("T Stray")], "chain"),
        (
            lambda r: [r, r.intermediate("T Soon", not_before=days(1), not_after=days(9))],
            "validity",
        ),
    ],
)
def test_each_bad_ca_is_refused_in_toml(
    tmp_path: Path, rsa_root: CA, make: Callable[[CA], Certs], rule: str
) -> None:
    path = write_config(tmp_path, {"acme": (make(rsa_root), "")})
    with pytest.raises(CaVettingError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: tenant 'acme': ")
    assert f"[rule {rule}]. Fix: " in str(info.value)
    assert tmp_path.name in str(info.value).split("[rule")[0]  # the PEM file is named


# -- the CLI -----------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_config_check_lists_every_tenants_findings(
    tmp_path: Path, rsa_root: CA, capsys: pytest.CaptureFixture[str]
) -> None:
    sha1_root = resign(rsa_root.cert, rsa_root.key, "sha1")
    path = write_config(
        tmp_path,
        {
            "old": ([CA.root("C Old", not_before=days(-400), not_after=days(-1))], ""),
            "small": ([CA.root("C Small", key_type="rsa", rsa_bits=1024)], ""),
            "legacy": ([sha1_root], ""),
            "fine": ([CA.root("C Fine")], ""),
            "broken": ([CA.root("C Broken")], "colour = 1\n"),
        },
    )
    code, out, err = run(capsys, "config", "check", str(path))
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"error: {path}: tenant 'old': root 'CN=C Old")
    assert "[rule validity]" in lines[0]
    assert lines[1].startswith(f"error: {path}: tenant 'small': root 'CN=C Small")
    assert "[rule key]" in lines[1]
    assert lines[2].startswith(f"warning: {path}: tenant 'legacy': ")
    assert "[rule sha1-root]" in lines[2]
    assert lines[3] == f"error: {path}: tenant #5: unknown key(s) ['colour']"
    assert lines[4] == f"certgate: configuration error: {path}: 3 error(s) in [[tenants]]"
    assert len(lines) == 5


def test_config_check_shows_vetting_warnings_and_strict_fails(
    tmp_path: Path, rsa_root: CA, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, {"legacy": ([resign(rsa_root.cert, rsa_root.key, "sha1")], "")})
    code, out, _ = run(capsys, "config", "check", str(path))
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "[rule sha1-root]" in warnings[0]
    assert run(capsys, "config", "check", "--strict", str(path))[0] == 1


def test_tenants_add_refuses_a_bad_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, {"acme": ([CA.root("A Root")], "")})
    before = path.read_bytes()
    (tmp_path / "small.pem").write_bytes(CA.root("Tiny", key_type="rsa", rsa_bits=1024).cert_pem)
    code, out, err = run(
        capsys,
        "tenants", "add", "globex", "--config", str(path),
        "--host", "globex.test", "--root", str(tmp_path / "small.pem"),
    )  # fmt: skip
    assert code == 2
    assert out == ""
    assert "tenant 'globex': root 'CN=Tiny" in err
    assert "[rule key]" in err
    assert str(path) in err
    assert path.read_bytes() == before


def test_a_ca_whose_extensions_do_not_parse_is_refused_not_raised() -> None:
    """SubjectKeyIdentifier's OID switched to KeyUsage's: a duplicate
    extension (cryptography's DuplicateExtension, not a ValueError) becomes
    a finding of rule ``parse``, not an exception escaping the load."""
    der = CA.root("Dup Ext Root").cert.public_bytes(Encoding.DER)
    ski, ku = bytes.fromhex("0603551d0e"), bytes.fromhex("0603551d0f")
    assert der.count(ski) == 1
    mutated = x509.load_der_x509_certificate(der.replace(ski, ku))
    error = refused((mutated,))
    assert rules(error)[0] == "parse"
    assert "has extensions that do not parse" in str(error)
