"""A throwaway PKI for development, tests, demos and benchmarks.

Never use these certificates in production: keys are generated in memory
without any protection. The point is to make *real* certificates - the same
kind of roots, intermediates and client certificates a tenant's PKI issues -
in a few milliseconds, including deliberately broken ones (expired, wrong
EKU, weak key, ...) to exercise every rejection.

CAs are back-dated by a year by default, so that a client certificate
back-dated to have expired yesterday still chains to a CA that was valid when
it expired (certgate reports ``expired`` only for such chains).

```python
from certgate.devpki import CA
root = CA.root("Acme Root CA")
issuing = root.intermediate("Acme Issuing CA")
device = issuing.issue("device-42", dns=["device-42.acme.test"])
device.write_files("/tmp/pki", "device-42")   # cert, key, chain PEM files
```
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import ConfigError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
_UNSET: object = object()


def make_key(key_type: str = "ec", rsa_bits: int = 2048) -> PrivateKey:
    """``"ec"`` (P-256), ``"ec384"``, ``"rsa"`` (``rsa_bits``) or ``"ed25519"``."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ConfigError(f"unknown key type {key_type!r}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, organization: str | None) -> x509.Name:
    attrs = []
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _sign_hash(key: PrivateKey, algorithm: hashes.HashAlgorithm | None) -> Any:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    return algorithm or hashes.SHA256()


@dataclass
class IssuedCert:
    """A certificate with its private key and the chain above it."""

    cert: x509.Certificate
    key: PrivateKey
    issuers: tuple[x509.Certificate, ...] = ()
    """Issuing chain above ``cert``, nearest first, excluding the root."""

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def chain_pem(self) -> bytes:
        """The certificate followed by its intermediates (what a client sends)."""
        return self.cert_pem + b"".join(_pem(c) for c in self.issuers)

    @property
    def chain_ders(self) -> list[bytes]:
        return [self.der] + [c.public_bytes(serialization.Encoding.DER) for c in self.issuers]

    def write_files(self, directory: str | Path, name: str) -> dict[str, Path]:
        """Write ``name.pem`` (cert), ``name.key`` and ``name-chain.pem``."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {
            "cert": folder / f"{name}.pem",
            "key": folder / f"{name}.key",
            "chain": folder / f"{name}-chain.pem",
        }
        paths["cert"].write_bytes(self.cert_pem)
        paths["key"].write_bytes(self.key_pem)
        paths["key"].chmod(0o600)
        paths["chain"].write_bytes(self.chain_pem)
        return paths


@dataclass
class CA(IssuedCert):
    """A certificate authority that can issue intermediates and leaves."""

    is_root: bool = field(default=False)

    @classmethod
    def root(
        cls,
        common_name: str = "certgate dev root CA",
        *,
        organization: str | None = "certgate dev",
        key_type: str = "ec",
        rsa_bits: int = 2048,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        path_length: int | None = None,
        key_cert_sign: bool = True,
        ca: bool = True,
        signature_hash: hashes.HashAlgorithm | None = None,
    ) -> CA:
        """A self-signed root CA (``ca=False`` makes a deliberately bad "root")."""
        key = make_key(key_type, rsa_bits)
        subject = _name(common_name, organization)
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(days=365))
            .not_valid_after(not_after or now + dt.timedelta(days=3650))
            .add_extension(
                x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
            )
            .add_extension(_ca_key_usage(key_cert_sign), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        cert = builder.sign(key, _sign_hash(key, signature_hash))
        return cls(cert=cert, key=key, issuers=(), is_root=True)

    def intermediate(
        self,
        common_name: str = "certgate dev intermediate CA",
        *,
        organization: str | None = "certgate dev",
        key_type: str = "ec",
        rsa_bits: int = 2048,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        path_length: int | None = 0,
        permitted_dns: Sequence[str] | None = None,
        key_usage: bool = True,
        signature_hash: hashes.HashAlgorithm | None = None,
        extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    ) -> CA:
        """An intermediate CA signed by this CA."""
        key = make_key(key_type, rsa_bits)
        now = _now()
        builder = self._builder(
            _name(common_name, organization),
            key,
            not_before or now - dt.timedelta(days=365),
            not_after,
            now,
            days=1825,
        ).add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        if key_usage:
            builder = builder.add_extension(_ca_key_usage(True), critical=True)
        if permitted_dns is not None:
            builder = builder.add_extension(
                x509.NameConstraints(
                    permitted_subtrees=[x509.DNSName(d) for d in permitted_dns],
                    excluded_subtrees=None,
                ),
                critical=True,
            )
        for extension, critical in extra_extensions:
            builder = builder.add_extension(extension, critical=critical)
        cert = builder.sign(self.key, _sign_hash(self.key, signature_hash))
        return CA(cert=cert, key=key, issuers=self._issuers_for_child())

    def issue(
        self,
        common_name: str = "client",
        *,
        organization: str | None = None,
        dns: Iterable[str] = (),
        uri: Iterable[str] = (),
        email: Iterable[str] = (),
        ip: Iterable[str] = (),
        eku: Sequence[x509.ObjectIdentifier] | object | None = _UNSET,
        key: PrivateKey | None = None,
        key_type: str = "ec",
        rsa_bits: int = 2048,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        aki: bool = True,
        ca: bool = False,
        signature_hash: hashes.HashAlgorithm | None = None,
        extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    ) -> IssuedCert:
        """A client (end-entity) certificate signed by this CA.

        ``eku`` defaults to ``[clientAuth]``; pass ``None`` for no EKU
        extension. With no ``dns``/``uri``/``email``/``ip`` the certificate
        has no SAN extension (like cfssl's client profile).
        """
        key = key or make_key(key_type, rsa_bits)
        now = _now()
        builder = self._builder(
            _name(common_name, organization), key, not_before, not_after, now, days=90, aki=aki
        ).add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if eku is _UNSET else eku
        if usages is not None:
            assert isinstance(usages, Sequence)
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.UniformResourceIdentifier(u) for u in uri]
        names += [x509.RFC822Name(e) for e in email]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        for extension, critical in extra_extensions:
            builder = builder.add_extension(extension, critical=critical)
        cert = builder.sign(self.key, _sign_hash(self.key, signature_hash))
        return IssuedCert(cert=cert, key=key, issuers=self._issuers_for_child())

    def server(
        self, hosts: Iterable[str], *, common_name: str = "certgate dev server"
    ) -> IssuedCert:
        """A TLS server certificate for ``hosts`` (names or IP addresses)."""
        dns: list[str] = []
        ips: list[str] = []
        for host in hosts:
            try:
                ipaddress.ip_address(host)
                ips.append(host)
            except ValueError:
                dns.append(host)
        return self.issue(
            common_name,
            dns=dns,
            ip=ips,
            eku=[ExtendedKeyUsageOID.SERVER_AUTH],
            not_after=_now() + dt.timedelta(days=365),
        )

    def _issuers_for_child(self) -> tuple[x509.Certificate, ...]:
        # Intermediates a child must present: this CA (unless it is the root)
        # and the intermediates above it.
        return () if self.is_root else (self.cert, *self.issuers)

    def _builder(
        self,
        subject: x509.Name,
        key: PrivateKey,
        not_before: dt.datetime | None,
        not_after: dt.datetime | None,
        now: dt.datetime,
        *,
        days: int,
        aki: bool = True,
    ) -> x509.CertificateBuilder:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(hours=1))
            .not_valid_after(not_after or now + dt.timedelta(days=days))
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        if aki:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        return builder


def _ca_key_usage(key_cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
