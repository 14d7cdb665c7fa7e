"""Every case of the verifier brief's table, as certgate decides it.

The brief (``cryptography.x509.verification`` for client certificates) lists
what cryptography's default client policy does; certgate deliberately differs
in a few places (SAN and AKI optional, leaf key sizes enforced, CA vetting,
failures classified into a :class:`Reason`). Each test asserts the exact
reason certgate gives.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from certgate import (
    CertGate,
    ConfigError,
    Decision,
    InMemoryRegistry,
    Reason,
    Rejected,
    RequestFacts,
    SubjectAltNames,
    Tenant,
)
from certgate.devpki import CA, IssuedCert
from certgate.sources.asgi_tls import from_scope
from certgate.verifier import ChainVerifier
from tests.conftest import PKI, now

ACME = "pay.acme.test"
GLOBEX = "api.globex.test"
INITECH = "initech.test"
RSA_HOST = "rsa.test"

GateFactory = Callable[..., CertGate]


def der_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def ago(**kwargs: float) -> dt.datetime:
    return now() - dt.timedelta(**kwargs)


def ahead(**kwargs: float) -> dt.datetime:
    return now() + dt.timedelta(**kwargs)


class Clock:
    """A settable clock for ``CertGate(clock=...)``."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now


def tls_facts(host: str, issued: IssuedCert) -> RequestFacts:
    """A request whose TLS connection carried ``issued`` and its chain."""
    pems = [
        c.public_bytes(serialization.Encoding.PEM).decode() for c in (issued.cert, *issued.issuers)
    ]
    presented = from_scope({"extensions": {"tls": {"client_cert_chain": pems}}})
    return RequestFacts(host=host, path="/", peer="192.0.2.1", headers={}, transport=presented)


# -- module fixtures ---------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_root() -> CA:
    return CA.root("RSA Root CA", organization="RSA Corp", key_type="rsa")


@pytest.fixture(scope="module")
def registry(pki: PKI, rsa_root: CA) -> InMemoryRegistry:
    """The three conftest tenants plus one whose root is an RSA CA."""
    reg = pki.registry()
    reg.put(Tenant("rsacorp", (RSA_HOST,), (rsa_root.cert,)))
    return reg


@pytest.fixture(scope="module")
def gate(registry: InMemoryRegistry) -> CertGate:
    return CertGate(registry)


@pytest.fixture(scope="module")
def acme_root(pki: PKI) -> CA:
    return pki["acme"].roots[0]


# -- chain building ----------------------------------------------------------


def test_leaf_with_client_auth_and_intermediate_gives_three_cert_chain(
    pki: PKI, gate: CertGate
) -> None:
    client = pki["acme"].client()
    assert len(client.chain_ders) == 2
    decision = gate.check(ACME, client.chain_ders)
    assert decision.reason is None
    assert decision.allowed
    assert decision.tenant_id == "acme"
    identity = decision.identity
    assert identity is not None
    assert identity.tenant_id == "acme"
    assert identity.source == "cli"
    assert identity.chain == (client.cert, pki["acme"].issuer.cert, pki["acme"].roots[0].cert)
    assert decision.fingerprint == hashlib.sha256(client.der).hexdigest()


def test_leaf_without_unconfigured_intermediate_is_untrusted(pki: PKI, gate: CertGate) -> None:
    client = pki["acme"].client()
    decision = gate.check(ACME, [client.der])
    assert decision.reason is Reason.UNTRUSTED_CHAIN
    assert decision.tenant_id == "acme"
    assert decision.identity is None
    assert decision.fingerprint == hashlib.sha256(client.der).hexdigest()


def test_leaf_alone_is_enough_when_tenant_configures_the_intermediate(
    pki: PKI, gate: CertGate
) -> None:
    initech = pki["initech"]
    client = initech.client()
    decision = gate.check(INITECH, [client.der])
    assert decision.reason is None
    assert decision.identity is not None
    assert decision.identity.chain == (client.cert, initech.issuer.cert, initech.roots[1].cert)


