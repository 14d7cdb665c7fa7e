"""Tenants: who a request is addressed to, and which CAs that tenant trusts.

A :class:`Tenant` is immutable. Changing a tenant's trust means building a new
``Tenant``; its :attr:`Tenant.trust_id` changes with it, which is what keeps
cached verification results of the old trust from being used for the new one.

Anchor identity (:class:`Anchor`): two root certificates are the same trust
anchor when their DER is identical, or when they have the same subject and
the same public key (a re-issued root with new dates, say: a path verifies to
either). The registry uses it to refuse tenants that share an anchor by
accident (see :mod:`certgate.registry`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.verification import Store

from . import certmemo
from .crl import STALE_MODES, Revocation, load_crls, vet_crl
from .errors import ConfigError
from .hosts import normalize_pattern
from .rollout import parse_mode
from .vetting import Finding, check_ca_expired, check_cas, lenient_dates

if TYPE_CHECKING:
    from .policy import Policy

_TRUST_ID_VERSION = b"certgate-trust-v1"
_CRL_PART = b"certgate-crl-v1"

MIN_CRL_REFRESH = 10.0
MAX_CRL_REFRESH = 7 * 86400.0
_ANCHOR_KEY_VERSION = b"certgate-anchor-v1"

_PREVETTED: ContextVar[bool] = ContextVar("certgate_prevetted", default=False)


@contextlib.contextmanager
def prevetted() -> Iterator[None]:
    """Build tenants whose CA certificates were vetted when they were stored.

    Inside this block, :class:`Tenant` skips the CA vetting of
    :mod:`certgate.vetting` (no ``ca_warnings``) and takes ``hosts`` as
    already normalised. Only for a tenant store (:mod:`certgate.stores`)
    rebuilding tenants it vetted at write time: a CA that has expired since
    is then refused by the verifier, per request (``untrusted_chain``), not
    by a failing lookup. CRLs are still checked and indexed (that finds
    their issuers)."""
    token = _PREVETTED.set(True)
    try:
        yield
    finally:
        _PREVETTED.reset(token)


@dataclass(frozen=True)
class Anchor:
    """The identity of one trust anchor (a tenant root).

    ``fingerprint``: SHA-256 of the certificate's DER. ``name_key``: SHA-256
    over the subject and the SubjectPublicKeyInfo, so the same CA re-issued
    with other dates or extensions has the same ``name_key``.
    """

    cert: x509.Certificate
    fingerprint: bytes
    name_key: bytes

    @classmethod
    def of(cls, cert: x509.Certificate) -> Anchor:
        """The identity of ``cert``."""
        return cls(cert, certmemo.sha256_of(cert), name_key(cert))

    @property
    def subject(self) -> str:
        """RFC 4514 subject, for messages."""
        return self.cert.subject.rfc4514_string()


def name_key(cert: x509.Certificate) -> bytes:
    """SHA-256 over (subject DER, SubjectPublicKeyInfo DER), length-prefixed
    (remembered during an import: :mod:`certgate.certmemo`)."""
    return certmemo.name_key_of(cert, _name_key)


def _name_key(cert: x509.Certificate) -> bytes:
    digest = hashlib.sha256(_ANCHOR_KEY_VERSION)
    for part in (
        cert.subject.public_bytes(),
        cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
    ):
        digest.update(b"%d:" % len(part))
        digest.update(part)
    return digest.digest()


TENANT_ID_RULE = (
    "1 to 128 characters of ASCII letters, digits and . _ : @ -, starting with a letter or digit"
)
"""The tenant id grammar, in words (``acme``, ``org:123``, a UUID, ``eu.acme``)."""

_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def check_tenant_id(tenant_id: object) -> str:
    """Return ``tenant_id`` if it follows :data:`TENANT_ID_RULE`, else raise
    :class:`ConfigError` saying the rule. Ids are case-sensitive.

    The grammar keeps ids safe to print and log as they are: no spaces,
    control characters, line breaks or non-ASCII look-alikes.
    """
    if not isinstance(tenant_id, str):
        raise ConfigError(f"a tenant id must be a string, not {type(tenant_id).__name__}")
    if not _TENANT_ID.fullmatch(tenant_id):
        raise ConfigError(f"invalid tenant id {tenant_id[:80]!r}: a tenant id is {TENANT_ID_RULE}")
    return tenant_id


@dataclass(frozen=True, eq=False)
class Tenant:
    """One customer: an id, the hosts it answers on and the CAs it trusts.

    ``id`` follows :data:`TENANT_ID_RULE` (else :class:`ConfigError`);
    ``hosts`` are exact names or ``*.example.com`` patterns (one label);
    ``roots`` are the trust anchors (several during a rotation);
    ``intermediates`` are optional CA certificates used to build paths when
    clients do not send them. Every root and intermediate is vetted when the
    tenant is built (:mod:`certgate.vetting`: CA flags, signature algorithm,
    key, dates, intermediates chaining to the roots): a failure is a
    :class:`~certgate.vetting.CaVettingError` (a :class:`ConfigError`), a
    warning is logged. ``ca_expired``: ``"fail"`` (default) refuses an
    expired or not-yet-valid root or intermediate, ``"warn"`` logs it and
    builds the tenant. ``ca_sources``: optional names of where each of
    ``roots`` then ``intermediates`` came from (files), for messages.

    ``shared_anchors=True`` declares that this tenant knowingly shares a
    trust anchor with other tenants (devices of one PKI valid on several
    tenants). A registry refuses two tenants with a common anchor, or one
    whose anchor issued the other's, unless *both* declare it. It is not part
    of :attr:`trust_id`: it decides whether a configuration loads, never how
    a chain verifies.

    ``policy`` is the tenant's default authorization policy (see
    :mod:`certgate.policy`): every certificate of the tenant must satisfy it
    on every path, and route policies add to it. ``mode`` is the tenant's
    enforcement mode (``"enforce"``, ``"report"``, or ``None`` for the
    gate's; see :mod:`certgate.rollout`). Neither is part of
    :attr:`trust_id`: both are applied after verification, per request.

    Revocation (see :mod:`certgate.crl`): ``crls`` are CRLs of the tenant's
    roots and intermediates (``crl_labels``: optional names for them in
    error messages, a file name say), each vetted here - a CRL that fails
    vetting is a :class:`ConfigError`. ``crl_urls`` are HTTP(S) URLs of
    CRLs fetched every ``crl_refresh`` seconds by a
    :class:`~certgate.crlfetch.CrlRefresher`, which swaps in a new tenant
    (``fetched_crls``: the last good CRL of each URL) - until a URL's
    first fetch, every chain of the tenant is ``revocation_unavailable``.
    ``crl_stale``: ``"fail"`` (default) refuses a chain whose CRL is stale
    (``revocation_unavailable``); ``"warn"`` logs and allows it.
    ``require_crl``: refuse a chain with an issuer that has no CRL (by
    default such an issuer is not checked). The CRLs and these settings
    are part of :attr:`trust_id`: a tenant with another CRL never reuses a
    cached verification of the old one.
    """

    id: str
    hosts: tuple[str, ...]
    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    shared_anchors: bool = False
    policy: Policy | None = field(default=None, compare=False)
    mode: str | None = None
    crls: tuple[x509.CertificateRevocationList, ...] = field(default=(), repr=False)
    crl_urls: tuple[str, ...] = ()
    crl_refresh: float = 3600.0
    crl_stale: str = "fail"
    require_crl: bool = False
    crl_labels: tuple[str, ...] = field(default=(), repr=False)
    ca_expired: str = "fail"
    ca_sources: tuple[str, ...] = field(default=(), repr=False)
    fetched_crls: tuple[tuple[str, x509.CertificateRevocationList], ...] = field(
        default=(), repr=False
    )
    trust_id: bytes = field(init=False, repr=False)
    revocation: Revocation | None = field(init=False, repr=False)
    """The vetted, indexed CRLs (``None``: the tenant checks no revocation)."""
    ca_warnings: tuple[Finding, ...] = field(init=False, repr=False)
    """The warnings of CA vetting (:mod:`certgate.vetting`), logged once."""

    def __post_init__(self) -> None:
        check_tenant_id(self.id)
        if self.mode is not None:
            object.__setattr__(self, "mode", parse_mode(self.mode, f"tenant {self.id!r}"))
        if not self.roots:
            raise ConfigError(f"tenant {self.id!r} has no root CA")
        if not isinstance(self.shared_anchors, bool):
            raise ConfigError(f"tenant {self.id!r}: shared_anchors must be a bool")
        vetted = _PREVETTED.get()
        hosts = tuple(self.hosts) if vetted else tuple(normalize_pattern(h) for h in self.hosts)
        object.__setattr__(self, "hosts", hosts)
        object.__setattr__(self, "roots", tuple(self.roots))
        object.__setattr__(self, "intermediates", tuple(self.intermediates))
        object.__setattr__(self, "ca_sources", tuple(self.ca_sources))
        check_ca_expired(self.ca_expired, f"tenant {self.id!r}")
        warnings = (
            []
            if vetted
            else check_cas(
                self.id,
                self.roots,
                self.intermediates,
                ca_expired=self.ca_expired,
                sources=self.ca_sources,
            )
        )
        object.__setattr__(self, "ca_warnings", tuple(warnings))
        digest = hashlib.sha256(_TRUST_ID_VERSION)
        digest.update(self.id.encode())
        for group in (self.roots, self.intermediates):
            digest.update(b"|%d|" % len(group))
            for cert in group:
                der = certmemo.der_of(cert)
                digest.update(b"%d:" % len(der))
                digest.update(der)
        revocation = self._revocation()
        if revocation is not None:
            self._digest_crls(digest)
        object.__setattr__(self, "revocation", revocation)
        object.__setattr__(self, "trust_id", digest.digest())

    def _revocation(self) -> Revocation | None:
        """Check the CRL settings, vet every CRL, and index them."""
        object.__setattr__(self, "crls", tuple(self.crls))
        object.__setattr__(self, "crl_urls", tuple(self.crl_urls))
        object.__setattr__(self, "crl_labels", tuple(self.crl_labels))
        object.__setattr__(self, "fetched_crls", tuple(self.fetched_crls))
        where = f"tenant {self.id!r}"
        if self.crl_stale not in STALE_MODES:
            raise ConfigError(
                f'{where}: crl_stale must be "fail" or "warn", not {self.crl_stale!r:.40}'
            )
        if not isinstance(self.require_crl, bool):
            raise ConfigError(f"{where}: require_crl must be a bool")
        refresh = self.crl_refresh
        if (
            isinstance(refresh, bool)
            or not isinstance(refresh, int | float)
            or not MIN_CRL_REFRESH <= refresh <= MAX_CRL_REFRESH
        ):
            raise ConfigError(
                f"{where}: crl_refresh must be a number of seconds from {MIN_CRL_REFRESH:g} "
                f"to {MAX_CRL_REFRESH:g}, not {refresh!r:.40}"
            )
        for url in self.crl_urls:
            check_crl_url(url, where)
        if not (self.crls or self.crl_urls or self.require_crl):
            if self.fetched_crls:
                raise ConfigError(f"{where}: fetched_crls without crl_urls")
            return None
        cas = self.roots + self.intermediates
        records = []
        for position, crl in enumerate(self.crls):
            label = (
                self.crl_labels[position]
                if position < len(self.crl_labels)
                else f"{where}: CRL #{position + 1}"
            )
            records.append(vet_crl(crl, cas, label))
        fetched = set()
        for url, crl in self.fetched_crls:
            if url not in self.crl_urls:
                raise ConfigError(f"{where}: fetched CRL of {url!r}, which is not in crl_urls")
            fetched.add(url)
            records.append(vet_crl(crl, cas, f"{where}: CRL from {url}"))
        pending = tuple(url for url in self.crl_urls if url not in fetched)
        return Revocation(
            records, cas, pending=pending, stale=self.crl_stale, require=self.require_crl
        )

    def _digest_crls(self, digest: hashlib._Hash) -> None:
        """Add the CRLs and the revocation settings to the trust id."""
        digest.update(_CRL_PART)
        parts = [self.crl_stale.encode(), b"%d" % self.require_crl]
        parts += [url.encode() for url in self.crl_urls]
        parts += [crl.public_bytes(Encoding.DER) for crl in self.crls]
        for url, crl in self.fetched_crls:
            parts += [url.encode(), crl.public_bytes(Encoding.DER)]
        digest.update(b"|%d|" % len(parts))
        for part in parts:
            digest.update(b"%d:" % len(part))
            digest.update(part)

    def with_fetched_crls(
        self, fetched: Iterable[tuple[str, x509.CertificateRevocationList]]
    ) -> Tenant:
        """This tenant with ``fetched`` as the CRLs of its ``crl_urls``
        (vetted again: :class:`ConfigError` if one fails). Its CAs are the
        ones vetted when the tenant was registered: not logged again, and a
        CA that expired since is not a reason to stop applying new CRLs
        (with ``ca_expired = "fail"`` that would freeze revocation until a
        restart; the verifier refuses every chain through the expired CA
        anyway)."""
        with lenient_dates():
            return dataclasses.replace(self, fetched_crls=tuple(fetched))

    @classmethod
    def from_pem(
        cls,
        id: str,
        hosts: Iterable[str],
        roots: str | bytes | Sequence[str | bytes],
        intermediates: str | bytes | Sequence[str | bytes] = (),
        *,
        shared_anchors: bool = False,
        policy: Policy | None = None,
        mode: str | None = None,
        crls: Sequence[bytes] = (),
        crl_urls: Sequence[str] = (),
        crl_refresh: float = 3600.0,
        crl_stale: str = "fail",
        require_crl: bool = False,
        ca_expired: str = "fail",
    ) -> Tenant:
        """Build a tenant from PEM text (one string may hold several
        certificates). ``crls``: CRLs as PEM or DER bytes (one item may hold
        several PEM CRLs); the other settings as on the class."""
        loaded = [
            crl
            for position, data in enumerate(crls, 1)
            for crl in load_crls(data, f"tenant {id!r}: CRL #{position}")
        ]
        return cls(
            id=id,
            hosts=tuple(hosts),
            roots=tuple(_load_pems(roots, id, "roots")),
            intermediates=tuple(_load_pems(intermediates, id, "intermediates")),
            shared_anchors=shared_anchors,
            policy=policy,
            mode=mode,
            crls=tuple(loaded),
            crl_urls=tuple(crl_urls),
            crl_refresh=crl_refresh,
            crl_stale=crl_stale,
            require_crl=require_crl,
            ca_expired=ca_expired,
        )

    @functools.cached_property
    def store(self) -> Store:
        """The tenant's roots as a ``cryptography`` verification store (built once)."""
        return Store(list(self.roots))

    @functools.cached_property
    def anchors(self) -> tuple[Anchor, ...]:
        """The identities of :attr:`roots` (computed once)."""
        return tuple(Anchor.of(root) for root in self.roots)

    @functools.cached_property
    def ca_name_keys(self) -> tuple[tuple[x509.Certificate, bytes], ...]:
        """Every root and intermediate with its :func:`name_key` (computed
        once, not on every registry change)."""
        roots = tuple((anchor.cert, anchor.name_key) for anchor in self.anchors)
        return roots + tuple((cert, name_key(cert)) for cert in self.intermediates)


def check_crl_url(url: object, where: str) -> str:
    """``url`` if it is an ``http://`` or ``https://`` URL with a host, else
    :class:`ConfigError`."""
    if not isinstance(url, str) or len(url) > 2048:
        raise ConfigError(f"{where}: a CRL URL must be a string of at most 2048 characters")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: CRL URL {url[:200]!r} is not an http:// or https:// URL")
    if not url.isprintable() or " " in url:
        raise ConfigError(f"{where}: CRL URL {url[:200]!r} holds spaces or control characters")
    return url


def load_pem_certificates(data: bytes, where: str) -> list[x509.Certificate]:
    """Every certificate in PEM ``data``; :class:`ConfigError` naming ``where``
    when there is none."""
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{where} holds no valid PEM certificate") from None


def _load_pems(
    value: str | bytes | Sequence[str | bytes], tenant_id: str, what: str
) -> list[x509.Certificate]:
    items: Sequence[str | bytes] = [value] if isinstance(value, str | bytes) else value
    certs: list[x509.Certificate] = []
    for item in items:
        data = item.encode() if isinstance(item, str) else item
        certs.extend(load_pem_certificates(data, f"tenant {tenant_id!r}: {what}"))
    return certs
