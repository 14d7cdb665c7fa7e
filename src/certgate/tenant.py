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

import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.verification import Store

from .errors import ConfigError
from .hosts import normalize_pattern
from .rollout import parse_mode

if TYPE_CHECKING:
    from .policy import Policy

_TRUST_ID_VERSION = b"certgate-trust-v1"
_ANCHOR_KEY_VERSION = b"certgate-anchor-v1"


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
        return cls(cert, hashlib.sha256(cert.public_bytes(Encoding.DER)).digest(), name_key(cert))

    @property
    def subject(self) -> str:
        """RFC 4514 subject, for messages."""
        return self.cert.subject.rfc4514_string()


def name_key(cert: x509.Certificate) -> bytes:
    """SHA-256 over (subject DER, SubjectPublicKeyInfo DER), length-prefixed."""
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


def vet_ca_certificate(cert: x509.Certificate, role: str, tenant_id: str) -> None:
    """Refuse a certificate that is not a CA as a root or intermediate.

    A leaf registered as a "root" would otherwise be accepted as a client
    certificate on its own (the verifier treats anything in the store as a
    trust anchor). Checked: Basic Constraints present with ``cA=TRUE``, and
    Key Usage, when present, includes ``keyCertSign``.
    """
    subject = cert.subject.rfc4514_string()
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise ConfigError(
            f"tenant {tenant_id!r}: {role} {subject!r} is not a CA certificate "
            "(Basic Constraints cA=TRUE is required)"
        )
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign:
        raise ConfigError(
            f"tenant {tenant_id!r}: {role} {subject!r} has Key Usage without keyCertSign"
        )


@dataclass(frozen=True, eq=False)
class Tenant:
    """One customer: an id, the hosts it answers on and the CAs it trusts.

    ``id`` follows :data:`TENANT_ID_RULE` (else :class:`ConfigError`);
    ``hosts`` are exact names or ``*.example.com`` patterns (one label);
    ``roots`` are the trust anchors (several during a rotation);
    ``intermediates`` are optional CA certificates used to build paths when
    clients do not send them. Every root and intermediate is vetted as a CA.

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
    """

    id: str
    hosts: tuple[str, ...]
    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    shared_anchors: bool = False
    policy: Policy | None = field(default=None, compare=False)
    mode: str | None = None
    trust_id: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_tenant_id(self.id)
        if self.mode is not None:
            object.__setattr__(self, "mode", parse_mode(self.mode, f"tenant {self.id!r}"))
        if not self.roots:
            raise ConfigError(f"tenant {self.id!r} has no root CA")
        if not isinstance(self.shared_anchors, bool):
            raise ConfigError(f"tenant {self.id!r}: shared_anchors must be a bool")
        object.__setattr__(self, "hosts", tuple(normalize_pattern(h) for h in self.hosts))
        object.__setattr__(self, "roots", tuple(self.roots))
        object.__setattr__(self, "intermediates", tuple(self.intermediates))
        for root in self.roots:
            vet_ca_certificate(root, "root", self.id)
        for inter in self.intermediates:
            vet_ca_certificate(inter, "intermediate", self.id)
        digest = hashlib.sha256(_TRUST_ID_VERSION)
        digest.update(self.id.encode())
        for group in (self.roots, self.intermediates):
            digest.update(b"|%d|" % len(group))
            for cert in group:
                der = cert.public_bytes(Encoding.DER)
                digest.update(b"%d:" % len(der))
                digest.update(der)
        object.__setattr__(self, "trust_id", digest.digest())

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
    ) -> Tenant:
        """Build a tenant from PEM text (one string may hold several certificates)."""
        return cls(
            id=id,
            hosts=tuple(hosts),
            roots=tuple(_load_pems(roots, id, "roots")),
            intermediates=tuple(_load_pems(intermediates, id, "intermediates")),
            shared_anchors=shared_anchors,
            policy=policy,
            mode=mode,
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