def test_unrelated_certificates_among_intermediates_are_ignored(pki: PKI, gate: CertGate) -> None:
    client = pki["acme"].client()
    junk = [
        der_of(pki["globex"].roots[0].cert),
        der_of(pki.rogue.cert),
        pki.server_ca.server(["localhost"]).der,
        der_of(pki["initech"].issuer.cert),
    ]
    # junk before and after the real intermediate
    ders = [client.der, *junk[:2], der_of(pki["acme"].issuer.cert), *junk[2:]]
    decision = gate.check(ACME, ders)
    assert decision.reason is None
    assert decision.identity is not None
    assert len(decision.identity.chain) == 3
    assert decision.identity.chain[-1] == pki["acme"].roots[0].cert


def test_junk_alone_does_not_replace_the_missing_intermediate(pki: PKI, gate: CertGate) -> None:
    client = pki["acme"].client()
    ders = [client.der, der_of(pki["globex"].roots[0].cert), der_of(pki.rogue.cert)]
    assert gate.check(ACME, ders).reason is Reason.UNTRUSTED_CHAIN


# -- extended key usage ------------------------------------------------------


@pytest.mark.parametrize(
    ("eku", "expected"),
    [
        pytest.param(None, None, id="no-eku-allowed"),
        pytest.param([ExtendedKeyUsageOID.CLIENT_AUTH], None, id="client-auth-allowed"),
        pytest.param(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            None,
            id="server-and-client-allowed",
        ),
        pytest.param([ExtendedKeyUsageOID.SERVER_AUTH], Reason.WRONG_USAGE, id="server-only"),
        pytest.param(
            [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE], Reason.WRONG_USAGE, id="any-eku-only"
        ),
        pytest.param([ExtendedKeyUsageOID.CODE_SIGNING], Reason.WRONG_USAGE, id="code-signing"),
    ],
)
def test_extended_key_usage(
    pki: PKI, gate: CertGate, eku: list[ObjectIdentifier] | None, expected: Reason | None
) -> None:
    client = pki["acme"].client(eku=eku)
    if eku is None:
        with pytest.raises(x509.ExtensionNotFound):
            client.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert gate.check(ACME, client.chain_ders).reason is expected


