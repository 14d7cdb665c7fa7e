"""Vetting of tenant CA certificates, once, when a tenant is registered.

Every root and intermediate of a :class:`~certgate.tenant.Tenant` is vetted
when the tenant is built - from the TOML file, by ``Tenant(...)`` /
``Tenant.from_pem(...)`` (so before ``InMemoryRegistry(...)`` or ``put()``
sees it), and by ``certgate tenants add`` - never on a request. A CA that
fails a rule is a :class:`~certgate.errors.ConfigError` naming the tenant,
the certificate (subject, short SHA-256 fingerprint, file), the rule and
the fix; :func:`vet_cas` returns every finding instead, for
``certgate config check``.

The rules (ids in brackets) are those of ``cryptography``'s verifier, which
applies its webpki CA profile to every CA of a path, the trust anchor
included: a CA that breaks one can never verify a device, so it is refused
at load rather than turning every request into ``untrusted_chain``.

* ``[basic-constraints]`` Basic Constraints present, critical, ``cA=TRUE``
  (a leaf registered as a root would authenticate itself).
* ``[key-usage]`` Key Usage present with ``keyCertSign``.
* ``[extended-key-usage]`` an Extended Key Usage on a CA, if any, is
  non-critical and lists ``clientAuth`` or ``anyExtendedKeyUsage``.
* ``[critical-extension]`` every critical extension is one the verifier
  accepts critical on a CA (:data:`CRITICAL_OK`: Basic Constraints, Key
  Usage, Subject Alternative Name, Name Constraints); any other (an unknown
  one, Certificate Policies, Policy Constraints, a critical Authority or
  Subject Key Identifier, ...) makes the verifier refuse every path
  through the CA.
* ``[signature-algorithm]`` the certificate's signature algorithm is on
  :data:`SIGNATURE_ALGORITHMS`: RSA PKCS#1 v1.5, RSA-PSS (MGF1 with the same
  hash, salt length = digest size) or ECDSA, each with SHA-256, SHA-384 or
  SHA-512. ``[sha1-root]`` SHA-1 (RSA or ECDSA) is accepted only on a
  self-signed root, whose own signature is never checked, and then with a
  warning. MD5, SHA-224, SHA-3, DSA, Ed25519, Ed448 and the rest are refused.
* ``[key]`` the CA's public key is RSA (``rsaEncryption``, not an
  RSA-PSS-only key) of at least :data:`MIN_RSA_BITS` bits or EC on P-256,
  P-384 or P-521 (:data:`EC_CURVES`) named by its OID, not by explicit
  curve parameters (``cryptography`` loads both, its verifier refuses
  the latter as an issuer). Ed25519 and
  Ed448 CA keys are refused: ``cryptography``'s verifier (checked with
  51.0) refuses them as issuers ("Forbidden public key algorithm").
* ``[validity]`` the CA is valid now (notBefore <= now <= notAfter). A
  tenant's ``ca_expired`` setting decides: ``"fail"`` (default) refuses,
  ``"warn"`` loads the tenant and logs a warning (no chain through that CA
  verifies meanwhile; the verifier checks every date on every request).
* ``[chain]`` every intermediate chains, by name and signature
  (``verify_directly_issued_by``), to one of the tenant's roots, directly
  or through other intermediates of the tenant. Each (certificate,
  candidate issuer) pair is checked at most once, and at most
  :func:`chain_check_budget` signature checks may fail per tenant (many
  CAs sharing one name): beyond that the tenant is refused rather than
  its load taking minutes.
* ``[parse]`` the extensions parse.

What is **not** done here: path validation (only the verifier does it, per
request), revocation of the CAs themselves, name constraints and path
length (the verifier checks both on each path).

Warnings are logged once per build of a tenant on the ``certgate`` logger
(``extra["certgate"]`` holds :meth:`Finding.as_dict`); a tenant rebuilt for
a fetched CRL does not repeat them. A tenant has no gate, so there is no
event for them.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, PublicKeyAlgorithmOID
from cryptography.x509.oid import SignatureAlgorithmOID as Sig

from . import certmemo
from .errors import ConfigError

logger = logging.getLogger("certgate")

CA_EXPIRED_MODES = ("fail", "warn")
"""Values of a tenant's ``ca_expired`` setting."""

