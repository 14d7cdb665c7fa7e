"""X.509 path validation of client certificates, on ``cryptography``'s verifier.

What is verified (by ``cryptography.x509.verification``, never by hand):

* the leaf chains to one of the **tenant's** roots, through intermediates the
  client sent or the tenant configured (client-sent certificates are only
  ever *intermediates*: nothing a client sends becomes a trust anchor);
* every certificate on the path is valid at the validation time, which is the
  time of the request;
* signature algorithms, key sizes of issuers, CA Basic Constraints and Key
  Usage, path length and name constraints, unknown critical extensions
  (webpki CA policy);
* the leaf is an end-entity (``cA=FALSE``) and its Extended Key Usage
  contains clientAuth or is absent.

Client-sent intermediates are de-duplicated, and self-issued ones and name
cycles dropped, before path building. What is left must keep within limits
that bound the work a hostile chain can cause, or the chain is refused as
``malformed_certificate`` before any signature is checked: at most
:data:`MAX_CLIENT_INTERMEDIATES` (4) certificates, at most
:data:`MAX_CLIENT_SAME_SUBJECT` (2) per subject, RSA keys of at most
:data:`MAX_CLIENT_RSA_BITS` (8192) bits with a public exponent of at most
:data:`MAX_CLIENT_RSA_EXPONENT` (65537), and name constraints asking for at
most :data:`MAX_NAME_CONSTRAINT_WORK` (1024) comparisons, names of at most
:data:`MAX_CLIENT_NAME_BYTES` (1024) encoded bytes, and signature
checks costing at most :data:`MAX_SIGNATURE_WORK` (24) P-256 checks under
client-sent keys and :data:`MAX_TRUSTED_CHECKS` (2) under the tenant's keys
over every path the builder could try. A client-sent
certificate whose names, key or extensions do not parse is
``malformed_certificate`` too. None of this applies to tenant-configured
intermediates (see ``_client_intermediates``).

What certgate adds on top:

* Subject Alternative Name and Authority Key Identifier are *optional* on the
  leaf (cfssl's and openssl's client profiles omit them), unlike the webpki
  default;
* the leaf key must be RSA >= 2048 bits (configurable upwards), EC P-256,
  P-384 or P-521, Ed25519 or Ed448; ``cryptography`` checks issuer keys only;
* failures are classified into a :class:`~certgate.reasons.Reason`.

* revocation, when the tenant has CRLs: every certificate of the verified
  path but the anchor against its issuer's CRL (:mod:`certgate.crl`), after
  the path verified; the identity then expires no later than the CRLs'
  nextUpdate.

What is **not** verified here: OCSP, and any authorization rule about
*which* certificate of the tenant may call which route.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    VerificationError,
)

from .diagnostics import explain_untrusted
from .errors import ConfigError, Rejected
from .identity import ClientIdentity
from .pem import MAX_PRESENTED_CERTIFICATES, load_certificate, name_sizes
from .reasons import Reason
from .tenant import Tenant

DEFAULT_TENANT_BUILDERS = 4096
"""Per-tenant ``PolicyBuilder``s a :class:`ChainVerifier` keeps (least
recently used evicted first; an evicted one is rebuilt on the tenant's next
verification, from its already-built trust store)."""

ALLOWED_EC_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})


def client_ee_policy() -> ExtensionPolicy:
    """The webpki end-entity policy with SAN and AKI made optional.

    The EKU check (clientAuth or no EKU) and the ``cA=FALSE`` check of the
    webpki default stay in force: only the two presence requirements that
    real client certificates do not meet are relaxed.
    """
    return (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
        .may_be_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
    )


def _diagnostic_ee_policy() -> ExtensionPolicy:
    # Used only after a failure, to tell "wrong usage" from "untrusted": the
    # same policy minus the EKU check.
    return client_ee_policy().may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None)


class ChainVerifier:
    """Verifies presented chains against a tenant's trust.

    Holds immutable policies and a bounded memo of per-tenant
    ``PolicyBuilder``s (store, depth, policies - everything but the time),
    at most ``max_tenant_builders``, least recently used evicted one at a
    time. One instance serves every tenant and every thread: the memo is
    guarded by a lock, and a race at worst builds a builder twice.
    """

    def __init__(
        self,
        *,
        max_chain_depth: int = 8,
        min_rsa_bits: int = 2048,
        max_tenant_builders: int = DEFAULT_TENANT_BUILDERS,
    ) -> None:
        if not 1 <= max_chain_depth <= 16:
            raise ConfigError(f"max_chain_depth must be between 1 and 16, not {max_chain_depth}")
        if min_rsa_bits < 2048:
            raise ConfigError(f"min_rsa_bits cannot be lowered below 2048 (got {min_rsa_bits})")
        self.max_chain_depth = max_chain_depth
        self.min_rsa_bits = min_rsa_bits
        self._ca_policy = ExtensionPolicy.webpki_defaults_ca()
        self._ee_policy = client_ee_policy()
        self._diag_policy = _diagnostic_ee_policy()
        # Per-tenant PolicyBuilders holding store, depth and policies, keyed by
        # trust_id (so a tenant whose trust changed gets a new one); least
        # recently used evicted first, one at a time.
        if isinstance(max_tenant_builders, bool) or not (
            isinstance(max_tenant_builders, int) and max_tenant_builders >= 1
        ):
            raise ConfigError(
                f"max_tenant_builders must be a positive integer, not {max_tenant_builders!r}"
            )
        self.max_tenant_builders = max_tenant_builders
        self._builders: OrderedDict[bytes, PolicyBuilder] = OrderedDict()
        self._builders_lock = threading.Lock()
        # Client-sent CA certificates of verified paths, by DER (see
        # _shared_chain): dict operations are atomic; a race at worst keeps
        # two objects for one certificate.
        self._shared_cas: dict[bytes, x509.Certificate] = {}

    def verify(
        self,
        tenant: Tenant,
        ders: Sequence[bytes],
        *,
        source: str,
        now: datetime,
        leaf_sha256: str | None = None,
    ) -> ClientIdentity:
        """Verify ``ders`` (leaf first, then any intermediates the client sent)
        for ``tenant`` at ``now``. Returns the identity or raises
        :class:`~certgate.errors.Rejected`. ``leaf_sha256``: the hex SHA-256 of
        ``ders[0]`` if the caller already computed it."""
        if not ders:
            raise Rejected(Reason.NO_CERTIFICATE)
        if len(ders) > MAX_PRESENTED_CERTIFICATES:
            raise Rejected(Reason.MALFORMED_CERTIFICATE, f"{len(ders)} certificates presented")
        leaf = load_certificate(ders[0])
        intermediates = _client_intermediates(leaf, ders, tenant, self.max_chain_depth)
        intermediates.extend(tenant.intermediates)
        self.check_leaf_key(leaf)
        try:
            verified = self._verify(tenant, leaf, intermediates, now, self._ee_policy)
        except VerificationError as exc:
            try:
                rejection = self._classify(tenant, leaf, intermediates, now, str(exc))
            except Exception as parse_error:  # noqa: BLE001 - duplicate or malformed extensions
                rejection = Rejected(Reason.MALFORMED_CERTIFICATE, f"{exc}; {parse_error!r}")
            raise rejection from None
        except Exception as exc:  # noqa: BLE001
            # cryptography parses fields lazily; a field it cannot parse (a
            # mangled subject, say) surfaces here rather than at load time, as
            # ValueError, DuplicateExtension or, in some releases, KeyError.
            raise Rejected(Reason.MALFORMED_CERTIFICATE, f"unparseable field: {exc!r}") from None
        valid_until = None
        revocation = tenant.revocation
        if revocation is not None:  # revoked / revocation_unavailable raise here
            valid_until = revocation.check(verified.chain, now.timestamp(), tenant.id)
        return ClientIdentity.build(
            tenant.id,
            source,
            leaf,
            ders[0],
            self._shared_chain(tenant, verified.chain),
            fingerprint=leaf_sha256,
            valid_until=valid_until,
        )

    def _shared_chain(
        self, tenant: Tenant, chain: Sequence[x509.Certificate]
    ) -> tuple[x509.Certificate, ...]:
        """``chain`` with each client-sent CA certificate replaced by an
        earlier parse of the same DER, so that cached identities share one
        object per CA instead of holding a copy each (with ``cryptography``'s
        caches of its key and names: several KB). The tenant's own roots and
        intermediates are already the tenant's objects (``cryptography``
        returns the objects it was given). Sharing is by DER equality, so the
        shared object *is* the same certificate; the memo is bounded (cleared
        when full) and only ever holds certificates of verified paths."""
        own = tenant.roots + tenant.intermediates
        out = [chain[0]]
        for ca in chain[1:]:
            for mine in own:
                if ca is mine:
                    out.append(ca)
                    break
            else:
                out.append(self._shared_ca(ca))
        return tuple(out)

    def _shared_ca(self, ca: x509.Certificate) -> x509.Certificate:
        shared = self._shared_cas
        der = ca.public_bytes(Encoding.DER)
        known = shared.get(der)
        if known is None:
            if len(shared) >= 1024:
                shared.clear()
            shared[der] = known = ca
        return known

    def check_leaf_key(self, leaf: x509.Certificate) -> None:
        """Raise ``Rejected(weak_key)`` unless the leaf key meets the minimum."""
        try:
            key = leaf.public_key()
        except UnsupportedAlgorithm as exc:  # e.g. an EC curve OpenSSL does not know
            raise Rejected(Reason.WEAK_KEY, f"unsupported public key: {exc}") from None
        except (ValueError, TypeError) as exc:  # broken key encoding
            raise Rejected(Reason.MALFORMED_CERTIFICATE, f"unparseable public key: {exc}") from None
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < self.min_rsa_bits:
                raise Rejected(Reason.WEAK_KEY, f"RSA key of {key.key_size} bits")
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in ALLOWED_EC_CURVES:
                raise Rejected(Reason.WEAK_KEY, f"EC curve {key.curve.name} not allowed")
        elif not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            raise Rejected(Reason.WEAK_KEY, f"key type {type(key).__name__} not allowed")

    def _verify(
        self,
        tenant: Tenant,
        leaf: x509.Certificate,
        intermediates: list[x509.Certificate],
        at: datetime,
        ee_policy: ExtensionPolicy,
    ) -> x509.verification.VerifiedClient:
        if ee_policy is self._ee_policy:
            builder = self._cached_builder(tenant, ee_policy)
        else:
            builder = self._builder(tenant, ee_policy)
        # The time is set per verification: it is the time of the request.
        return builder.time(at).build_client_verifier().verify(leaf, intermediates)

    def _cached_builder(self, tenant: Tenant, ee_policy: ExtensionPolicy) -> PolicyBuilder:
        """The tenant's builder from the memo (least recently used evicted
        one at a time, at most ``max_tenant_builders``), built on a miss."""
        key = tenant.trust_id
        builders = self._builders
        with self._builders_lock:
            builder = builders.get(key)
            if builder is not None:
                builders.move_to_end(key)
                return builder
        builder = self._builder(tenant, ee_policy)
        with self._builders_lock:
            builders[key] = builder
            builders.move_to_end(key)
            while len(builders) > self.max_tenant_builders:
                builders.popitem(last=False)
        return builder

    def _builder(self, tenant: Tenant, ee_policy: ExtensionPolicy) -> PolicyBuilder:
        """Everything but the time, which changes with every request."""
        return (
            PolicyBuilder()
            .store(tenant.store)
            .max_chain_depth(self.max_chain_depth)
            .extension_policies(ca_policy=self._ca_policy, ee_policy=ee_policy)
        )

    def _classify(
        self,
        tenant: Tenant,
        leaf: x509.Certificate,
        intermediates: list[x509.Certificate],
        now: datetime,
        detail: str,
    ) -> Rejected:
        """Name the reason for a failed verification.

        A CA certificate presented as a client certificate is ``wrong_usage``.
        Otherwise a specific reason (expired, not yet valid, wrong EKU) is
        given only when the chain *would* verify against this tenant's roots
        with that one defect removed - for time, when the chain verifies at
        the moment the leaf expired (or became valid); everything else is
        ``untrusted_chain``. So a certificate from another tenant's CA is
        never described as merely "expired".
        """
        if _is_ca(leaf):
            return Rejected(Reason.WRONG_USAGE, "a CA certificate is not a client certificate")
        time_reason: Reason | None = None
        at = now
        if now > leaf.not_valid_after_utc:
            time_reason, at = Reason.EXPIRED, leaf.not_valid_after_utc
        elif now < leaf.not_valid_before_utc:
            time_reason, at = Reason.NOT_YET_VALID, leaf.not_valid_before_utc + timedelta(seconds=1)
        if time_reason is None and not _lacks_client_auth(leaf):
            # No defect to explain: a second path search could only say "untrusted".
            return _untrusted(tenant, leaf, intermediates, now, detail)
        try:
            self._verify(tenant, leaf, intermediates, at, self._diag_policy)
        except VerificationError:
            return _untrusted(tenant, leaf, intermediates, now, detail)
        if time_reason is not None:
            return Rejected(time_reason, detail)
        if _lacks_client_auth(leaf):
            return Rejected(Reason.WRONG_USAGE, detail)
        return Rejected(Reason.UNTRUSTED_CHAIN, detail)


def _untrusted(
    tenant: Tenant,
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    now: datetime,
    detail: str,
) -> Rejected:
    """``untrusted_chain`` with the verifier's message and, where the names
    show it, where the path breaks (:mod:`certgate.diagnostics`)."""
    explanation = explain_untrusted(tenant, leaf, intermediates, now)
    return Rejected(Reason.UNTRUSTED_CHAIN, f"{explanation} ({detail})" if explanation else detail)


MAX_CLIENT_INTERMEDIATES = 4
"""Most distinct, non-self-issued certificates a client may send besides its
leaf (ordinary chains have one to three intermediates)."""

MAX_CLIENT_SAME_SUBJECT = 2
"""Most client-sent intermediates (of those left) sharing one subject: room
for an old and a new certificate of a re-keyed CA, but no wide layers of
look-alike issuers for the path builder to try in every combination."""

MAX_CLIENT_RSA_BITS = 8192
"""Largest RSA modulus accepted in a client-sent intermediate. Checking a
signature with it (and an exponent up to :data:`MAX_CLIENT_RSA_EXPONENT`)
costs about what a P-384 check costs, which the policy must allow anyway."""

MAX_CLIENT_RSA_EXPONENT = 65537
"""Largest RSA public exponent accepted in a client-sent intermediate. The
cost of a signature check grows with the exponent's length: OpenSSL accepts
up to 64 bits, four times 65537's 17 and with many more one-bits."""

