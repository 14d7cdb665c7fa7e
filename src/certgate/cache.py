"""Bounded caches of verification results.

:class:`~certgate.gate.CertGate` keeps two, both keyed by
``tenant.trust_id + source + sha256(presented bytes)`` - the same bytes
verified for another tenant, or for the same tenant after its roots or
intermediates changed, are a different key:

* **successes** (:class:`~certgate.identity.ClientIdentity`), each until the
  earliest notAfter on its verified chain, in a segmented cache (below);
* **refusals** (:class:`Refusal`), briefly (``REFUSAL_TTL`` seconds), so that
  a client repeating a chain that is expensive to refuse does not get it
  re-verified on every request. ``not_yet_valid`` is never cached (it may
  become valid any second), and the two caches are separate, so refusals can
  never evict successes.

An entry is never returned at or after its expiry, whatever the LRU order.

**What an entry may hold.** Nothing of the request that produced it: a
refusal is a :class:`Refusal` of three short strings - never the raised
exception, whose traceback would hold the request's frames and, through
them, its environ or scope with every header the client sent. A success
holds the verified chain (certificate objects, each owning only its own DER)
and strings derived from it. Keys are digests, not the presented bytes.

**Scan resistance (successes).** A scan - many certificates each seen
once, more than the cache holds - must neither flush the devices that come
back nor make a request dearer than with no cache. New entries go to a
*probationary* FIFO; a second use while there promotes an entry to the
*protected* segment (at most :data:`PROTECTED_SHARE` % of the size), kept
by a second-chance clock: a hit only marks the entry used, and a full
protected segment sends entries unused for a whole round back to probation.
When full, the oldest probationary entry is evicted, so one-hit wonders only
displace each other. When a probation's worth of entries (at least
:data:`SCAN_MIN_STREAK`) has been evicted unused since the last promotion,
the traffic is a scan: :meth:`ValidationCache.admits` then lets one new key
in :data:`SCAN_SAMPLE` in, so most scan requests skip preparing, inserting
and evicting an entry; the next promotion ends the scan mode.

**Expired entries do not pile up.** Every :meth:`ValidationCache.put` also
drops up to ``SWEEP_PER_PUT`` expired entries from the old end of the cache
(bounded work per insert). The refusal cache keeps insertion order (a hit
does not move an entry; every entry lives ``REFUSAL_TTL``), so there the old
end is the earliest expiry and the sweep removes expired refusals as fast as
new ones arrive. In the segmented success cache the sweep (of each
segment's old end) is best effort (an entry lives until its certificate
expires, typically months), and the size bound applies as before.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Generic, NamedTuple, TypeVar

from .errors import ConfigError, Rejected
from .reasons import Reason

V = TypeVar("V")

REFUSAL_TTL = 30.0
"""Seconds a refusal is remembered (see the module docstring)."""

SWEEP_PER_PUT = 8
"""Most expired entries one :meth:`ValidationCache.put` removes."""

PROTECTED_SHARE = 80
"""Percent of a segmented cache's ``maxsize`` the protected segment may hold
(the rest, and whatever the protected segment leaves unused, is probation)."""

SCAN_SAMPLE = 16
"""Under a scan (see the module docstring), one new key in this many is
admitted."""

SCAN_MIN_STREAK = 32
"""Fewest unused probationary entries evicted in a row that mean a scan (for
small caches; see the module docstring)."""

_GENERATIONS = itertools.count(1)
"""Generations of every cache in the process: a new cache, or a cleared one,
never has a generation some other cache had (``next`` is atomic)."""

MAX_DETAIL_CHARS = 500
"""Longest detail a remembered refusal keeps (the log line shows as much)."""


class Refusal(NamedTuple):
    """What a remembered refusal keeps: the reason, a bounded detail for the
    log, and the leaf's hex SHA-256 - plain strings, no exception, nothing of
    the request."""

    reason: Reason
    detail: str
    fingerprint: str | None

    @classmethod
    def of(cls, rejected: Rejected) -> Refusal:
        """The record of ``rejected`` (copies; keeps no reference to it)."""
        fingerprint = rejected.fingerprint
        return cls(
            Reason(rejected.reason),
            str(rejected.detail)[:MAX_DETAIL_CHARS],
            None if fingerprint is None else str(fingerprint)[:128],
        )

    def rejected(self) -> Rejected:
        """A fresh exception to raise (a raised one keeps its traceback, so
        the cache never hands out, or keeps, one that was raised)."""
        return Rejected(self.reason, self.detail, self.fingerprint)


class CacheStats(NamedTuple):
    """Counters of one :class:`ValidationCache` since it was made (a snapshot).

    ``hits``/``misses``: lookups answered / not answered (an expired entry is
    a miss). ``admissions``: entries stored by :meth:`ValidationCache.put`;
    ``declined``: new entries not stored because the traffic is a scan.
    ``promotions``: probationary entries moved to the protected segment by a
    second use. ``evictions``: entries dropped to make room (not counting
    expired ones, which are ``expirations``). ``entries``: current size,
    of which ``protected`` in the protected segment.
    """

    hits: int
    misses: int
    admissions: int
    declined: int
    promotions: int
    evictions: int
    expirations: int
    entries: int
    protected: int

    @property
    def hit_rate(self) -> float:
        """``hits / (hits + misses)``, 0.0 before the first lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class _Entry:
    """One cached value (slots: no per-entry dict)."""

    __slots__ = ("expires", "used", "value")

    def __init__(self, value: object, expires: float) -> None:
        self.value = value
        self.expires = expires
        self.used = False