MIN_RSA_BITS = 2048
"""Smallest RSA key accepted on a tenant CA."""

EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
"""EC curves accepted on a tenant CA (``cryptography`` name -> NIST name)."""

SIGNATURE_ALGORITHMS: dict[x509.ObjectIdentifier, str] = {
    Sig.RSA_WITH_SHA256: "RSA PKCS#1 v1.5 with SHA-256",
    Sig.RSA_WITH_SHA384: "RSA PKCS#1 v1.5 with SHA-384",
    Sig.RSA_WITH_SHA512: "RSA PKCS#1 v1.5 with SHA-512",
    Sig.RSASSA_PSS: "RSA-PSS with SHA-256, SHA-384 or SHA-512",
    Sig.ECDSA_WITH_SHA256: "ECDSA with SHA-256",
    Sig.ECDSA_WITH_SHA384: "ECDSA with SHA-384",
    Sig.ECDSA_WITH_SHA512: "ECDSA with SHA-512",
}
"""The signature algorithms a tenant CA may be signed with."""

SHA1_ROOT_ALGORITHMS = frozenset({Sig.RSA_WITH_SHA1, Sig.ECDSA_WITH_SHA1})
"""SHA-1 algorithms, accepted (with a warning) on self-signed roots only."""

CRITICAL_OK = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.EXTENDED_KEY_USAGE,  # critical: refused by [extended-key-usage]
    }
)
"""Extensions that may be critical on a tenant CA (``cryptography`` 51's
``webpki_defaults_ca`` policy; any other critical one fails every path)."""

_NAMED_CURVE_IDS = (
    bytes.fromhex("301306072a8648ce3d020106082a8648ce3d030107"),  # P-256
    bytes.fromhex("301006072a8648ce3d020106052b81040022"),  # P-384
    bytes.fromhex("301006072a8648ce3d020106052b81040023"),  # P-521
)
"""DER AlgorithmIdentifiers of an EC public key on a named curve. A CA's
key is on a named curve when one of them is in its TBS (where its
SubjectPublicKeyInfo is): the same bytes planted elsewhere in the TBS could
only get past vetting a CA the verifier still refuses (fail closed)."""

_CHECKABLE = frozenset(SIGNATURE_ALGORITHMS) | SHA1_ROOT_ALGORITHMS
_PSS_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_CA_EKUS = frozenset({ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE})

RULES = {
    "basic-constraints": "Basic Constraints present, critical, cA=TRUE",
    "key-usage": "Key Usage present with keyCertSign",
    "extended-key-usage": "an EKU, if any, non-critical with clientAuth or anyExtendedKeyUsage",
    "critical-extension": "no critical extension the verifier refuses on a CA",
    "signature-algorithm": "signed with RSA (PKCS#1 v1.5 or PSS) or ECDSA and SHA-256/384/512",
    "sha1-root": "SHA-1 only on a self-signed root (a warning)",
    "key": f"RSA >= {MIN_RSA_BITS} bits, or EC P-256/P-384/P-521 (a named curve)",
    "validity": "valid now (ca_expired = 'warn' makes it a warning)",
    "chain": "an intermediate chains to one of the tenant's roots",
    "parse": "the extensions parse",
    "tenant": "the [[tenants]] table loads (config check only)",
}
"""Every rule id and what it requires."""

_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("certgate_vet_quiet", default=False)
_LENIENT_DATES: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "certgate_vet_lenient_dates", default=False
)