def test_wrong_eku_from_another_tenant_is_untrusted_not_wrong_usage(
    pki: PKI, gate: CertGate
) -> None:
    client = pki["globex"].client(eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert gate.check(GLOBEX, client.chain_ders).reason is Reason.WRONG_USAGE
    assert gate.check(ACME, client.chain_ders).reason is Reason.UNTRUSTED_CHAIN


# -- SAN and AKI are optional (certgate relaxes the webpki EE policy) --------


def test_leaf_without_san_is_allowed(pki: PKI, gate: CertGate) -> None:
    client = pki["acme"].client()
    with pytest.raises(x509.ExtensionNotFound):
        client.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    decision = gate.check(ACME, client.chain_ders)
    assert decision.reason is None
    assert decision.identity is not None
    assert decision.identity.sans == SubjectAltNames()
    assert decision.identity.spiffe_id is None


def test_leaf_without_aki_is_allowed(pki: PKI, gate: CertGate) -> None:
    client = pki["acme"].client(aki=False)
    with pytest.raises(x509.ExtensionNotFound):
        client.cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert gate.check(ACME, client.chain_ders).reason is None


# -- validity period ---------------------------------------------------------


def test_expired_leaf_is_expired(pki: PKI, gate: CertGate) -> None:
    client = pki["acme"].client(not_before=ago(days=30), not_after=ago(days=1))
    decision = gate.check(ACME, client.chain_ders)
    assert decision.reason is Reason.EXPIRED
    assert decision.tenant_id == "acme"


def test_not_yet_valid_leaf(pki: PKI, gate: CertGate) -> None:
    client = pki["acme"].client(not_before=ahead(days=1), not_after=ahead(days=30))
    assert gate.check(ACME, client.chain_ders).reason is Reason.NOT_YET_VALID


@pytest.mark.parametrize("host", [GLOBEX, INITECH, RSA_HOST])
def test_expired_leaf_of_another_tenant_is_untrusted_never_expired(
    pki: PKI, gate: CertGate, host: str
) -> None:
    client = pki["acme"].client(not_before=ago(days=30), not_after=ago(days=1))
    assert gate.check(host, client.chain_ders).reason is Reason.UNTRUSTED_CHAIN


def test_not_yet_valid_leaf_of_another_tenant_is_untrusted(pki: PKI, gate: CertGate) -> None:
    client = pki["globex"].client(not_before=ahead(days=1), not_after=ahead(days=30))
    assert gate.check(GLOBEX, client.chain_ders).reason is Reason.NOT_YET_VALID
    assert gate.check(ACME, client.chain_ders).reason is Reason.UNTRUSTED_CHAIN


def test_explicit_validation_time(pki: PKI, gate: CertGate) -> None:
    client = pki["acme"].client()
    not_after = client.cert.not_valid_after_utc
    not_before = client.cert.not_valid_before_utc
    assert gate.check(ACME, client.chain_ders, at=not_after).reason is None
    assert gate.check(ACME, client.chain_ders, at=not_before).reason is None
    later = not_after + dt.timedelta(seconds=1)
    assert gate.check(ACME, client.chain_ders, at=later).reason is Reason.EXPIRED
    earlier = not_before - dt.timedelta(seconds=1)
    assert gate.check(ACME, client.chain_ders, at=earlier).reason is Reason.NOT_YET_VALID


# -- extensions and basic constraints ---------------------------------------

_PRIVATE_OID = ObjectIdentifier("1.3.6.1.4.1.55555.1.2")


def test_unknown_critical_extension_is_untrusted(pki: PKI, gate: CertGate) -> None:
    ext = x509.UnrecognizedExtension(_PRIVATE_OID, b"\x05\x00")
    critical = pki["acme"].client(extra_extensions=[(ext, True)])
    assert gate.check(ACME, critical.chain_ders).reason is Reason.UNTRUSTED_CHAIN
    # the same extension, non-critical, is fine: criticality is what matters
    plain = pki["acme"].client(extra_extensions=[(ext, False)])
    assert gate.check(ACME, plain.chain_ders).reason is None


def test_leaf_with_ca_true_is_wrong_usage(pki: PKI, gate: CertGate) -> None:
    client = pki["acme"].client(ca=True)
    bc = client.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is True
    assert gate.check(ACME, client.chain_ders).reason is Reason.WRONG_USAGE


def test_tenant_ca_presented_as_client_certificate_is_wrong_usage(pki: PKI, gate: CertGate) -> None:
    assert gate.check(ACME, [der_of(pki["acme"].roots[0].cert)]).reason is Reason.WRONG_USAGE
    issuing = pki["acme"].issuer
    assert gate.check(ACME, issuing.chain_ders).reason is Reason.WRONG_USAGE


# -- algorithms and key sizes ------------------------------------------------

_SHA256_WITH_RSA = bytes.fromhex("06092a864886f70d01010b")
_SHA1_WITH_RSA = bytes.fromhex("06092a864886f70d010105")


def resign_with_sha1(issued: IssuedCert, issuer: CA) -> bytes:
    """``issued`` re-signed by ``issuer`` with sha1WithRSAEncryption.

    cryptography 50 refuses SHA-1 in ``CertificateBuilder.sign`` ("Hash
    algorithm 'sha1' not supported for signatures"), so the DER of a
    SHA-256 certificate is rewritten: both AlgorithmIdentifiers switched to
    the same-length SHA-1 OID, then the new TBS signed with PKCS#1 v1.5/SHA-1.
    """
    der = issued.der
    assert der.count(_SHA256_WITH_RSA) == 2  # tbs.signature and signatureAlgorithm
    rewritten = der.replace(_SHA256_WITH_RSA, _SHA1_WITH_RSA)
    tbs = x509.load_der_x509_certificate(rewritten).tbs_certificate_bytes
    key = issuer.key
    assert isinstance(key, rsa.RSAPrivateKey)
    signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    assert len(signature) == key.key_size // 8
    return rewritten[: -len(signature)] + signature


def test_sha1_signed_leaf_is_untrusted(rsa_root: CA, gate: CertGate) -> None:
    issued = rsa_root.issue("sha1-device")
    assert gate.check(RSA_HOST, issued.chain_ders).reason is None  # SHA-256 control
    sha1_der = resign_with_sha1(issued, rsa_root)
    cert = x509.load_der_x509_certificate(sha1_der)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA1)
    # the signature itself is valid: only the algorithm is refused
    rsa_key = rsa_root.cert.public_key()
    assert isinstance(rsa_key, rsa.RSAPublicKey)
    rsa_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA1())
    decision = gate.check(RSA_HOST, [sha1_der])
    assert decision.reason is Reason.UNTRUSTED_CHAIN
    assert "signature algorithm" in decision.detail.lower()


