"""Test-only builders of expensive-to-verify RSA "CA" certificates.

The path-building amplification of issue 5 (item 2) needs a ~16,384-bit RSA
key with a 64-bit public exponent: the costliest key OpenSSL still verifies
with (it refuses moduli above 16,384 bits, and exponents above 64 bits for
moduli above 3,072 bits). Generating a two-prime 16k key takes minutes, so
the modulus here is the product of many 1,024-bit primes taken from freshly
generated RSA-2048 keys (multi-prime RSA, well under a second). A verifier
never sees the factors: checking a signature costs ``s**e mod n`` whatever
``n``'s factorisation, so the certificates cost exactly what a two-prime key
of the same size and exponent costs. ``cryptography`` signs with two-prime
keys only, so these certificates are built by its ``CertificateBuilder``
(with a throwaway RSA signer, for the signature algorithm field) and then
re-signed with the big key here: RSASSA-PKCS1-v1_5 with SHA-256, by CRT.

Nothing here is used outside the tests; no key material is written anywhere.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

E_64_BIT = (1 << 64) - 59
"""A 64-bit prime public exponent (63 squarings and ~60 multiplications per
verification, against 16 and 1 for 65537)."""

_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
_SHA256_WITH_RSA = bytes.fromhex("300d06092a864886f70d01010b0500")


@dataclass(frozen=True)
class BigKey:
    """An RSA key as its public numbers plus the prime factors of ``n``."""

    n: int
    e: int
    primes: tuple[int, ...]

    @property
    def bits(self) -> int:
        return self.n.bit_length()

    def public_key(self) -> rsa.RSAPublicKey:
        return rsa.RSAPublicNumbers(self.e, self.n).public_key()

    def sign_sha256(self, message: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 / SHA-256 signature of ``message`` (CRT)."""
        size = (self.bits + 7) // 8
        digest_info = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
        padded = b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info
        m = int.from_bytes(padded, "big")
        s = 0
        for p in self.primes:
            d_p = pow(self.e, -1, p - 1)
            s_p = pow(m % p, d_p, p)
            rest = self.n // p
            s += s_p * rest * pow(rest, -1, p)
        s %= self.n
        assert pow(s, self.e, self.n) == m
        return s.to_bytes(size, "big")


@functools.cache
def big_key(bits: int = 16384, e: int = E_64_BIT) -> BigKey:
    """A ``bits``-bit RSA key with public exponent ``e`` (cached per session)."""
    primes: list[int] = []
    n = 1
    while n.bit_length() <= bits - 1024:  # whole 1024-bit primes: at least `bits - 1023` bits
        numbers = rsa.generate_private_key(65537, 2048).private_numbers()
        for p in (numbers.p, numbers.q):
            if math.gcd(e, p - 1) == 1 and p not in primes:
                primes.append(p)
                n *= p
    assert math.gcd(e, math.lcm(*(p - 1 for p in primes))) == 1
    return BigKey(n=n, e=e, primes=tuple(primes))


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


@functools.cache
def _throwaway_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def resign(builder: x509.CertificateBuilder, key: BigKey) -> x509.Certificate:
    """Build ``builder``'s certificate signed by ``key`` (sha256WithRSAEncryption)."""
    draft = builder.sign(_throwaway_rsa(), hashes.SHA256())
    tbs = draft.tbs_certificate_bytes
    signature = key.sign_sha256(tbs)
    der = _tlv(0x30, tbs + _SHA256_WITH_RSA + _tlv(0x03, b"\x00" + signature))
    return x509.load_der_x509_certificate(der)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode()


def ca_builder(
    subject: x509.Name, issuer: x509.Name, public: Any, serial: int
) -> x509.CertificateBuilder:
    """An unsigned "CA" certificate (cA=TRUE, keyCertSign, valid now) of the
    kind an attacker signs with any key it holds, for the hostile-chain proofs."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
    )