@dataclass(frozen=True)
class Finding:
    """One problem with one CA of a tenant (or, rule ``tenant``, with the
    tenant's table). ``level``: ``"error"`` or ``"warning"``."""

    level: str
    rule: str
    tenant_id: str
    problem: str
    """What is wrong, as the end of a sentence starting with the certificate."""
    fix: str
    role: str | None = None
    """``"root"`` or ``"intermediate"``."""
    subject: str | None = None
    fingerprint_sha256: str | None = None
    source: str | None = None
    """Where the certificate came from (a file), when known."""

    @property
    def certificate(self) -> str:
        """``root 'CN=...' (SHA-256 0123456789abcdef, file x.pem)``."""
        if self.role is None:
            return ""
        where = f", file {self.source!r}" if self.source else ""
        short = (self.fingerprint_sha256 or "")[:16]
        return f"{self.role} {self.subject!r} (SHA-256 {short}{where})"

    def text(self) -> str:
        """The whole finding as one line: tenant, certificate, rule, fix."""
        what = f"{self.certificate} {self.problem}" if self.role else self.problem
        return f"tenant {self.tenant_id!r}: {what} [rule {self.rule}]. Fix: {self.fix}"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return {
            "level": self.level,
            "rule": self.rule,
            "tenant_id": self.tenant_id,
            "role": self.role,
            "subject": self.subject,
            "fingerprint_sha256": self.fingerprint_sha256,
            "source": self.source,
            "problem": self.problem,
            "fix": self.fix,
            "message": self.text(),
        }


class CaVettingError(ConfigError):
    """A tenant CA failed vetting; ``findings`` holds every finding of the
    tenant (errors and warnings), the message the first error."""

    def __init__(self, message: str, findings: Sequence[Finding]) -> None:
        super().__init__(message)
        self.findings = tuple(findings)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Within the block, vetting logs no warning (errors still raise): for a
    tenant rebuilt from one already vetted and logged (a fetched CRL)."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


@contextlib.contextmanager
def lenient_dates() -> Iterator[None]:
    """Within the block, an expired or not-yet-valid CA is a warning whatever
    the tenant's ``ca_expired``, and warnings are not logged: for reports
    that must list such CAs (``certgate expiry``, ``certgate tenants
    list``), never for a configuration that serves requests."""
    tokens = (_LENIENT_DATES.set(True), _QUIET.set(True))
    try:
        yield
    finally:
        _QUIET.reset(tokens[1])
        _LENIENT_DATES.reset(tokens[0])


def check_ca_expired(value: object, where: str) -> str:
    """``value`` if it is a ``ca_expired`` mode, else :class:`ConfigError`."""
    if value not in CA_EXPIRED_MODES:
        raise ConfigError(f'{where}: ca_expired must be "fail" or "warn", not {value!r:.40}')
    assert isinstance(value, str)
    return value


def vet_cas(
    tenant_id: str,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    *,
    ca_expired: str = "fail",
    sources: Sequence[str] = (),
    now: dt.datetime | None = None,
) -> list[Finding]:
    """Every finding (errors and warnings) for a tenant's CAs, in order.

    ``sources``: where each of ``roots`` then ``intermediates`` came from
    (file names; optional, for messages). ``now``: the time dates are
    judged at (default: now).
    """
    check_ca_expired(ca_expired, f"tenant {tenant_id!r}")
    moment = now or dt.datetime.now(dt.UTC)
    date_level = "warning" if ca_expired == "warn" or _LENIENT_DATES.get() else "error"
    findings: list[Finding] = []
    certs = [("root", cert) for cert in roots] + [("intermediate", c) for c in intermediates]
    date_fix = _DATE_FIX if date_level == "error" else _DATE_REPLACE
    for position, (role, cert) in enumerate(certs):
        try:
            problems = [("error", *p) for p in _extension_problems(cert)]
            problems += _signature_problems(cert, role)
            problems += [("error", *p) for p in _key_problems(cert)]
            problems += [
                (date_level, "validity", p, date_fix) for p in _date_problems(cert, moment)
            ]
        except Exception as exc:  # noqa: BLE001 - lazily parsed fields: fail closed, say why
            problems = [("error", "parse", f"does not parse ({exc!r:.200})", "re-encode the CA")]
        if problems:
            source = sources[position] if position < len(sources) else None
            findings.extend(
                Finding(level, rule, tenant_id, problem, fix, role, *_names(cert), source)
                for level, rule, problem, fix in problems
            )
    try:
        findings.extend(_chain_findings(tenant_id, roots, intermediates, sources))
    except Exception as exc:  # noqa: BLE001
        problem = f"could not be checked: a certificate does not parse ({exc!r:.200})"
        findings.append(
            Finding("error", "parse", tenant_id, f"the chain {problem}", "re-encode it")
        )
    return findings