def test_rsa_1024_intermediate_is_untrusted(acme_root: CA, gate: CertGate) -> None:
    weak = acme_root.intermediate("Weak Issuing CA", key_type="rsa", rsa_bits=1024)
    client = weak.issue("device")
    assert gate.check(ACME, client.chain_ders).reason is Reason.UNTRUSTED_CHAIN


def test_rsa_1024_leaf_is_weak_key(pki: PKI, gate: CertGate) -> None:
    client = pki["acme"].client(key_type="rsa", rsa_bits=1024)
    decision = gate.check(ACME, client.chain_ders)
    assert decision.reason is Reason.WEAK_KEY
    assert "1024" in decision.detail


def test_secp256k1_leaf_is_weak_key(pki: PKI, gate: CertGate) -> None:
    client = pki["acme"].client(key=ec.generate_private_key(ec.SECP256K1()))
    assert gate.check(ACME, client.chain_ders).reason is Reason.WEAK_KEY


@pytest.fixture(scope="module")
def rsa2048_leaf(pki: PKI) -> IssuedCert:
    return pki["acme"].client("rsa-device", key_type="rsa", rsa_bits=2048)


@pytest.mark.parametrize("key_type", ["ec", "ec384", "ed25519"])
def test_strong_leaf_keys_are_allowed(pki: PKI, gate: CertGate, key_type: str) -> None:
    client = pki["acme"].client(key_type=key_type)
    assert gate.check(ACME, client.chain_ders).reason is None


def test_rsa_2048_leaf_is_allowed(rsa2048_leaf: IssuedCert, gate: CertGate) -> None:
    assert gate.check(ACME, rsa2048_leaf.chain_ders).reason is None


def test_min_rsa_bits_3072_rejects_2048_leaf(
    rsa2048_leaf: IssuedCert, pki: PKI, make_gate: GateFactory
) -> None:
    strict = make_gate(min_rsa_bits=3072)
    decision = strict.check(ACME, rsa2048_leaf.chain_ders)
    assert decision.reason is Reason.WEAK_KEY
    assert "2048" in decision.detail
    # EC leaves are unaffected by the RSA minimum
    assert strict.check(ACME, pki["acme"].client().chain_ders).reason is None


@pytest.mark.parametrize("bits", [1024, 2047])
def test_min_rsa_bits_cannot_be_lowered(bits: int, make_gate: GateFactory) -> None:
    with pytest.raises(ValueError, match="2048"):
        ChainVerifier(min_rsa_bits=bits)
    with pytest.raises(ValueError, match="2048"):
        make_gate(min_rsa_bits=bits)