MAX_NAME_CONSTRAINT_WORK = 1024
"""Most name-constraint comparisons a presented chain may ask for: the SAN
entries of the leaf and the client-sent intermediates times the subtrees of
the name constraints in the client-sent intermediates."""


def _client_intermediates(
    leaf: x509.Certificate, ders: Sequence[bytes], tenant: Tenant, max_depth: int
) -> list[x509.Certificate]:
    """The client-sent certificates worth offering to the path builder, or
    ``Rejected(malformed_certificate)`` when they break a limit or cannot be
    parsed.

    This only removes candidates or refuses; ``cryptography`` still decides
    trust. Dropped: duplicates, the leaf itself, self-issued certificates
    (roots, or made-up "CAs" - a client's certificate is never a trust anchor
    here and the tenant's roots are in the store already), and certificates
    whose names form an issuer cycle among the client's certificates.

    Refused (these bound the work a hostile chain can cause, see
    :func:`_check_limits`): more than :data:`MAX_CLIENT_INTERMEDIATES`
    certificates left; more than :data:`MAX_CLIENT_SAME_SUBJECT` of them with
    the same subject; an RSA key over
    :data:`MAX_CLIENT_RSA_BITS` bits or with an exponent over
    :data:`MAX_CLIENT_RSA_EXPONENT`; name constraints asking for more than
    :data:`MAX_NAME_CONSTRAINT_WORK` comparisons; more signature work than
    :func:`_check_signature_work` allows. Copies of tenant-configured
    intermediates are dropped too (they add nothing). Tenant-configured
    intermediates are trusted configuration and none of this applies to them:
    a PKI whose chains break a limit should configure its intermediates on the
    tenant.
    """
    if len(ders) < 2:  # the leaf alone (header sources that forward only the leaf)
        return []
    _check_name_sizes(ders)
    seen = {ders[0]}
    certs: list[x509.Certificate] = []
    for der in ders[1:]:
        if der in seen:
            continue
        seen.add(der)
        certs.append(load_certificate(der))
    try:
        # Names, keys and extensions are parsed lazily: a mangled field of a
        # client-sent certificate surfaces here, as ValueError, TypeError,
        # UnsupportedAlgorithm or DuplicateExtension.
        configured = set(tenant.intermediates)  # a copy of one adds nothing
        certs = _without_name_cycles(
            [c for c in certs if c.subject != c.issuer and c not in configured]
        )
        costs = _check_limits(leaf, certs)
        _check_signature_work(leaf, certs, costs, tenant, max_depth)
    except Rejected:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure of client input
        raise Rejected(
            Reason.MALFORMED_CERTIFICATE, f"unparseable client-sent intermediate: {exc!r}"
        ) from None
    return certs


