"""A certificate is accepted under one encoding only: the same certificate
with its signature BIT STRING claiming unused bits (cryptography accepts
that when the padding bits are zero, and the signature still verifies)
would have another SHA-256 fingerprint - a way past ``fingerprint_not_in``
deny lists and pins. Found by the bit-flip fuzz test."""

from __future__ import annotations

import base64
import hashlib

from cryptography import x509

from certgate import CertGate, RequestFacts
from certgate.devpki import CA
from certgate.policy import fingerprint_not_in
from certgate.sources.cloudflare import CloudflareSource
from tests.conftest import PKI


def padded(der: bytes) -> bytes:
    """``der`` with the signature's unused-bits count set to 1."""
    signature = x509.load_der_x509_certificate(der).signature
    at = len(der) - len(signature) - 1
    assert der[at] == 0
    return der[:at] + b"\x01" + der[at + 1 :]


def even_signature_leaf(issuer: CA) -> bytes:
    """A certificate whose signature ends in a 0 bit (so the padded form
    still parses)."""
    for n in range(64):
        der = issuer.issue(f"malleable-{n}").der
        if x509.load_der_x509_certificate(der).signature[-1] % 2 == 0:
            return der
    raise AssertionError("no certificate with an even last signature byte in 64 tries")


def test_a_signature_with_unused_bits_is_malformed(pki: PKI) -> None:
    globex = pki["globex"]
    der = even_signature_leaf(globex.issuer)
    twin = padded(der)
    # cryptography itself takes the twin, with the same signed content
    parsed = x509.load_der_x509_certificate(twin)
    assert parsed.tbs_certificate_bytes == x509.load_der_x509_certificate(der).tbs_certificate_bytes
    deny = hashlib.sha256(der).hexdigest()
    gate = CertGate(
        pki.registry(),
        trusted_proxies=["10.0.0.0/8"],
        header_sources=[CloudflareSource()],
        policy=fingerprint_not_in(deny),
    )

    def decide(value: bytes) -> RequestFacts:
        return RequestFacts(
            globex.host, "/", "10.0.0.1", {"cf-client-cert-der-base64": [value.decode()]}, None
        )

    assert gate.decide(decide(base64.b64encode(der))).reason == "policy_denied"
    refused = gate.decide(decide(base64.b64encode(twin)))
    assert refused.reason == "malformed_certificate"
    assert refused.identity is None
    assert gate.check(globex.host, [twin]).reason == "malformed_certificate"
