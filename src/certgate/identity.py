"""The identity certgate attaches to a request whose certificate it verified.

A :class:`ClientIdentity` is only ever built from a chain that
``cryptography``'s verifier accepted against the addressed tenant's roots, at
the time of the request. Its fields describe the leaf certificate; ``chain``
is the verified path, leaf first, ending at the tenant's root.

The object is immutable. Fields derived from the certificate (names, SANs,
dates) are computed on first access and then kept, so a request that only
needs ``tenant_id`` does not pay for parsing what it never reads.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

_LEGACY_NAMES = {
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.GIVEN_NAME: "GN",
    NameOID.SURNAME: "SN",
    NameOID.TITLE: "title",
}


def rfc4514_dn(name: x509.Name) -> str:
    """RFC 4514 string, most specific RDN first (``CN=dev1,O=Acme,C=US``).

    Characters that are not printable (control characters, line separators,
    bidi overrides: see :mod:`certgate.text`) are written as RFC 4514 hex
    pairs of their UTF-8 bytes (ESC as ``\\1B``, U+2028 as ``\\E2\\80\\A8``),
    so the string is still a valid RFC 4514 name for the same DN but cannot
    rewrite a terminal or forge a log line.
    """
    text = name.rfc4514_string()
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _hex_pairs(char, "\\{:02X}") for char in text)


def _hex_pairs(char: str, template: str) -> str:
    return "".join(template.format(byte) for byte in char.encode("utf-8", "surrogatepass"))


def legacy_dn(name: x509.Name) -> str:
    """OpenSSL "oneline" form, in certificate order (``/C=US/O=Acme/CN=dev1``).

    ``\\``, ``/``, ``+`` and ``=`` inside values are escaped with a backslash,
    and characters that are not printable (control characters, line
    separators, bidi overrides: see :mod:`certgate.text`) as ``\\xNN`` per
    UTF-8 byte, so the string splits unambiguously (``CN=a+O=Globex`` cannot
    pass for a multi-valued RDN) and cannot forge a log line.
    """
    parts: list[str] = []
    for rdn in name.rdns:
        atoms = []
        for attr in rdn:
            key = _LEGACY_NAMES.get(attr.oid) or attr.rfc4514_attribute_name
            value = attr.value if isinstance(attr.value, str) else attr.value.hex()
            atoms.append(f"{key}={_legacy_escape(value)}")
        parts.append("+".join(atoms))
    return "".join("/" + part for part in parts)


def _legacy_escape(value: str) -> str:
    out = []
    for char in value:
        if char in "\\/+=":
            out.append("\\" + char)
        elif not char.isprintable():
            out.append(_hex_pairs(char, "\\x{:02x}"))
        else:
            out.append(char)
    return "".join(out)


@dataclass(frozen=True)
class SubjectAltNames:
    """The leaf's Subject Alternative Names, by kind (empty when absent)."""

    dns: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()
    email: tuple[str, ...] = ()
    ip: tuple[str, ...] = ()