MAX_CLIENT_NAME_BYTES = 1024
"""Largest encoded issuer or subject name accepted in a certificate the
client sent along with intermediates (real CA and device names take a few
hundred bytes at most). Handling a name in Python costs time per attribute:
names of hundreds of attributes made one refusal cost 8-14 times an ordinary
verification before any other limit applied."""


def _check_name_sizes(ders: Sequence[bytes]) -> None:
    """Refuse a presented chain with a name over :data:`MAX_CLIENT_NAME_BYTES`,
    measured on the DER before any ``Name`` object is built."""
    for der in ders:
        size = max(name_sizes(der))
        if size > MAX_CLIENT_NAME_BYTES:
            raise Rejected(
                Reason.MALFORMED_CERTIFICATE,
                f"a client-sent certificate with a name of {size} bytes "
                f"(at most {MAX_CLIENT_NAME_BYTES})",
            )


MAX_SIGNATURE_WORK = 24
"""Most signature-check work under client-sent keys one path search may ask
for, in units of one P-256 (or RSA <= 4096-bit) check, where a P-384 or
P-521 check costs 8 and an RSA-8192 one 4. 24 is what the costliest
*ordinary* chain needs: a leaf under three client-sent P-384 intermediates
in a line. Counted over every path the builder could try (see
:func:`_check_signature_work`), so layers of look-alike issuers do not fit:
two candidates per level double the count. A refusal within this budget
therefore costs no more than verifying that ordinary chain."""