class ValidationCache(Generic[V]):
    """Thread-safe bounded cache of ``key -> value`` until an expiry time.

    ``lru=True`` (the default, used for successes): a **segmented** cache
    that a scan cannot flush (see the module docstring). New entries go to
    a *probationary* FIFO; an entry used again while there is promoted to
    the *protected* segment (at most :data:`PROTECTED_SHARE` of
    ``maxsize``), whose entries are kept in recency order by a second-chance
    clock: a hit only marks the entry used (no lock, no reordering), and an
    entry is demoted back to probation only after a full pass without a
    use. When full, the oldest probationary entry is evicted.

    ``lru=False``: one FIFO, hits move nothing - right when every entry
    lives equally long, because then the old end always expires first.
    """

    def __init__(
        self, maxsize: int = 10_000, *, lru: bool = True, protected_share: int = PROTECTED_SHARE
    ) -> None:
        if maxsize < 0:
            raise ConfigError(f"cache_size must be >= 0, not {maxsize}")
        if not 0 <= protected_share <= 100:
            raise ConfigError(f"protected_share must be 0-100 %, not {protected_share}")
        self.maxsize = maxsize
        self.lru = lru
        # protected_share=0: no protected segment, a hit renews the entry at
        # probation's young end - plain LRU (for comparisons).
        self.protected_max = maxsize * protected_share // 100 if lru else 0
        # Both are insertion ordered; OrderedDict pops its old end in O(1)
        # (a plain dict used as a queue rescans deleted slots).
        self._probation: OrderedDict[bytes, _Entry] = OrderedDict()
        self._protected: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.generation = next(_GENERATIONS)
        """Replaced by :meth:`clear` with a number no cache in the process had
        before: whatever was derived from the entries (the gate's decision
        memo) is stale from then on, also when another cache is swapped in."""
        self.admissions = 0
        self.promotions = 0
        self.evictions = 0
        self.expirations = 0
        self.declined = 0
        self._scan_ticks = 0
        # Probationary entries evicted unused since the last promotion: when
        # a whole probation's worth went by, the traffic is a scan.
        self._unused_streak = 0
        self._scan_after = (
            max(maxsize - self.protected_max, SCAN_MIN_STREAK) if lru and self.protected_max else -1
        )

    def get(self, key: bytes, now: float) -> V | None:
        """The cached value, or ``None`` if absent or expired at ``now``."""
        # A protected hit takes no lock: one dict read and one attribute
        # store are atomic. Probation hits (a promotion) and expiries do.
        entry = self._protected.get(key)
        if entry is None:
            entry = self._probation.get(key)
            if entry is None:
                self.misses += 1
                return None
            if self.lru and now < entry.expires:
                self._promote(key, entry)
        if now >= entry.expires:
            self._expire(key, entry)
            self.misses += 1
            return None
        entry.used = True
        self.hits += 1
        return entry.value  # type: ignore[return-value]

    def _promote(self, key: bytes, entry: _Entry) -> None:
        with self._lock:
            if self._probation.get(key) is not entry:
                return  # evicted, replaced or promoted by another thread
            del self._probation[key]
            protected = self._protected
            if self.protected_max == 0:
                self._probation[key] = entry  # nowhere to promote to: renew
                return
            protected[key] = entry
            self.promotions += 1
            self._unused_streak = 0
            entry.used = False
            # Second chance: a used entry at the old end goes round once more
            # (marked unused); an unused one is demoted to probation's young
            # end. At most one full pass: every entry passed is then unused.
            budget = len(protected)
            while len(protected) > self.protected_max and budget:
                budget -= 1
                old_key, old = protected.popitem(last=False)
                if old.used:
                    old.used = False
                    protected[old_key] = old
                else:
                    self._probation[old_key] = old
            while len(protected) > self.protected_max:
                old_key, old = protected.popitem(last=False)
                self._probation[old_key] = old

    def _expire(self, key: bytes, entry: _Entry) -> None:
        with self._lock:
            for segment in (self._protected, self._probation):
                if segment.get(key) is entry:
                    del segment[key]
                    self.expirations += 1

    def put(self, key: bytes, value: V, expires_at: float, now: float | None = None) -> None:
        """Store ``value`` until ``expires_at`` (unix seconds), on probation
        (or in place, if ``key`` is cached already). With ``now``, also drop
        up to ``SWEEP_PER_PUT`` entries expired at ``now`` from the old end
        of each segment."""
        if self.maxsize == 0:
            return
        with self._lock:
            probation = self._probation
            if now is not None:
                self._sweep(probation, now)
                if self._protected:
                    self._sweep(self._protected, now)
            current = self._protected.get(key)
            if current is not None:  # replace in place, keep its segment
                current.value, current.expires = value, expires_at
                return
            probation.pop(key, None)
            probation[key] = _Entry(value, expires_at)
            self.admissions += 1
            while len(probation) + len(self._protected) > self.maxsize:
                if probation:
                    if probation.popitem(last=False)[1].used:
                        self._unused_streak = 0
                    else:
                        self._unused_streak += 1
                else:
                    self._protected.popitem(last=False)
                self.evictions += 1

    def admits(self, key: bytes) -> bool:
        """Whether a new entry for ``key`` should be stored (ask before
        preparing it): ``False`` when the cache is off, and for all but one
        new key in :data:`SCAN_SAMPLE` while the traffic is a scan (see the
        module docstring), so that a scan request costs (almost) nothing
        more than with no cache, yet a new working set still gets in (its
        first promotion ends the scan mode)."""
        if self.maxsize == 0:
            return False
        if self._unused_streak >= self._scan_after >= 0:
            self._scan_ticks += 1
            if self._scan_ticks % SCAN_SAMPLE and key not in self._protected:
                self.declined += 1
                return False
        return True

    def _sweep(self, segment: OrderedDict[bytes, _Entry], now: float) -> None:
        for _ in range(SWEEP_PER_PUT):
            oldest = next(iter(segment), None)
            if oldest is None or segment[oldest].expires > now:
                return
            del segment[oldest]
            self.expirations += 1

    def stats(self) -> CacheStats:
        """A snapshot of the counters (see :class:`CacheStats`)."""
        with self._lock:
            return CacheStats(
                self.hits,
                self.misses,
                self.admissions,
                self.declined,
                self.promotions,
                self.evictions,
                self.expirations,
                len(self._probation) + len(self._protected),
                len(self._protected),
            )

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        with self._lock:
            self._probation.clear()
            self._protected.clear()
            self.generation = next(_GENERATIONS)

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)
