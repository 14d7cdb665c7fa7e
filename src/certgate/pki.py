"""Operator PKI: the cfssl steps of the reference setup, done by certgate.

The reference flow (Cloudflare Access's mTLS guide) makes a root CA with
cfssl, issues client certificates from it, and hands devices a certificate
and key that ``curl --cert/--key`` or a browser (PKCS#12) can use. These
functions do the same with ``cryptography`` and are what ``certgate pki``
runs:

* :func:`init_ca` - a self-signed root CA: RSA 4096, EC P-256 or EC P-384;
  Basic Constraints ``CA:TRUE`` (critical), Key Usage ``keyCertSign`` and
  ``cRLSign`` (critical), SHA-256 (SHA-384 for P-384) signatures;
* :func:`issue_client` - a client certificate from a CA: ``clientAuth``
  EKU, Key Usage ``digitalSignature``, the CN and SANs you give (DNS, URI -
  SPIFFE IDs included -, e-mail, IP), a fresh key of its own;
* :func:`write_private_key` / :func:`write_pkcs12` - key files are created
  with mode 0600 and never overwrite an existing file (a lost CA key cannot
  be recovered; an overwritten one is a lost one);
* :func:`revoke` / :func:`make_crl` - a JSON revocation database per CA
  (serial, date, reason of each revoked certificate, and the last CRL
  Number) and CRLs signed by the CA from it: CRL Number one higher each
  time, Authority Key Identifier, Reason Code entries, thisUpdate one minute
  in the past (for servers whose clock is slightly behind) and nextUpdate
  ``days`` later.

What is **not** here: vetting of CAs you did not make with :func:`init_ca`
belongs to the registry; a CA key on disk is protected
only by its file mode and an optional passphrase - an HSM or a cloud KMS is
the production answer for a CA that signs many devices.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from .devpki import CA, IssuedCert, PrivateKey
from .errors import ConfigError

KEY_TYPES: dict[str, tuple[str, int]] = {
    "rsa4096": ("rsa", 4096),
    "ec256": ("ec", 0),
    "ec384": ("ec384", 0),
}
"""``--key-type`` values -> :func:`certgate.devpki.make_key` arguments."""

CLIENT_KEY_TYPES: dict[str, tuple[str, int]] = {**KEY_TYPES, "rsa2048": ("rsa", 2048)}

MAX_CA_DAYS = 36500
MAX_CLIENT_DAYS = 3650


def _check_days(days: int, limit: int, what: str) -> None:
    if not 1 <= days <= limit:
        raise ConfigError(f"{what}: --days must be between 1 and {limit}, not {days}")


def _key_args(key_type: str, table: dict[str, tuple[str, int]]) -> tuple[str, int]:
    try:
        return table[key_type]
    except KeyError:
        known = ", ".join(table)
        raise ConfigError(f"unknown key type {key_type!r} (known: {known})") from None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def init_ca(
    common_name: str,
    *,
    organization: str | None = None,
    key_type: str = "ec256",
    days: int = 3650,
    path_length: int | None = None,
) -> CA:
    """A new self-signed root CA valid from one hour ago for ``days`` days."""
    _check_days(days, MAX_CA_DAYS, "init-ca")
    kind, bits = _key_args(key_type, KEY_TYPES)
    now = _now()
    return CA.root(
        common_name,
        organization=organization,
        key_type=kind,
        rsa_bits=bits or 2048,
        not_before=now - dt.timedelta(hours=1),
        not_after=now + dt.timedelta(days=days),
        path_length=path_length,
        signature_hash=_hash_for(key_type),
    )


def _hash_for(key_type: str) -> hashes.HashAlgorithm:
    return hashes.SHA384() if key_type == "ec384" else hashes.SHA256()


def load_ca(cert_path: str | Path, key_path: str | Path, passphrase: bytes | None = None) -> CA:
    """A CA from its PEM certificate and PEM private key (PKCS#8 or
    traditional, optionally encrypted). Refuses a certificate that is not a
    CA able to sign certificates, or a key that does not match it."""
    from .config import MAX_PEM_FILE_BYTES, read_regular_file  # noqa: PLC0415 - avoid a cycle

    cert_data = read_regular_file(str(cert_path), MAX_PEM_FILE_BYTES, "CA certificate")
    key_data = read_regular_file(str(key_path), MAX_PEM_FILE_BYTES, "CA key")
    try:
        cert = x509.load_pem_x509_certificate(cert_data)
    except ValueError as exc:
        raise ConfigError(f"{cert_path}: not a PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_data, passphrase)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key_path}: cannot load the private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path}: only RSA and EC CA keys are supported")
    spki = _spki(key.public_key())
    if not spki or spki != _spki(cert.public_key()):
        raise ConfigError(f"{key_path} is not the key of {cert_path}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise ConfigError(f"{cert_path}: not a CA (no Basic Constraints or Key Usage)") from None
    if not constraints.ca or not usage.key_cert_sign:
        raise ConfigError(f"{cert_path}: not a CA (needs CA:TRUE and keyCertSign)")
    return CA(cert=cert, key=key, issuers=(), is_root=cert.issuer == cert.subject)


def _spki(public_key: object) -> bytes:
    public_bytes = getattr(public_key, "public_bytes", None)
    if public_bytes is None:
        return b""
    return bytes(
        public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def issue_client(
    ca: CA,
    common_name: str,
    *,
    dns: Iterable[str] = (),
    uri: Iterable[str] = (),
    email: Iterable[str] = (),
    ip: Iterable[str] = (),
    organization: str | None = None,
    key_type: str = "ec256",
    days: int = 365,
) -> IssuedCert:
    """A client certificate for ``common_name``, valid from one hour ago for
    ``days`` days but never past the CA's own notAfter."""
    _check_days(days, MAX_CLIENT_DAYS, "issue-client")
    kind, bits = _key_args(key_type, CLIENT_KEY_TYPES)
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    if not_after <= now:
        raise ConfigError("the CA has expired: it cannot issue certificates")
    try:
        return ca.issue(
            common_name,
            organization=organization,
            dns=list(dns),
            uri=list(uri),
            email=list(email),
            ip=list(ip),
            key_type=kind,
            rsa_bits=bits or 2048,
            not_before=now - dt.timedelta(hours=1),
            not_after=not_after,
        )
    except ValueError as exc:  # a malformed SAN (an IP that is not one, ...)
        raise ConfigError(f"issue-client: {exc}") from None


