"""Helpers of the tenant store tests: stores in temporary files, request facts."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certgate import RequestFacts
from certgate.devpki import CA, IssuedCert
from certgate.stores.sqlite import SqliteRegistry, sqlite_url

PROXY_PEER = "10.20.30.40"

CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def new_store(tmp_path: Path, name: str = "tenants.db") -> SqliteRegistry:
    """A new, empty store in ``tmp_path``."""
    return SqliteRegistry(tmp_path / name, create=True)


def url_of(store: SqliteRegistry) -> str:
    return sqlite_url(store.path)


def leaf_facts(host: str, leaf: IssuedCert) -> RequestFacts:
    """``leaf`` forwarded by a trusted Cloudflare peer (leaf only)."""
    return RequestFacts(
        host=host,
        path="/api",
        peer=PROXY_PEER,
        headers={"cf-client-cert-der-base64": [base64.b64encode(leaf.der).decode()]},
        transport=None,
    )


def reissued(ca: CA, days: int = 365) -> x509.Certificate:
    """``ca``'s certificate re-issued: same subject and key, other dates."""
    return (
        x509.CertificateBuilder()
        .subject_name(ca.cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(ca.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca.cert.not_valid_before_utc)
        .not_valid_after(ca.cert.not_valid_after_utc + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .sign(ca.key, hashes.SHA256())
    )


def cross_certificate(subject: CA, issuer: CA) -> x509.Certificate:
    """A CA certificate with ``subject``'s name and key, signed by ``issuer``."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject.cert.subject)
        .issuer_name(issuer.cert.subject)
        .public_key(subject.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .sign(issuer.key, hashes.SHA256())
    )