MAX_TRUSTED_CHECKS = 2
"""Most checks under the tenant's own keys (roots and configured
intermediates) that the client-sent certificates may lead the path builder
to: one ordinary chain needs one, a re-issued root two."""

_COSTLY_CURVES = frozenset({"secp384r1", "secp521r1"})


def _check_signature_work(
    leaf: x509.Certificate,
    certs: list[x509.Certificate],
    costs: list[int],
    tenant: Tenant,
    max_depth: int,
) -> None:
    """Refuse a chain whose client-sent intermediates could make one path
    search check more than :data:`MAX_SIGNATURE_WORK` units of signatures
    under their keys, or more than :data:`MAX_TRUSTED_CHECKS` signatures
    under the tenant's keys. ``costs``: the cost of a check under each of
    ``certs``' keys (from :func:`_check_client_key`).

    An upper bound, over names only: from the leaf, every certificate whose
    subject is the current certificate's issuer is a candidate the builder
    may check, and every client-sent candidate is followed further (as if
    its check succeeded). Paths are counted separately, as the builder
    tries them. The count limits keep this walk small; a tenant-configured
    intermediate is followed only into client-sent candidates, so the
    tenant's own chains are never counted.
    """
    if not certs:
        return
    client: dict[x509.Name, list[tuple[x509.Certificate, int]]] = {}
    for cert, cost in zip(certs, costs, strict=True):
        client.setdefault(cert.subject, []).append((cert, cost))
    anchors = Counter(root.subject for root in tenant.roots)
    configured: dict[x509.Name, list[x509.Certificate]] = {}
    for cert in tenant.intermediates:
        if cert.issuer in client:
            configured.setdefault(cert.subject, []).append(cert)
    trusted_checks = Counter(cert.subject for cert in tenant.intermediates)
    work = trusted = 0
    stack: list[tuple[x509.Certificate, bool, int]] = [(leaf, False, 0)]
    while stack:
        cert, is_configured, depth = stack.pop()
        if depth > max_depth:  # the builder checks issuers up to this depth
            continue
        if not is_configured:
            trusted += anchors[cert.issuer] + trusted_checks[cert.issuer]
            for inter in configured.get(cert.issuer, ()):
                stack.append((inter, True, depth + 1))
        for candidate, cost in client.get(cert.issuer, ()):
            work += cost
            stack.append((candidate, False, depth + 1))
        if work > MAX_SIGNATURE_WORK or trusted > MAX_TRUSTED_CHECKS:
            raise Rejected(
                Reason.MALFORMED_CERTIFICATE,
                "client-sent intermediates could cost more signature checks than allowed "
                f"(at most {MAX_SIGNATURE_WORK} P-256-check units under their keys, "
                f"{MAX_TRUSTED_CHECKS} under the tenant's): configure the intermediates "
                "on the tenant",
            )