def _names(cert: x509.Certificate) -> tuple[str, str]:
    """The subject (RFC 4514) and hex SHA-256 fingerprint of ``cert``, for
    messages (a subject that does not parse is shown as such)."""
    try:
        subject = cert.subject.rfc4514_string()
    except Exception:  # noqa: BLE001
        subject = "<subject does not parse>"
    return subject, cert.fingerprint(hashes.SHA256()).hex()


def check_cas(
    tenant_id: str,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    *,
    ca_expired: str = "fail",
    sources: Sequence[str] = (),
    now: dt.datetime | None = None,
) -> list[Finding]:
    """:func:`vet_cas`, then raise :class:`CaVettingError` (a
    :class:`ConfigError`) on the first error, or log every warning on the
    ``certgate`` logger (unless :func:`quiet`) and return the findings.

    During a bulk import (:func:`certgate.certmemo.remembering`) a CA set
    that already passed with no finding at all - the same certificates, by
    SHA-256 of their DER, under the same date rules - is not vetted again
    (no finding: nothing to raise or log)."""
    memo = certmemo.active() if now is None else None
    key: tuple[object, ...] | None = None
    if memo is not None:
        key = (
            tuple(certmemo.sha256_of(cert) for cert in roots),
            tuple(certmemo.sha256_of(cert) for cert in intermediates),
            ca_expired,
            _LENIENT_DATES.get(),
        )
        if memo.is_clean(key):
            return []
    findings = vet_cas(
        tenant_id, roots, intermediates, ca_expired=ca_expired, sources=sources, now=now
    )
    if memo is not None and key is not None and not findings:
        memo.mark_clean(key)
    errors = [f for f in findings if f.level == "error"]
    if errors:
        more = len(errors) - 1
        suffix = f" (and {more} more CA problem{'s' if more > 1 else ''} in this tenant)"
        raise CaVettingError(errors[0].text() + (suffix if more else ""), findings)
    if not _QUIET.get():
        for finding in findings:
            logger.warning("certgate: %s", finding.text(), extra={"certgate": finding.as_dict()})
    return findings


_REISSUE = "re-issue the CA"