# -- intermediates the CA policy refuses -----------------------------------


def test_intermediate_without_key_usage_is_untrusted(acme_root: CA, gate: CertGate) -> None:
    inter = acme_root.intermediate("No-KU Issuing CA", key_usage=False)
    with pytest.raises(x509.ExtensionNotFound):
        inter.cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert gate.check(ACME, inter.issue("d").chain_ders).reason is Reason.UNTRUSTED_CHAIN


def test_intermediate_with_server_auth_eku_is_untrusted(acme_root: CA, gate: CertGate) -> None:
    inter = acme_root.intermediate(
        "Server-only Issuing CA",
        extra_extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)],
    )
    assert gate.check(ACME, inter.issue("d").chain_ders).reason is Reason.UNTRUSTED_CHAIN
    # control: an intermediate restricted to clientAuth is fine
    client_only = acme_root.intermediate(
        "Client-only Issuing CA",
        extra_extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
    )
    assert gate.check(ACME, client_only.issue("d").chain_ders).reason is None


def test_name_constraints(acme_root: CA, gate: CertGate) -> None:
    inter = acme_root.intermediate("Constrained Issuing CA", permitted_dns=["acme.test"])
    evil = inter.issue("evil", dns=["evil.test"])
    assert gate.check(ACME, evil.chain_ders).reason is Reason.UNTRUSTED_CHAIN
    good = inter.issue("good", dns=["device.acme.test"])
    assert gate.check(ACME, good.chain_ders).reason is None


# -- CA vetting when tenants are registered ----------------------------------