def _create(path: Path, data: bytes, mode: int, *, force: bool) -> None:
    """Write ``data`` to a new file created with ``mode``, refusing to
    replace an existing one (a symlink included) unless ``force``. With
    ``force`` the file is written under a temporary name and renamed over
    ``path``: an existing ``path`` - a symlink, or a hard link to a file
    someone else can read - is replaced, never written through."""
    if force:
        _write_atomically(path, data, mode)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"{path} exists: not overwriting it (use --force)") from None
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)


def write_certificate(path: Path, pem: bytes, *, force: bool = False) -> None:
    """Write a PEM certificate (mode 0644)."""
    _create(path, pem, 0o644, force=force)


def write_private_key(
    path: Path, key: PrivateKey, *, passphrase: bytes | None = None, force: bool = False
) -> None:
    """Write ``key`` as PKCS#8 PEM (encrypted with ``passphrase`` when given),
    in a new file with mode 0600."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    _create(path, data, 0o600, force=force)


def write_pkcs12(path: Path, issued: IssuedCert, passphrase: bytes, *, force: bool = False) -> None:
    """A PKCS#12 bundle (key, certificate, intermediates) for browsers and
    ``curl --cert-type P12``: AES-256-CBC with PBKDF2-SHA256, mode 0600."""
    if not passphrase:
        raise ConfigError("a PKCS#12 bundle needs a passphrase (--p12-passphrase-file)")
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(100_000)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(passphrase)
    )
    key = issued.key
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError("PKCS#12 bundles are written for RSA and EC keys only")
    name = issued.cert.subject.rfc4514_string().encode("utf-8")[:200]
    data = pkcs12.serialize_key_and_certificates(
        name, key, issued.cert, list(issued.issuers) or None, encryption
    )
    _create(path, data, 0o600, force=force)


REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    flag.value: flag for flag in x509.ReasonFlags if flag is not x509.ReasonFlags.remove_from_crl
}
"""``--reason`` values (RFC 5280 names: ``keyCompromise``, ``superseded``, ...)."""

MAX_CRL_DAYS = 366
_DB_VERSION = 1
MAX_DB_BYTES = 64 * 1024 * 1024


def _ca_id(ca: CA) -> str:
    return hashlib.sha256(_spki(ca.cert.public_key())).hexdigest()


def read_revocations(path: Path, ca: CA) -> dict[str, Any]:
    """The revocation database at ``path`` for ``ca`` (a new, empty one if
    the file does not exist). :class:`ConfigError` if it is not one, or
    belongs to another CA."""
    from .config import read_regular_file  # noqa: PLC0415 - avoid a cycle

    if not path.exists():
        return {
            "version": _DB_VERSION,
            "issuer": ca.cert.subject.rfc4514_string(),
            "issuer_key_sha256": _ca_id(ca),
            "crl_number": 0,
            "revoked": [],
        }
    data = read_regular_file(str(path), MAX_DB_BYTES, "revocation database")
    try:
        db = json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"{path}: not a revocation database (invalid JSON: {exc})") from None
    if (
        not isinstance(db, dict)
        or db.get("version") != _DB_VERSION
        or not isinstance(db.get("revoked"), list)
        or not isinstance(db.get("crl_number"), int)
    ):
        raise ConfigError(f"{path}: not a certgate revocation database")
    if db.get("issuer_key_sha256") != _ca_id(ca):
        raise ConfigError(
            f"{path} belongs to another CA ({db.get('issuer')!r}), not to "
            f"{ca.cert.subject.rfc4514_string()!r}"
        )
    return db


def _write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (in a new file with ``mode``) so that
    a reader sees the old or the new content, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the revocation database ``path`` (``flock``
    on a ``.NAME.lock`` file beside it) for a read-modify-write: two
    ``pki revoke`` / ``pki crl`` at once then run one after the other,
    instead of the later write dropping the earlier one's revocation (or
    both CRLs having one number). Not a lock on systems without ``fcntl``."""
    lock = path.parent / f".{path.name}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConfigError(f"{lock}: cannot open the lock file ({exc.strerror})") from None
    try:
        try:
            import fcntl  # noqa: PLC0415 - POSIX only
        except ImportError:  # pragma: no cover - not POSIX
            pass
        else:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_revocations(path: Path, db: dict[str, Any]) -> None:
    """Write the revocation database (atomically)."""
    _write_atomically(path, json.dumps(db, indent=2, sort_keys=True).encode() + b"\n")