def _extension_problems(cert: x509.Certificate) -> list[tuple[str, str, str]]:
    """Basic Constraints, Key Usage and EKU problems of ``cert``."""
    try:
        extensions = cert.extensions
    except Exception as exc:  # noqa: BLE001 - duplicate or malformed extensions
        return [("parse", f"has extensions that do not parse ({exc})", "re-encode the CA")]
    out: list[tuple[str, str, str]] = []
    by_oid = {extension.oid: extension for extension in extensions}  # one pass, not three
    bc = by_oid.get(ExtensionOID.BASIC_CONSTRAINTS)
    if bc is None or not isinstance(bc.value, x509.BasicConstraints) or not bc.value.ca:
        what = "no Basic Constraints" if bc is None else "Basic Constraints cA=FALSE"
        out.append(
            (
                "basic-constraints",
                f"is not a CA certificate ({what}; cA=TRUE is required)",
                "register the CA that issues the devices' certificates (Basic Constraints "
                "CA:TRUE), not a device or server certificate",
            )
        )
    elif not bc.critical:
        out.append(
            (
                "basic-constraints",
                "has a non-critical Basic Constraints extension (the verifier requires it "
                "critical on every CA, so no chain through this one would verify)",
                f"{_REISSUE} with Basic Constraints marked critical",
            )
        )
    ku_extension = by_oid.get(ExtensionOID.KEY_USAGE)
    ku = ku_extension.value if ku_extension is not None else None
    if not isinstance(ku, x509.KeyUsage) or not ku.key_cert_sign:
        what = "has no Key Usage" if ku is None else "has Key Usage without keyCertSign"
        out.append(
            (
                "key-usage",
                f"{what} (the verifier requires keyCertSign on every CA, so no chain "
                "through this one would verify)",
                f"{_REISSUE} with Key Usage keyCertSign (and cRLSign)",
            )
        )
    eku = by_oid.get(ExtensionOID.EXTENDED_KEY_USAGE)
    if eku is not None and isinstance(eku.value, x509.ExtendedKeyUsage):
        usages = set(eku.value)
        if not usages & _CA_EKUS:
            out.append(
                (
                    "extended-key-usage",
                    "has an Extended Key Usage without clientAuth (no client certificate "
                    "under it would verify)",
                    f"{_REISSUE} without an Extended Key Usage, or with clientAuth in it",
                )
            )
        elif eku.critical:
            out.append(
                (
                    "extended-key-usage",
                    "has a critical Extended Key Usage (the verifier requires it non-critical "
                    "on a CA)",
                    f"{_REISSUE} with the Extended Key Usage non-critical, or without it",
                )
            )
    for extension in extensions:
        if extension.critical and extension.oid not in CRITICAL_OK:
            oid = extension.oid
            shown = getattr(oid, "_name", None) or oid.dotted_string
            out.append(
                (
                    "critical-extension",
                    f"has a critical {shown} extension ({oid.dotted_string}), which the "
                    "verifier does not accept critical on a CA, so no chain through this one "
                    "would verify",
                    f"{_REISSUE} with that extension non-critical, or without it",
                )
            )
    return out


_SIGNATURE_FIX = (
    "re-issue it signed with SHA-256, SHA-384 or SHA-512 (RSA PKCS#1 v1.5, RSA-PSS or ECDSA)"
)


def _algorithm_name(cert: x509.Certificate) -> str:
    oid = cert.signature_algorithm_oid
    return getattr(oid, "_name", None) or oid.dotted_string


def _signature_problems(cert: x509.Certificate, role: str) -> list[tuple[str, str, str, str]]:
    """``(level, rule, problem, fix)`` for the signature algorithm of ``cert``."""
    oid = cert.signature_algorithm_oid
    name = _algorithm_name(cert)
    if oid in SHA1_ROOT_ALGORITHMS:
        if role == "root" and _self_signed(cert):
            return [
                (
                    "warning",
                    "sha1-root",
                    f"is a self-signed root signed with {name} (accepted: a root's own "
                    "signature is never checked; every certificate below it still needs "
                    "SHA-256 or better)",
                    f"replace it with a root {_SIGNATURE_FIX.removeprefix('re-issue it ')}",
                )
            ]
        return [
            (
                "error",
                "signature-algorithm",
                f"is signed with {name} (SHA-1 is accepted only on a self-signed root, whose "
                "own signature is not checked)",
                _SIGNATURE_FIX,
            )
        ]
    if oid not in SIGNATURE_ALGORITHMS:
        return [
            (
                "error",
                "signature-algorithm",
                f"is signed with {name}, which is not on the allow-list",
                _SIGNATURE_FIX,
            )
        ]
    if oid == Sig.RSASSA_PSS:
        problem = _pss_problem(cert)
        if problem:
            return [("error", "signature-algorithm", problem, _SIGNATURE_FIX)]
    return []


