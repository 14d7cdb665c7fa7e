"""Bounded caches of verification results.

:class:`~certgate.gate.CertGate` keeps two, both keyed by
``tenant.trust_id + source + sha256(presented bytes)`` - the same bytes
verified for another tenant, or for the same tenant after its roots or
intermediates changed, are a different key:

* **successes**, each until the earliest notAfter on its verified chain;
* **refusals**, briefly (``REFUSAL_TTL`` seconds), so that a client
  repeating a chain that is expensive to refuse does not get it re-verified
  on every request. ``not_yet_valid`` is never cached (it may become valid
  any second), and the two caches are separate, so refusals can never evict
  successes.

An entry is never returned at or after its expiry, whatever the LRU order.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

from .errors import ConfigError

V = TypeVar("V")

REFUSAL_TTL = 30.0
"""Seconds a refusal is remembered (see the module docstring)."""


class ValidationCache(Generic[V]):
    """Thread-safe LRU of ``key -> (value, expires_at_unix)``."""

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 0:
            raise ConfigError(f"cache_size must be >= 0, not {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[bytes, tuple[V, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

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
                self._data.pop(key, None)
                self.misses += 1
                return None
            if key in self._data:
                self._data.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: bytes, value: V, expires_at: float) -> None:
        """Store ``value`` until ``expires_at`` (unix seconds)."""
        if self.maxsize == 0:
            return
        with self._lock:
            self._data[key] = (value, expires_at)
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