def self_signed_client_certificate() -> x509.Certificate:
    """A real self-signed *client* certificate (no Basic Constraints)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self-signed device")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ago(days=1))
        .not_valid_after(ahead(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )


def test_self_signed_leaf_as_root_is_refused() -> None:
    leaf = self_signed_client_certificate()
    with pytest.raises(ConfigError, match=r"root .*not a CA certificate"):
        Tenant("selfie", ("selfie.test",), (leaf,))


def test_ca_false_self_signed_root_is_refused() -> None:
    fake = CA.root("Not Really A CA", ca=False)
    with pytest.raises(ConfigError, match="not a CA certificate"):
        Tenant("fake", ("fake.test",), (fake.cert,))


def test_ca_without_key_cert_sign_is_refused() -> None:
    no_sign = CA.root("No keyCertSign CA", key_cert_sign=False)
    with pytest.raises(ConfigError, match="keyCertSign"):
        Tenant("nosign", ("nosign.test",), (no_sign.cert,))


def test_leaf_as_configured_intermediate_is_refused(pki: PKI) -> None:
    leaf = pki["acme"].client().cert
    with pytest.raises(ConfigError, match=r"intermediate .*not a CA certificate"):
        Tenant("x", ("x.test",), (pki["acme"].roots[0].cert,), (leaf,))


def test_tenant_without_roots_is_refused() -> None:
    with pytest.raises(ConfigError, match="no root CA"):
        Tenant("empty", ("empty.test",), ())


# -- trust anchors -----------------------------------------------------------


def test_store_holding_only_the_intermediate(pki: PKI) -> None:
    issuing = pki["acme"].issuer
    gate = CertGate(InMemoryRegistry([Tenant("branch", ("branch.test",), (issuing.cert,))]))
    client = issuing.issue("branch-device")
    for ders in (client.chain_ders, [client.der]):
        decision = gate.check("branch.test", ders)
        assert decision.reason is None
        assert decision.identity is not None
        assert decision.identity.chain == (client.cert, issuing.cert)
    # a sibling intermediate under the same root is not trusted by this tenant
    sibling = pki["acme"].roots[0].intermediate("Acme Other CA", organization="Acme")
    assert gate.check("branch.test", sibling.issue("x").chain_ders).reason is (
        Reason.UNTRUSTED_CHAIN
    )


def test_client_sent_rogue_root_never_becomes_a_trust_anchor(pki: PKI, gate: CertGate) -> None:
    acme_root = pki["acme"].roots[0]
    rogue_root = CA.root("Acme Root CA", organization="Acme")
    assert rogue_root.cert.subject == acme_root.cert.subject
    rogue_leaf = rogue_root.issue("intruder")
    assert rogue_leaf.cert.issuer == acme_root.cert.subject
    decision = gate.check(ACME, [rogue_leaf.der, der_of(rogue_root.cert)])
    assert decision.reason is Reason.UNTRUSTED_CHAIN
    # also with a rogue intermediate named like acme's issuing CA
    rogue_issuing = rogue_root.intermediate("Acme Issuing CA", organization="Acme")
    assert rogue_issuing.cert.subject == pki["acme"].issuer.cert.subject
    rogue_client = rogue_issuing.issue("intruder-2")
    ders = [*rogue_client.chain_ders, der_of(rogue_root.cert)]
    assert gate.check(ACME, ders).reason is Reason.UNTRUSTED_CHAIN


# -- chain depth ---------------------------------------------------------------


@pytest.fixture(scope="module")
def deep_client(acme_root: CA) -> IssuedCert:
    """acme root -> 3 intermediates -> leaf."""
    one = acme_root.intermediate("Level 1 CA", path_length=None)
    two = one.intermediate("Level 2 CA", path_length=None)
    three = two.intermediate("Level 3 CA", path_length=None)
    return three.issue("deep-device")


@pytest.mark.parametrize(
    ("depth", "expected"),
    [(1, Reason.UNTRUSTED_CHAIN), (2, Reason.UNTRUSTED_CHAIN), (3, None), (8, None)],
)
def test_max_chain_depth(
    deep_client: IssuedCert, make_gate: GateFactory, depth: int, expected: Reason | None
) -> None:
    decision = make_gate(max_chain_depth=depth).check(ACME, deep_client.chain_ders)
    assert decision.reason is expected
    if expected is None:
        assert decision.identity is not None
        assert len(decision.identity.chain) == 5


@pytest.mark.parametrize("depth", [0, 17])
def test_max_chain_depth_bounds(depth: int) -> None:
    with pytest.raises(ValueError, match="max_chain_depth"):
        ChainVerifier(max_chain_depth=depth)


def test_chain_verifier_directly(pki: PKI) -> None:
    verifier = ChainVerifier(max_chain_depth=2)
    tenant = pki["acme"].tenant()
    client = pki["acme"].client()
    identity = verifier.verify(tenant, client.chain_ders, source="unit", now=now())
    assert identity.tenant_id == "acme"
    assert identity.source == "unit"
    with pytest.raises(Rejected) as info:
        verifier.verify(pki["globex"].tenant(), client.chain_ders, source="unit", now=now())
    assert info.value.reason is Reason.UNTRUSTED_CHAIN
    with pytest.raises(Rejected) as empty:
        verifier.verify(tenant, [], source="unit", now=now())
    assert empty.value.reason is Reason.NO_CERTIFICATE


def test_garbage_and_oversized_chains(pki: PKI, gate: CertGate) -> None:
    client = pki["acme"].client()
    assert gate.check(ACME, [b"\x30\x03\x02\x01\x00"]).reason is Reason.MALFORMED_CERTIFICATE
    assert gate.check(ACME, [client.der] * 9).reason is Reason.MALFORMED_CERTIFICATE
    assert gate.check(ACME, []).reason is Reason.NO_CERTIFICATE


# -- validation time is the request time, cached or not ---------------------


def test_cached_success_expires_with_the_certificate(pki: PKI, make_gate: GateFactory) -> None:
    client = pki["acme"].client(not_after=ahead(hours=1))
    not_after = client.cert.not_valid_after_utc
    clock = Clock(now())
    gate = make_gate(clock=clock)
    facts = tls_facts(ACME, client)

    first = gate.decide(facts)
    assert first.reason is None
    assert len(gate.cache) == 1
    clock.now = not_after - dt.timedelta(seconds=1)
    second = gate.decide(facts)
    assert second.reason is None
    assert gate.cache.hits == 1
    assert second.identity is first.identity  # served from the cache

    clock.now = not_after + dt.timedelta(seconds=1)
    expired = gate.decide(facts)
    assert expired.reason is Reason.EXPIRED
    assert expired.tenant_id == "acme"
    assert gate.cache.hits == 1
    # check() without ``at`` uses the same clock
    assert gate.check(ACME, client.chain_ders).reason is Reason.EXPIRED


def test_cached_success_expires_with_an_intermediate(acme_root: CA, make_gate: GateFactory) -> None:
    """The cache entry lives until the earliest notAfter on the chain."""
    short = acme_root.intermediate("Short-lived CA", not_after=ahead(hours=2))
    client = short.issue("long-lived-device", not_after=ahead(days=60))
    clock = Clock(now())
    gate = make_gate(clock=clock)
    facts = tls_facts(ACME, client)
    assert gate.decide(facts).reason is None
    clock.now = short.cert.not_valid_after_utc + dt.timedelta(seconds=1)
    assert gate.decide(facts).reason is Reason.UNTRUSTED_CHAIN
    assert gate.cache.hits == 0


# -- the identity ------------------------------------------------------------


@pytest.fixture(scope="module")
def rich_client(pki: PKI) -> IssuedCert:
    return pki["acme"].client(
        "device-7",
        organization="Acme",
        dns=["device-7.acme.test"],
        uri=["spiffe://acme.test/device/7"],
        email=["ops@acme.test"],
        ip=["192.0.2.7", "2001:db8::7"],
    )


def identity_of(gate: CertGate, host: str, ders: Sequence[bytes]) -> Decision:
    decision = gate.check(host, ders)
    assert decision.reason is None, decision.detail
    assert decision.identity is not None
    return decision


def test_identity_names(rich_client: IssuedCert, gate: CertGate) -> None:
    identity = identity_of(gate, ACME, rich_client.chain_ders).identity
    assert identity is not None
    assert identity.subject == "CN=device-7,O=Acme"
    assert identity.issuer == "CN=Acme Issuing CA,O=Acme"
    assert identity.subject_legacy == "/O=Acme/CN=device-7"
    assert identity.issuer_legacy == "/O=Acme/CN=Acme Issuing CA"
    assert identity.common_name == "device-7"


def test_identity_legacy_dn_escapes_slashes(pki: PKI, gate: CertGate) -> None:
    client = pki["acme"].client("a/b\\c", organization="Acme")
    identity = identity_of(gate, ACME, client.chain_ders).identity
    assert identity is not None
    assert identity.subject_legacy == "/O=Acme/CN=a\\/b\\\\c"
    assert identity.common_name == "a/b\\c"


def test_identity_serial_fingerprints_and_dates(rich_client: IssuedCert, gate: CertGate) -> None:
    identity = identity_of(gate, ACME, rich_client.chain_ders).identity
    assert identity is not None
    cert = rich_client.cert
    assert identity.serial == format(cert.serial_number, "x")
    assert identity.serial == identity.serial.lower()
    assert not identity.serial.startswith(("0x", "0"))
    assert int(identity.serial, 16) == cert.serial_number
    assert identity.fingerprint_sha256 == hashlib.sha256(rich_client.der).hexdigest()
    assert identity.fingerprint_sha1 == hashlib.sha1(rich_client.der).hexdigest()
    assert identity.der == rich_client.der
    assert identity.certificate == cert
    for value, expected in (
        (identity.not_before, cert.not_valid_before_utc),
        (identity.not_after, cert.not_valid_after_utc),
    ):
        assert value == expected
        assert value.tzinfo is not None
        assert value.utcoffset() == dt.timedelta(0)
    assert identity.not_before < now() < identity.not_after


def test_identity_sans_and_spiffe(rich_client: IssuedCert, gate: CertGate) -> None:
    identity = identity_of(gate, ACME, rich_client.chain_ders).identity
    assert identity is not None
    assert identity.sans == SubjectAltNames(
        dns=("device-7.acme.test",),
        uri=("spiffe://acme.test/device/7",),
        email=("ops@acme.test",),
        ip=("192.0.2.7", "2001:db8::7"),
    )
    assert identity.spiffe_id == "spiffe://acme.test/device/7"


@pytest.mark.parametrize(
    ("uris", "expected"),
    [
        pytest.param(["spiffe://acme.test/a"], "spiffe://acme.test/a", id="one-spiffe"),
        pytest.param(["spiffe://acme.test/a", "spiffe://acme.test/b"], None, id="two-spiffe"),
        pytest.param(["spiffe://acme.test/a", "https://acme.test/"], None, id="spiffe-and-https"),
        pytest.param(["https://acme.test/a"], None, id="one-https"),
        pytest.param([], None, id="no-uri"),
    ],
)
def test_spiffe_id_requires_exactly_one_spiffe_uri(
    pki: PKI, gate: CertGate, uris: list[str], expected: str | None
) -> None:
    client = pki["acme"].client("svc", uri=uris, dns=["svc.acme.test"])
    identity = identity_of(gate, ACME, client.chain_ders).identity
    assert identity is not None
    assert identity.sans.uri == tuple(uris)
    assert identity.spiffe_id == expected


def test_identity_as_dict_is_json_and_free_of_key_material(
    rich_client: IssuedCert, gate: CertGate
) -> None:
    identity = identity_of(gate, ACME, rich_client.chain_ders).identity
    assert identity is not None
    data = identity.as_dict()
    text = json.dumps(data)
    assert json.loads(text) == data
    assert data == {
        "tenant_id": "acme",
        "source": "cli",
        "subject": "CN=device-7,O=Acme",
        "issuer": "CN=Acme Issuing CA,O=Acme",
        "subject_legacy": "/O=Acme/CN=device-7",
        "issuer_legacy": "/O=Acme/CN=Acme Issuing CA",
        "common_name": "device-7",
        "serial": format(rich_client.cert.serial_number, "x"),
        "fingerprint_sha256": hashlib.sha256(rich_client.der).hexdigest(),
        "fingerprint_sha1": hashlib.sha1(rich_client.der).hexdigest(),
        "not_before": rich_client.cert.not_valid_before_utc.isoformat(),
        "not_after": rich_client.cert.not_valid_after_utc.isoformat(),
        "sans": {
            "dns": ["device-7.acme.test"],
            "uri": ["spiffe://acme.test/device/7"],
            "email": ["ops@acme.test"],
            "ip": ["192.0.2.7", "2001:db8::7"],
        },
        "spiffe_id": "spiffe://acme.test/device/7",
        "chain": ["CN=device-7,O=Acme", "CN=Acme Issuing CA,O=Acme", "CN=Acme Root CA,O=Acme"],
    }
    assert "+00:00" in data["not_after"]
    # nothing of the certificate body or any key
    assert "BEGIN" not in text
    assert "PRIVATE" not in text
    assert base64.b64encode(rich_client.der).decode()[:40] not in text
    spki = rich_client.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert base64.b64encode(spki).decode()[:40] not in text
    assert spki.hex()[:40] not in text


def test_legacy_dn_escapes_separators_and_control_characters() -> None:
    from cryptography.x509.oid import NameOID

    from certgate.identity import legacy_dn

    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
            x509.NameAttribute(NameOID.COMMON_NAME, "a+O=Globex/x\\y\nz"),
        ]
    )
    assert legacy_dn(name) == "/O=Acme/CN=a\\+O\\=Globex\\/x\\\\y\\x0az"