def _pss_problem(cert: x509.Certificate) -> str | None:
    """Why an RSA-PSS signature's parameters are refused, or ``None``.

    The verifier accepts PSS with SHA-256/384/512, MGF1 with the same hash
    and a salt as long as the digest. The MGF1 hash and the salt length are
    read from ``cryptography``'s ``PSS`` object, which exposes them only
    as private attributes; if they are missing (another release), only the
    hash is checked here and the verifier still checks the rest per request.
    """
    try:
        digest = cert.signature_hash_algorithm
        params = cert.signature_algorithm_parameters
    except (UnsupportedAlgorithm, ValueError) as exc:
        return f"has RSA-PSS parameters that do not parse ({exc})"
    if not isinstance(digest, _PSS_HASHES):
        shown = digest.name if digest is not None else "none"
        return f"is signed with RSA-PSS over {shown} (SHA-256, SHA-384 or SHA-512 required)"
    if not isinstance(params, padding.PSS):
        return None
    mgf_hash = getattr(getattr(params, "mgf", None), "_algorithm", digest)
    salt = getattr(params, "_salt_length", digest.digest_size)
    if not isinstance(mgf_hash, type(digest)) or salt != digest.digest_size:
        mgf_name = getattr(mgf_hash, "name", "?")
        return (
            f"is signed with RSA-PSS with MGF1-{mgf_name} and a {salt!r}-byte salt (the "
            f"verifier requires MGF1 with {digest.name} and a {digest.digest_size}-byte salt)"
        )
    return None


def _self_signed(cert: x509.Certificate) -> bool:
    """Self-issued, and its signature verifies with its own key."""
    return _issued_by(cert, cert)


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """``child``'s issuer name is ``issuer``'s subject and ``issuer``'s key
    verifies its signature. ``cryptography``'s ``verify_directly_issued_by``
    checks both but refuses legacy algorithms (SHA-1, MD5); for those the
    signature is checked with the issuer's public key and the algorithm's
    own parameters (``signature_algorithm_parameters``), still by
    ``cryptography``, so that such a certificate is refused for its
    algorithm, not reported as unsigned."""
    if child.issuer != issuer.subject:
        return False
    key = hashlib.sha256(child.public_bytes(Encoding.DER))
    key.update(issuer.public_bytes(Encoding.DER))
    pair = key.digest()
    if pair in _SIGNED:
        return True
    try:
        child.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return False
    except (ValueError, TypeError, UnsupportedAlgorithm):
        if not _legacy_signature_valid(child, issuer):
            return False
    if len(_SIGNED) >= MAX_SIGNED_MEMO:
        _SIGNED.clear()
    _SIGNED[pair] = None
    return True


MAX_SIGNED_MEMO = 100_000
"""Most (certificate, issuer) pairs whose signature check is remembered."""

_SIGNED: dict[bytes, None] = {}
"""SHA-256 of (child DER, issuer DER) of each pair whose signature verified:
a pure function of the two certificates, so a reload, or a tenant rebuilt
for a fetched CRL, does not check the same signature again. Only successes
are kept (dict operations are atomic; a race at worst checks twice)."""