def _check_limits(leaf: x509.Certificate, certs: list[x509.Certificate]) -> list[int]:
    """Refuse client-sent intermediates that would make path building costly;
    return the cost of a signature check under each one's key.

    With no name cycle, at most four client-sent certificates and at most two
    per subject, one path search checks at most six signatures under
    client-sent keys (two candidates at each of two levels: 2 + 2 x 2), plus
    checks under the tenant's own certificates. Six P-384 checks still cost
    ~12x an ordinary refusal, so :func:`_check_signature_work` also weighs
    them by key type. ``cryptography``'s own budget, 128 signature checks
    per search, is far above either.
    """
    if len(certs) > MAX_CLIENT_INTERMEDIATES:
        raise Rejected(
            Reason.MALFORMED_CERTIFICATE,
            f"{len(certs)} client-sent intermediates (at most {MAX_CLIENT_INTERMEDIATES})",
        )
    per_subject = Counter(cert.subject for cert in certs)
    if per_subject and max(per_subject.values()) > MAX_CLIENT_SAME_SUBJECT:
        raise Rejected(
            Reason.MALFORMED_CERTIFICATE,
            f"{max(per_subject.values())} client-sent intermediates share a subject "
            f"(at most {MAX_CLIENT_SAME_SUBJECT})",
        )
    subtrees = 0
    costs = []
    for cert in certs:
        costs.append(_check_client_key(cert))
        subtrees += _name_constraint_subtrees(cert)
    if subtrees:
        entries = sum(_san_entries(cert) for cert in [leaf, *certs])
        if entries * subtrees > MAX_NAME_CONSTRAINT_WORK:
            raise Rejected(
                Reason.MALFORMED_CERTIFICATE,
                f"name constraints of client-sent intermediates: {subtrees} subtrees "
                f"x {entries} SAN entries (at most {MAX_NAME_CONSTRAINT_WORK})",
            )
    return costs