def revoke(
    ca: CA,
    db: dict[str, Any],
    *,
    cert: x509.Certificate | None = None,
    serial: int | None = None,
    reason: str = "unspecified",
    when: dt.datetime | None = None,
) -> bool:
    """Record the revocation of ``cert`` (which ``ca`` must have issued) or
    of ``serial`` in ``db``; returns ``False`` if it was already recorded."""
    if reason not in REVOCATION_REASONS:
        raise ConfigError(f"unknown reason {reason!r} (known: {', '.join(REVOCATION_REASONS)})")
    if cert is not None:
        if cert.issuer != ca.cert.subject:
            raise ConfigError("the certificate was not issued by this CA (issuer name differs)")
        try:
            cert.verify_directly_issued_by(ca.cert)
        except Exception:  # noqa: BLE001 - InvalidSignature, ValueError, TypeError
            raise ConfigError("the certificate was not issued by this CA (signature)") from None
        serial = cert.serial_number
    if serial is None or serial <= 0:
        raise ConfigError("give the certificate to revoke (--cert) or its serial (--serial)")
    hex_serial = format(serial, "x")
    if any(entry.get("serial") == hex_serial for entry in db["revoked"]):
        return False
    entry: dict[str, Any] = {
        "serial": hex_serial,
        "revoked_at": (when or _now()).isoformat(),
        "reason": reason,
    }
    if cert is not None:
        entry["subject"] = cert.subject.rfc4514_string()
    db["revoked"].append(entry)
    return True


def make_crl(
    ca: CA, db: dict[str, Any], *, days: int = 7, now: dt.datetime | None = None
) -> x509.CertificateRevocationList:
    """A CRL of every revocation in ``db``, signed by ``ca``, with the next
    CRL Number (``db["crl_number"]`` is incremented: write ``db`` back)."""
    if not 1 <= days <= MAX_CRL_DAYS:
        raise ConfigError(f"crl: --days must be between 1 and {MAX_CRL_DAYS}, not {days}")
    try:
        usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.crl_sign:
        raise ConfigError(
            f"{ca.cert.subject.rfc4514_string()!r} may not sign CRLs (Key Usage without "
            "cRLSign): a tenant would refuse its CRL - sign CRLs with a CA that has cRLSign"
        )
    now = now or _now()
    number = int(db["crl_number"]) + 1
    revoked = []
    for entry in db["revoked"]:
        try:
            serial = int(entry["serial"], 16)
            date = dt.datetime.fromisoformat(entry["revoked_at"])
            reason = REVOCATION_REASONS[entry.get("reason", "unspecified")]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"a malformed revocation entry {entry!r:.200}: {exc!r}") from None
        item = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(date)
        if reason is not x509.ReasonFlags.unspecified:  # RFC 5280: omit rather than unspecified
            item = item.add_extension(x509.CRLReason(reason), critical=False)
        revoked.append(item.build())
    # All entries at once: add_revoked_certificate() copies the list each time.
    builder = (
        x509.CertificateRevocationListBuilder(revoked_certificates=revoked)
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_aki(ca), critical=False)
    )
    key = ca.key
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError("only RSA and EC CA keys can sign CRLs here")
    algorithm: hashes.SHA256 | hashes.SHA384 = (
        hashes.SHA384()
        if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384
        else hashes.SHA256()
    )
    crl = builder.sign(key, algorithm)
    db["crl_number"] = number
    return crl


def _aki(ca: CA) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def write_crl(path: Path, crl: x509.CertificateRevocationList, *, der: bool = False) -> None:
    """Write ``crl`` (PEM, or DER) atomically: a server reading the file
    meanwhile sees the old CRL or the new one."""
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    _write_atomically(path, crl.public_bytes(encoding))