def _legacy_signature_valid(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        key = issuer.public_key()
        digest = child.signature_hash_algorithm
        params = child.signature_algorithm_parameters
        if digest is None:
            return False
        if isinstance(key, rsa.RSAPublicKey) and isinstance(params, padding.AsymmetricPadding):
            key.verify(child.signature, child.tbs_certificate_bytes, params, digest)
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
            key.verify(child.signature, child.tbs_certificate_bytes, params)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _key_problems(cert: x509.Certificate) -> list[tuple[str, str, str]]:
    fix = (
        f"re-issue the CA with an RSA key of {MIN_RSA_BITS} bits or more, or an EC key on "
        "P-256, P-384 or P-521"
    )
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:
        return [("key", f"has a public key that cannot be loaded ({exc})", fix)]
    algorithm = cert.public_key_algorithm_oid
    if isinstance(key, rsa.RSAPublicKey) and algorithm != PublicKeyAlgorithmOID.RSAES_PKCS1_v1_5:
        return [("key", "has an RSA-PSS-only key (the verifier accepts rsaEncryption keys)", fix)]
    if (
        isinstance(key, ec.EllipticCurvePublicKey)
        and key.curve.name in EC_CURVES
        and not any(named in cert.tbs_certificate_bytes for named in _NAMED_CURVE_IDS)
    ):
        return [
            (
                "key",
                f"has an EC key on {key.curve.name} given by explicit curve parameters (the "
                "verifier accepts only a named curve)",
                fix,
            )
        ]
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return [("key", f"has a {key.key_size}-bit RSA key (at least {MIN_RSA_BITS})", fix)]
        return []
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in EC_CURVES:
            return [
                (
                    "key",
                    f"has an EC key on {key.curve.name} (allowed: P-256, P-384, P-521)",
                    fix,
                )
            ]
        return []
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        kind = "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"
        what = f"an {kind} key (cryptography's verifier does not accept {kind} issuers)"
    elif isinstance(key, dsa.DSAPublicKey):
        what = "a DSA key"
    else:
        what = f"a {type(key).__name__} key"
    return [("key", f"has {what}; CA keys must be RSA or EC", fix)]


_DATE_REPLACE = "replace it with a valid CA certificate (or remove it)"
_DATE_FIX = f'{_DATE_REPLACE}; to load the tenant meanwhile, set ca_expired = "warn" on it'


def _date_problems(cert: x509.Certificate, now: dt.datetime) -> list[str]:
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not_after < now:
        return [f"expired on {not_after:%Y-%m-%d %H:%M:%S} UTC"]
    if not_before > now:
        return [f"is not valid before {not_before:%Y-%m-%d %H:%M:%S} UTC"]
    return []


def chain_check_budget(intermediates: int) -> int:
    """How many signature checks of the chain rule may fail for a tenant
    with ``intermediates`` intermediates: a failure needs two CAs of the
    tenant with one name (a rotation), so a real tenant stays far below."""
    return 2 * intermediates + 16


def _chain_findings(
    tenant_id: str,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    sources: Sequence[str],
) -> list[Finding]:
    """An error for each intermediate that does not chain to a root of the
    tenant through the tenant's certificates (by name, then signature).

    Work is bounded: candidate issuers are found by name (a dict), each
    (certificate, candidate) pair is checked once, and after
    :func:`chain_check_budget` failed signature checks the remaining
    intermediates are reported unchecked."""
    by_issuer: dict[x509.Name, list[int]] = {}
    for position, cert in enumerate(intermediates):
        by_issuer.setdefault(cert.issuer, []).append(position)
    pending = set(range(len(intermediates)))
    queue = list(roots)
    failures_left = chain_check_budget(len(intermediates))
    exhausted = False
    while queue and pending and not exhausted:
        issuer = queue.pop()
        for position in by_issuer.get(issuer.subject, ()):
            if position not in pending:
                continue
            if failures_left <= 0:
                exhausted = True
                break
            if _issued_by(intermediates[position], issuer):  # the name matches: signature
                pending.discard(position)
                queue.append(intermediates[position])
            else:
                failures_left -= 1
    if exhausted:
        return [
            Finding(
                "error",
                "chain",
                tenant_id,
                f"has {len(pending)} intermediate(s) left unchecked: more than "
                f"{chain_check_budget(len(intermediates))} of its CAs' signature checks failed "
                "(many CAs of the tenant share a name)",
                "give the tenant only the CAs its devices chain to (distinct names), or split it",
            )
        ]
    subjects = {c.subject for c in (*roots, *intermediates)}
    pending_items = [(len(roots) + i, intermediates[i]) for i in sorted(pending)]
    findings = []
    for position, cert in pending_items:
        if cert.signature_algorithm_oid not in _CHECKABLE:
            continue  # refused for its algorithm already; its signature cannot be checked
        issuer_name = cert.issuer.rfc4514_string()
        why = (
            f"a CA of the tenant is named {issuer_name!r} but none of its keys signed it"
            if cert.issuer in subjects
            else f"no root or intermediate of the tenant is its issuer {issuer_name!r}"
        )
        findings.append(
            Finding(
                "error",
                "chain",
                tenant_id,
                f"does not chain to any of the tenant's roots ({why})",
                "add the CA that issued it (and the CAs above it, up to one of the tenant's "
                "roots) to the tenant, or remove it from the tenant",
                "intermediate",
                *_names(cert),
                sources[position] if position < len(sources) else None,
            )
        )
    return findings
