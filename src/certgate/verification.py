"""Cached verification: a presented chain against one tenant's trust.

:class:`CachedVerification` turns a :class:`~certgate.facts.Presented`
chain and a :class:`~certgate.tenant.Tenant` into a
:class:`~certgate.identity.ClientIdentity`, or raises
:class:`~certgate.errors.Rejected`. It is where verification results are
remembered (see :mod:`certgate.cache`) and where anything that can change a
verification's outcome plugs in: the cache key is
``tenant.trust_id + source + sha256(presented bytes)``, so a change of the
tenant's trust is a different key. Revocation is such a change: a tenant's
CRLs are part of its ``trust_id``, and a cached identity expires at the
nextUpdate of the CRLs it was checked against (``expires_at``), so a
verification is never reused under another CRL, nor after its CRL went
stale.

What is checked: the path (``cryptography``'s verifier, see
:mod:`certgate.verifier`) at the time of the request, and a fingerprint
forwarded next to the certificate against the leaf. What is **not**: which
certificate may call which route - that is authorization, after this step
(:mod:`certgate.policy`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime

from .cache import REFUSAL_TTL, Refusal, ValidationCache
from .errors import Rejected
from .facts import Presented
from .identity import ClientIdentity
from .reasons import Reason
from .tenant import Tenant
from .verifier import ChainVerifier

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


REMEMBERED_REFUSALS = frozenset(
    {
        Reason.UNTRUSTED_CHAIN,
        Reason.EXPIRED,
        Reason.WRONG_USAGE,
        Reason.WEAK_KEY,
        Reason.MALFORMED_CERTIFICATE,
        Reason.REVOKED,
    }
)
"""Refusals that depend only on the presented bytes, the tenant's trust and a
time that only moves forward - and so may be remembered briefly.
``revoked`` qualifies because the tenant's CRLs are part of its
``trust_id`` (a new CRL is a new key). ``not_yet_valid`` may turn valid any
second, ``revocation_unavailable`` any time a CRL is refreshed, and
``fingerprint_mismatch`` depends on a header outside the cache key."""


class CachedVerification:
    """Verifies presented chains, remembering successes and some refusals.

    ``cache_size`` bounds the success cache (0 disables both caches; the
    refusal cache holds a quarter as many). ``on_verified`` is called with
    each identity a *cold* verification produced (not for cache hits) and
    the request's time as a POSIX timestamp.
    """

    def __init__(
        self,
        verifier: ChainVerifier,
        *,
        cache_size: int = 10_000,
        clock: Clock = utc_now,
        on_verified: Callable[[ClientIdentity, float], None] | None = None,
    ) -> None:
        self.verifier = verifier
        self.clock = clock
        self.cache: ValidationCache[ClientIdentity] = ValidationCache(cache_size)
        # Every refusal lives REFUSAL_TTL: insertion order is expiry order.
        self.refusals: ValidationCache[Refusal] = ValidationCache(
            max(1, cache_size // 4) if cache_size else 0, lru=False
        )
        self.on_verified = on_verified

    def now(self) -> datetime:
        return self.clock()

    def verify(self, tenant: Tenant, presented: Presented) -> ClientIdentity:
        """The identity of ``presented`` for ``tenant``, or :class:`Rejected`."""
        # The validation time is read per request; on the (hot) cache-hit path
        # only a float is needed, so the datetime is built on a miss.
        if self.clock is utc_now:
            stamp = time.time()
            now = None
        else:
            now = self.clock()
            stamp = now.timestamp()
        caching = self.cache.maxsize > 0
        key = b""
        identity = None
        if caching:
            digest = presented.digest or hashlib.sha256(presented.material).digest()
            key = tenant.trust_id + _source_tag(presented.source) + digest
            identity = self.cache.get(key, stamp)
            if identity is None and self.refusals:  # none remembered: skip the look-up
                refusal = self.refusals.get(key, stamp)
                if refusal is not None:
                    raise refusal.rejected()
        if identity is None:
            try:
                identity = self._verify_cold(tenant, presented, now, stamp)
            except Rejected as exc:
                if caching and exc.reason in REMEMBERED_REFUSALS:
                    # The record, never the exception: its traceback holds the
                    # request's frames (environ/scope, every header).
                    self.refusals.put(key, Refusal.of(exc), stamp + REFUSAL_TTL, stamp)
                raise
            if caching and self.cache.admits(key):
                identity.drop_parsed_leaf()  # the cache keeps the DER, not the parse
                self.cache.put(key, identity, identity.expires_at, stamp)
            if self.on_verified is not None:
                self.on_verified(identity, stamp)
        elif (
            presented.expected_sha256 is not None
            and identity.fingerprint_sha256 != presented.expected_sha256
        ):
            raise Rejected(
                Reason.FINGERPRINT_MISMATCH,
                "forwarded SHA-256 differs",
                identity.fingerprint_sha256,
            )
        return identity

    def _verify_cold(
        self, tenant: Tenant, presented: Presented, now: datetime | None, stamp: float
    ) -> ClientIdentity:
        ders = presented.decode()
        leaf_sha256 = hashlib.sha256(ders[0]).hexdigest() if ders else None
        if presented.expected_sha256 is not None and leaf_sha256 != presented.expected_sha256:
            raise Rejected(Reason.FINGERPRINT_MISMATCH, "forwarded SHA-256 differs", leaf_sha256)
        try:
            return self.verifier.verify(
                tenant,
                ders,
                source=presented.source,
                now=now or datetime.fromtimestamp(stamp, UTC),
                leaf_sha256=leaf_sha256,
            )
        except Rejected as exc:
            exc.fingerprint = leaf_sha256
            raise


_SOURCE_TAGS: dict[str, bytes] = {}


def _source_tag(source: str) -> bytes:
    """``source`` as the key's ``name + NUL`` part (built once per source)."""
    tag = _SOURCE_TAGS.get(source)
    if tag is None:
        tag = source.encode() + b"\0"
        if len(_SOURCE_TAGS) < 256:
            _SOURCE_TAGS[source] = tag
    return tag


def leaf_fingerprint(presented: Presented) -> str | None:
    """SHA-256 of the presented leaf for logs, if it decodes."""
    try:
        ders = presented.decode()
    except Rejected:
        return None
    return hashlib.sha256(ders[0]).hexdigest() if ders else None