class ClientIdentity:
    """A verified client certificate, bound to the tenant it was verified for.

    ``source`` names where the certificate came from (``asgi_tls``,
    ``wsgi_environ``, ``cloudflare``, ...). ``certificate`` is the leaf;
    ``chain`` the verified path, leaf first, ending at one of the tenant's
    roots; ``issuers`` is ``chain[1:]``, the CA certificates above the leaf.
    ``expires_at`` is the POSIX time the verification stops holding: the
    earliest notAfter on the verified path, or the nextUpdate of a CRL the
    path was checked against, if earlier.

    Immutable. What an identity keeps is small (it is what the
    verification cache holds): the four strings and bytes above, the
    ``issuers`` tuple - the tenant's own root and intermediate objects,
    shared by every identity they issued, not copies - and the expiry. The
    leaf's ``certificate`` object is parsed again from ``der`` on first
    access and then kept; the other fields derived from the certificate
    (names, SANs, dates) are computed on first access from a parse that is
    not kept, so a request that only needs ``tenant_id`` does not pay for
    what it never reads, and the cache does not hold ``cryptography``'s
    per-certificate caches (public key, names, extensions: several KB).
    Equality is by tenant, source and leaf DER.
    """

    __slots__ = (
        "__dict__",  # only for the fields computed on first access
        "_expires",
        "_leaf_not_after",
        "_parsed",
        "der",
        "fingerprint_sha256",
        "issuers",
        "source",
        "tenant_id",
    )

    tenant_id: str
    source: str
    der: bytes
    fingerprint_sha256: str
    issuers: tuple[x509.Certificate, ...]
    _expires: float | None
    _leaf_not_after: float | None
    _parsed: x509.Certificate | None

    def __init__(  # noqa: PLR0917 - the dataclass it was had these positional fields
        self,
        tenant_id: str,
        source: str,
        certificate: x509.Certificate,
        chain: tuple[x509.Certificate, ...],
        der: bytes,
        fingerprint_sha256: str,
    ) -> None:
        """The identity of ``certificate`` (whose DER is ``der``), verified
        along ``chain`` (leaf first)."""
        _fill(self, tenant_id, source, certificate, der, tuple(chain[1:]), fingerprint_sha256)

    @classmethod
    def build(
        cls,
        tenant_id: str,
        source: str,
        leaf: x509.Certificate,
        leaf_der: bytes,
        chain: tuple[x509.Certificate, ...],
        *,
        fingerprint: str | None = None,
        valid_until: float | None = None,
    ) -> ClientIdentity:
        """Build from a verified chain, leaf first (``fingerprint``: the
        leaf's hex SHA-256, if already known). Keeps ``leaf_der`` and
        ``chain[1:]``, not the ``leaf`` object (see the class docstring).
        ``valid_until``: a POSIX time before the chain's earliest notAfter
        at which the verification stops holding (the nextUpdate of a CRL
        it was checked against); :attr:`expires_at` is then the earlier."""
        identity = object.__new__(cls)
        _fill(
            identity,
            tenant_id,
            source,
            leaf,
            leaf_der,
            tuple(chain[1:]),
            fingerprint or hashlib.sha256(leaf_der).hexdigest(),
        )
        if valid_until is not None:
            object.__setattr__(identity, "_expires", min(identity.expires_at, valid_until))
        return identity

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ClientIdentity is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ClientIdentity is immutable (cannot delete {name!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientIdentity):
            return NotImplemented
        return (self.tenant_id, self.source, self.der, self.fingerprint_sha256) == (
            other.tenant_id,
            other.source,
            other.der,
            other.fingerprint_sha256,
        )

    def __hash__(self) -> int:
        return hash((self.tenant_id, self.source, self.der))

    def __repr__(self) -> str:
        return (
            f"ClientIdentity(tenant_id={self.tenant_id!r}, source={self.source!r}, "
            f"fingerprint_sha256={self.fingerprint_sha256!r})"
        )

    def _leaf(self) -> x509.Certificate:
        """The leaf: the verifier's parse while the identity still holds it,
        else the kept ``certificate`` if it was read, else a parse that is
        not kept."""
        parsed = self._parsed
        if parsed is not None:
            return parsed
        kept = self.__dict__.get("certificate")
        if isinstance(kept, x509.Certificate):
            return kept
        return x509.load_der_x509_certificate(self.der)

    @property
    def expires_at(self) -> float:
        """POSIX time the verification stops holding: the earliest notAfter
        on :attr:`chain`, or the nextUpdate of a CRL the chain was checked
        against if earlier (cached allows and the decision memo end then)."""
        expires = self._expires
        if expires is None:
            expires = self._leaf_expiry()
            for cert in self.issuers:
                expires = min(expires, _ca_entry(cert)[1])
            object.__setattr__(self, "_expires", expires)
        return expires

    def _leaf_expiry(self) -> float:
        value = self._leaf_not_after
        if value is None:
            value = self._leaf().not_valid_after_utc.timestamp()
            object.__setattr__(self, "_leaf_not_after", value)
        return value

    def drop_parsed_leaf(self) -> None:
        """Let go of the verifier's parsed leaf (with ``cryptography``'s
        caches of its key and names), keeping what was derived from it.
        The verification cache calls this before keeping an identity; the
        leaf is parsed again from :attr:`der` when next needed."""
        _ = self.expires_at  # computed while the parse is at hand
        object.__setattr__(self, "_parsed", None)

    @functools.cached_property
    def certificate(self) -> x509.Certificate:
        """The leaf certificate (parsed from :attr:`der` on first access)."""
        return self._parsed or x509.load_der_x509_certificate(self.der)

    @functools.cached_property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """The verified path, leaf first, ending at one of the tenant's roots."""
        return (self.certificate, *self.issuers)

    @functools.cached_property
    def fingerprint_sha1(self) -> str:
        """SHA-1 of the leaf DER, lowercase hex (for matching legacy systems only)."""
        return hashlib.sha1(self.der, usedforsecurity=False).hexdigest()

    @functools.cached_property
    def subject(self) -> str:
        """Subject DN, RFC 4514 (``CN=dev1,O=Acme``)."""
        return rfc4514_dn(self._leaf().subject)

    @functools.cached_property
    def issuer(self) -> str:
        """Issuer DN, RFC 4514."""
        return rfc4514_dn(self._leaf().issuer)

    @functools.cached_property
    def subject_legacy(self) -> str:
        """Subject DN in the legacy ``/C=US/O=Acme/CN=dev1`` form."""
        return legacy_dn(self._leaf().subject)

    @functools.cached_property
    def issuer_legacy(self) -> str:
        """Issuer DN in the legacy ``/C=US/O=Acme/CN=Acme CA`` form."""
        return legacy_dn(self._leaf().issuer)

    @functools.cached_property
    def common_name(self) -> str | None:
        """The subject's (last) commonName, or ``None``."""
        values = self._leaf().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not values:
            return None
        value = values[-1].value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")

    @functools.cached_property
    def serial(self) -> str:
        """Serial number, lowercase hex without leading zeros."""
        return format(self._leaf().serial_number, "x")

    @functools.cached_property
    def not_before(self) -> datetime:
        """Start of validity, timezone-aware (UTC)."""
        return self._leaf().not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        """End of validity, timezone-aware (UTC)."""
        return datetime.fromtimestamp(self._leaf_expiry(), UTC)

    @functools.cached_property
    def sans(self) -> SubjectAltNames:
        """DNS, URI, email and IP Subject Alternative Names."""
        try:
            ext = self._leaf().extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return SubjectAltNames()
        return SubjectAltNames(
            dns=tuple(ext.get_values_for_type(x509.DNSName)),
            uri=tuple(ext.get_values_for_type(x509.UniformResourceIdentifier)),
            email=tuple(ext.get_values_for_type(x509.RFC822Name)),
            ip=tuple(str(ip) for ip in ext.get_values_for_type(x509.IPAddress)),
        )

    @functools.cached_property
    def spiffe_id(self) -> str | None:
        """The SPIFFE ID: the URI SAN when the leaf has exactly one URI SAN and
        it uses the ``spiffe://`` scheme (as the X.509-SVID spec requires)."""
        uris = self.sans.uri
        if len(uris) == 1 and uris[0].lower().startswith("spiffe://"):
            return uris[0]
        return None

    @functools.cached_property
    def subject_attributes(self) -> Mapping[str, tuple[str, ...]]:
        """Every attribute value of the subject, by dotted OID (``"2.5.4.11"``
        for OU), in certificate order; all values of a repeated attribute.

        Byte-valued attributes (rare: ``x500UniqueIdentifier``) are given as
        lowercase hex. Read-only.
        """
        values: dict[str, list[str]] = {}
        for attr in self._leaf().subject:
            value = attr.value if isinstance(attr.value, str) else attr.value.hex()
            values.setdefault(attr.oid.dotted_string, []).append(value)
        return MappingProxyType({oid: tuple(found) for oid, found in values.items()})

    @functools.cached_property
    def chain_fingerprints_sha256(self) -> tuple[str, ...]:
        """SHA-256 of each certificate of :attr:`chain` (its DER), lowercase
        hex, leaf first: ``[1:]`` are the CAs the verified path went through."""
        return (self.fingerprint_sha256, *(_ca_fingerprint(cert) for cert in self.issuers))

    def days_left(self, now: datetime | None = None) -> float:
        """Days from ``now`` (default: the current time) until ``not_after``,
        as a float (``29.5`` is 29 days and 12 hours).

        Negative once the certificate has expired. A naive ``now`` is taken
        as UTC.
        """
        if now is None:
            now = datetime.now(UTC)
        elif now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return (self.not_after - now).total_seconds() / 86400.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no certificate bodies, no key material)."""
        return {
            "tenant_id": self.tenant_id,
            "source": self.source,
            "subject": self.subject,
            "issuer": self.issuer,
            "subject_legacy": self.subject_legacy,
            "issuer_legacy": self.issuer_legacy,
            "common_name": self.common_name,
            "serial": self.serial,
            "fingerprint_sha256": self.fingerprint_sha256,
            "fingerprint_sha1": self.fingerprint_sha1,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "sans": {
                "dns": list(self.sans.dns),
                "uri": list(self.sans.uri),
                "email": list(self.sans.email),
                "ip": list(self.sans.ip),
            },
            "spiffe_id": self.spiffe_id,
            "chain": [self.subject, *(rfc4514_dn(cert.subject) for cert in self.issuers)],
        }


def _fill(  # noqa: PLR0917 - internal, on every cold verification: positional is faster
    identity: ClientIdentity,
    tenant_id: str,
    source: str,
    leaf: x509.Certificate,
    der: bytes,
    issuers: tuple[x509.Certificate, ...],
    fingerprint: str,
) -> None:
    setter = object.__setattr__
    setter(identity, "tenant_id", tenant_id)
    setter(identity, "source", source)
    setter(identity, "der", der)
    setter(identity, "fingerprint_sha256", fingerprint)
    setter(identity, "issuers", issuers)
    setter(identity, "_parsed", leaf)
    setter(identity, "_leaf_not_after", None)
    setter(identity, "_expires", None)


_CA_MEMO_SIZE = 1024
_ca_memo: dict[int, tuple[x509.Certificate, float, list[str]]] = {}


def _ca_entry(cert: x509.Certificate) -> tuple[x509.Certificate, float, list[str]]:
    """Memo of a CA object's notAfter (POSIX) and hex SHA-256, by object
    identity: CA objects are shared by every identity they issued, and
    hashing a certificate (its DER) costs more than the look-up. The entry
    holds the object, so its id cannot be reused while the entry exists;
    bounded (cleared when full); a race at worst computes twice."""
    entry = _ca_memo.get(id(cert))
    if entry is None or entry[0] is not cert:
        if len(_ca_memo) >= _CA_MEMO_SIZE:
            _ca_memo.clear()
        entry = (cert, cert.not_valid_after_utc.timestamp(), [])
        _ca_memo[id(cert)] = entry
    return entry


def _ca_fingerprint(cert: x509.Certificate) -> str:
    fingerprints = _ca_entry(cert)[2]
    if not fingerprints:
        fingerprints.append(hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest())
    return fingerprints[0]
