"""Bounded caches of verification results.

:class:`~certgate.gate.CertGate` keeps two, both keyed by
``tenant.trust_id + source + sha256(presented bytes)`` - the same bytes
verified for another tenant, or for the same tenant after its roots or
intermediates changed, are a different key:

* **successes** (:class:`~certgate.identity.ClientIdentity`), each until the
  earliest notAfter on its verified chain, least recently used evicted first;
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

**Expired entries do not pile up.** Every :meth:`ValidationCache.put` also
drops up to ``SWEEP_PER_PUT`` expired entries from the old end of the cache
(bounded work per insert). The refusal cache keeps insertion order (a hit
does not move an entry; every entry lives ``REFUSAL_TTL``), so there the old
end is the earliest expiry and the sweep removes expired refusals as fast as
new ones arrive. In the LRU success cache the sweep is best effort (an entry
lives until its certificate expires, typically months), and the size bound
applies as before.
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


class ValidationCache(Generic[V]):
    """Thread-safe bounded cache of ``key -> (value, expires_at_unix)``.

    ``lru=True`` (the default): a hit moves the entry to the young end, and
    the least recently used entry is evicted when full. ``lru=False``: pure
    insertion order - right when every entry lives equally long, because
    then the old end always expires first (see the module docstring).
    """

    def __init__(self, maxsize: int = 10_000, *, lru: bool = True) -> None:
        if maxsize < 0:
            raise ConfigError(f"cache_size must be >= 0, not {maxsize}")
        self.maxsize = maxsize
        self.lru = lru
        self._data: OrderedDict[bytes, tuple[V, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.generation = next(_GENERATIONS)
        """Replaced by :meth:`clear` with a number no cache in the process had
        before: whatever was derived from the entries (the gate's decision
        memo) is stale from then on, also when another cache is swapped in."""

    def get(self, key: bytes, now: float) -> V | None:
        """The cached value, or ``None`` if absent or expired at ``now``."""
        # A miss needs no lock: a single dict read is atomic. Only a hit
        # (LRU reordering) and an eviction take it.
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return None
        with self._lock:
            if now >= entry[1]:
                if self._data.get(key) is entry:
                    del self._data[key]
                self.misses += 1
                return None
            if self.lru and key in self._data:
                self._data.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: bytes, value: V, expires_at: float, now: float | None = None) -> None:
        """Store ``value`` until ``expires_at`` (unix seconds). With ``now``,
        also drop up to ``SWEEP_PER_PUT`` entries expired at ``now`` from the
        old end."""
        if self.maxsize == 0:
            return
        with self._lock:
            data = self._data
            if now is not None:
                for _ in range(SWEEP_PER_PUT):
                    oldest = next(iter(data), None)
                    if oldest is None or data[oldest][1] > now:
                        break
                    del data[oldest]
            data[key] = (value, expires_at)
            data.move_to_end(key)
            while len(data) > self.maxsize:
                data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.generation = next(_GENERATIONS)

    def __len__(self) -> int:
        return len(self._data)