def _check_client_key(cert: x509.Certificate) -> int:
    """Refuse an RSA key too large, or with too large an exponent, to check
    cheaply; return the cost of one signature check under the key, in P-256
    checks (measured: P-256 0.06 ms, RSA-4096 0.07 ms, RSA-8192 0.24 ms,
    P-384 and P-521 0.47 ms). The key is parsed once, for both.

    Other key types are left to ``cryptography``'s policy, which refuses
    issuer keys other than RSA and EC P-256/P-384/P-521 before checking any
    signature with them.
    """
    try:
        key = cert.public_key()
    except UnsupportedAlgorithm:  # a curve OpenSSL lacks: the policy refuses it unchecked
        return 1
    if isinstance(key, ec.EllipticCurvePublicKey):
        return 8 if key.curve.name in _COSTLY_CURVES else 1
    if not isinstance(key, rsa.RSAPublicKey):
        return 1  # a key type the policy refuses before any check
    if key.key_size > MAX_CLIENT_RSA_BITS:
        raise Rejected(
            Reason.MALFORMED_CERTIFICATE,
            f"client-sent intermediate with an RSA key of {key.key_size} bits "
            f"(at most {MAX_CLIENT_RSA_BITS})",
        )
    exponent = key.public_numbers().e
    if exponent > MAX_CLIENT_RSA_EXPONENT:
        raise Rejected(
            Reason.MALFORMED_CERTIFICATE,
            f"client-sent intermediate with an RSA exponent of {exponent.bit_length()} bits "
            f"(at most {MAX_CLIENT_RSA_EXPONENT})",
        )
    return max(1, -(-(key.key_size**2) // 4096**2))


def _name_constraint_subtrees(cert: x509.Certificate) -> int:
    try:
        value = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return 0
    return len(value.permitted_subtrees or ()) + len(value.excluded_subtrees or ())


def _san_entries(cert: x509.Certificate) -> int:
    try:
        return len(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return 0


def _without_name_cycles(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    """``certs`` less those whose names form an issuer cycle among them (``A``
    issued by ``B`` issued by ``A``): no path to a root runs through a cycle,
    but a path builder can spend its whole signature budget going round one.
    Chains that need cross-certified CAs should have them configured on the
    tenant."""
    if len(certs) < 2:
        return certs
    issuers_of: dict[x509.Name, set[x509.Name]] = {}
    for cert in certs:
        issuers_of.setdefault(cert.subject, set()).add(cert.issuer)

    def reaches(start: x509.Name, goal: x509.Name) -> bool:
        stack, visited = [start], set()
        while stack:
            name = stack.pop()
            if name == goal:
                return True
            if name not in visited:
                visited.add(name)
                stack.extend(issuers_of.get(name, ()))
        return False

    return [cert for cert in certs if not reaches(cert.issuer, cert.subject)]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _lacks_client_auth(leaf: x509.Certificate) -> bool:
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH not in eku
