"""The anchor-sharing rule, enforced at write time with indexed queries.

:func:`certgate.registry.check_anchor_sharing` checks a whole set of
tenants in memory. A store with a million tenants cannot load them all for
every write, so :func:`check_written` checks one tenant just written (its
rows already in place, in the write's transaction) against the stored ones,
through :class:`AnchorQueries` - every query an index seek:

1. **Shared anchors.** No other tenant has a root with the same SHA-256 or
   the same subject and public key (``name_key``) as one of the tenant's
   roots, unless both declare ``shared_anchors``.
2. **Issued anchors.** No anchor of one tenant is issued by an anchor of
   another (undeclared) tenant, through stored CA certificates. A write can
   only create such a path if the path passes through one of the written
   tenant's certificates or through a certificate with the subject and key
   of one of its anchors; so the check walks *down* (certificates whose
   issuer is the subject, signature checked) from those, at most
   ``_MAX_ISSUER_HOPS`` steps, collects every anchored identity found, and
   walks *up* from each such anchor's forms exactly as the in-memory check
   does. For a pair of identities (A issued by B) it asks for up to two
   owners of each, which decides "some owner of A and some other owner of
   B, one of them not declaring ``shared_anchors``" in four seeks, however
   many tenants share A or B.

Same coverage as the in-memory check (and the same limits: links that only
exist in certificates clients send are not known here). Signature checks
are memoised per store (bounded).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from .. import certmemo
from ..errors import ConfigError
from ..tenant import Tenant

_MAX_ISSUER_HOPS = 8
"""As :data:`certgate.registry._MAX_ISSUER_HOPS`."""

_SIGNATURE_MEMO = 65536
"""Most remembered signature checks (cleared when full)."""


@dataclass(eq=False)
class StoredCert:
    """One row of ``certificates``; the DER is read and parsed only when a
    signature has to be checked (``load``: reads the DER of a SHA-256)."""

    sha256: bytes
    subject: bytes
    issuer: bytes
    name_key: bytes
    load: Callable[[bytes], bytes] | None = field(default=None, repr=False)
    _cert: x509.Certificate | None = field(default=None, repr=False)

    @property
    def cert(self) -> x509.Certificate:
        if self._cert is None:
            if self.load is None:
                raise RuntimeError("no certificate loader")
            self._cert = x509.load_der_x509_certificate(self.load(self.sha256))
        return self._cert

    @classmethod
    def of(cls, cert: x509.Certificate, sha256: bytes, name_key: bytes) -> StoredCert:
        """A certificate at hand (the written tenant's own)."""
        names = certmemo.names_of(cert, _names)
        return cls(sha256, names[0], names[1], name_key, None, cert)


def _names(cert: x509.Certificate) -> tuple[bytes, bytes]:
    """The DER of ``cert``'s subject and issuer names."""
    subject = cert.subject.public_bytes()
    issuer = subject if cert.issuer == cert.subject else cert.issuer.public_bytes()
    return subject, issuer


class AnchorQueries(Protocol):
    """The indexed reads :func:`check_written` needs (a store implements them
    over its connection, inside the write's transaction)."""

    def certs_with_subject(self, subject: bytes) -> list[StoredCert]: ...

    def certs_with_issuer(self, issuer: bytes) -> list[StoredCert]: ...

    def certs_with_name_key(self, name_key: bytes) -> list[StoredCert]: ...

    def root_owners(
        self,
        *,
        sha256: bytes | None = None,
        name_key: bytes | None = None,
        unshared_only: bool = False,
        exclude: str | None = None,
        limit: int = 2,
    ) -> list[str]:
        """Ids of tenants (at most ``limit``) with a root of that SHA-256 or
        name key; ``unshared_only``: only tenants not declaring
        ``shared_anchors``; ``exclude``: not this tenant."""
        ...


class SignatureMemo:
    """Remembered ``verify_directly_issued_by`` results, by (child, issuer) SHA-256."""

    def __init__(self, size: int = _SIGNATURE_MEMO) -> None:
        self.size = size
        self._known: dict[tuple[bytes, bytes], bool] = {}

    def issued_by(self, child: StoredCert, issuer: StoredCert) -> bool:
        key = (child.sha256, issuer.sha256)
        known = self._known.get(key)
        if known is None:
            try:
                child.cert.verify_directly_issued_by(issuer.cert)
            except (ValueError, TypeError, InvalidSignature):
                known = False
            else:
                known = True
            if len(self._known) >= self.size:
                self._known.clear()
            self._known[key] = known
        return known


def check_written(
    queries: AnchorQueries,
    tenant: Tenant,
    memo: SignatureMemo | None = None,
    own: Iterable[StoredCert] | None = None,
) -> None:
    """Raise :class:`ConfigError` if ``tenant``, just written, breaks the
    anchor-sharing rule with a stored tenant (see the module docstring).
    ``own``: the tenant's roots and intermediates as written (else made
    from the tenant)."""
    memo = memo or SignatureMemo()
    _check_shared(queries, tenant)
    cached = _Cached(queries)
    if own is None:
        own = [
            StoredCert.of(cert, hashlib.sha256(cert.public_bytes(Encoding.DER)).digest(), key)
            for cert, key in tenant.ca_name_keys
        ]
    seeds = {cert.sha256: cert for cert in own}
    anchored = {anchor.name_key for anchor in tenant.anchors}  # the tenant owns these
    for key in anchored:
        for stored in cached.certs_with_name_key(key):
            seeds.setdefault(stored.sha256, stored)
    identities = set(anchored)
    for stored in _below(cached, seeds.values(), memo):
        identities.add(stored.name_key)
    for identity in sorted(identities):
        if identity in anchored or queries.root_owners(name_key=identity, limit=1):
            _check_issued(cached, identity, memo)


class _Cached:
    """One check's view of the queries: the same question is asked once."""

    def __init__(self, queries: AnchorQueries) -> None:
        self.queries = queries
        self._memo: dict[tuple[str, bytes], list[StoredCert]] = {}

    def _ask(
        self, kind: str, value: bytes, ask: Callable[[bytes], list[StoredCert]]
    ) -> list[StoredCert]:
        key = (kind, value)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = ask(value)
        return found

    def certs_with_subject(self, subject: bytes) -> list[StoredCert]:
        return self._ask("subject", subject, self.queries.certs_with_subject)

    def certs_with_issuer(self, issuer: bytes) -> list[StoredCert]:
        return self._ask("issuer", issuer, self.queries.certs_with_issuer)

    def certs_with_name_key(self, name_key: bytes) -> list[StoredCert]:
        return self._ask("name_key", name_key, self.queries.certs_with_name_key)

    def root_owners(self, **kwargs: object) -> list[str]:
        return self.queries.root_owners(**kwargs)  # type: ignore[arg-type]


def _check_shared(queries: AnchorQueries, tenant: Tenant) -> None:
    for anchor in tenant.anchors:
        for same_cert, key in ((True, anchor.fingerprint), (False, anchor.name_key)):
            others = queries.root_owners(
                sha256=key if same_cert else None,
                name_key=None if same_cert else key,
                unshared_only=tenant.shared_anchors,
                exclude=tenant.id,
                limit=1,
            )
            if others:
                how = "the same certificate" if same_cert else "the same subject and public key"
                raise ConfigError(
                    f"tenants {others[0]!r} and {tenant.id!r} share the trust anchor "
                    f"{anchor.subject!r} (SHA-256 {anchor.fingerprint.hex()}; {how}): a device "
                    f"of either would be accepted on the other's hosts. "
                    f"{_fix(others[0], tenant.id)}"
                )


def _below(queries: _Cached, seeds: Iterable[StoredCert], memo: SignatureMemo) -> list[StoredCert]:
    """Every stored certificate issued, directly or within the hop limit,
    by one of ``seeds`` (the seeds included)."""
    found = {c.sha256: c for c in seeds}
    frontier = list(found.values())
    for _ in range(_MAX_ISSUER_HOPS):
        lower: list[StoredCert] = []
        for parent in frontier:
            for child in queries.certs_with_issuer(parent.subject):
                if child.sha256 in found or not memo.issued_by(child, parent):
                    continue
                found[child.sha256] = child
                lower.append(child)
        if not lower:
            break
        frontier = lower
    return list(found.values())


def _check_issued(queries: _Cached, identity: bytes, memo: SignatureMemo) -> None:
    """Walk up from every form of the anchored ``identity`` (as
    :func:`certgate.registry._check_issued_anchors`)."""
    for form in queries.certs_with_name_key(identity):
        if form.issuer == form.subject:
            continue  # self-issued: nothing stored issued it
        frontier = [form]
        seen = {form.sha256}
        for _ in range(_MAX_ISSUER_HOPS):
            upper: list[StoredCert] = []
            for child in frontier:
                for candidate in queries.certs_with_subject(child.issuer):
                    if candidate.sha256 in seen or not memo.issued_by(child, candidate):
                        continue
                    seen.add(candidate.sha256)
                    pair = _violating_pair(queries.queries, identity, candidate.name_key)
                    if pair is not None:
                        raise ConfigError(_issued_message(queries.queries, pair, form, candidate))
                    upper.append(candidate)
            if not upper:
                break
            frontier = upper


def _violating_pair(queries: AnchorQueries, below: bytes, above: bytes) -> tuple[str, str] | None:
    """``(issuer tenant, issued tenant)``: an owner of the anchor ``above``
    and another owner of ``below``, one of them not declaring
    ``shared_anchors``; ``None`` if there is no such pair."""
    unshared_below = queries.root_owners(name_key=below, unshared_only=True)
    if unshared_below:
        for issuer in queries.root_owners(name_key=above):
            for issued in unshared_below:
                if issuer != issued:
                    return issuer, issued
    unshared_above = queries.root_owners(name_key=above, unshared_only=True)
    if unshared_above:
        for issued in queries.root_owners(name_key=below):
            for issuer in unshared_above:
                if issuer != issued:
                    return issuer, issued
    return None


def _fix(a: str, b: str) -> str:
    return (
        'Anchor each tenant at its own issuing CA (roots = ["customer-issuing-ca.pem"]), '
        f"or, if the sharing is intended, set shared_anchors = true on both {a!r} and {b!r}."
    )


def _issued_message(
    queries: AnchorQueries, pair: tuple[str, str], form: StoredCert, above: StoredCert
) -> str:
    issuer, issued = pair
    subject = form.cert.subject.rfc4514_string()
    what = f"issued tenant {issued!r}'s anchor {subject!r}"
    if not queries.root_owners(sha256=form.sha256, limit=1):
        what += (
            f" as the cross-certificate SHA-256 {form.sha256.hex()} in the store "
            "(same subject and public key)"
        )
    return (
        f"tenant {issuer!r}'s trust anchor {above.cert.subject.rfc4514_string()!r} (SHA-256 "
        f"{above.sha256.hex()}) {what}: {issuer!r} would accept every device of {issued!r}. "
        f"{_fix(issuer, issued)}"
    )
