"""A bounded cache of successful verifications.

Keys are ``tenant.trust_id + sha256(source, presented bytes)``: the same bytes
verified for another tenant, or for the same tenant after its roots or
intermediates changed, are a different key. Each entry carries an expiry - the
earliest notAfter on its verified chain - and is never returned at or after
it, whatever the LRU order. Only successes are cached: a rejection is always
recomputed, so a certificate that becomes valid (or a tenant that gains the
right root) is never refused from a stale entry.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .errors import ConfigError
from .identity import ClientIdentity


class ValidationCache:
    """Thread-safe LRU of ``key -> (identity, expires_at_unix)``."""

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 0:
            raise ConfigError(f"cache_size must be >= 0, not {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[bytes, tuple[ClientIdentity, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes, now: float) -> ClientIdentity | None:
        """The cached identity, or ``None`` if absent or expired at ``now``."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return None
            if now >= entry[1]:
                del self._data[key]
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: bytes, identity: ClientIdentity, expires_at: float) -> None:
        """Store ``identity`` until ``expires_at`` (unix seconds)."""
        if self.maxsize == 0:
            return
        with self._lock:
            self._data[key] = (identity, expires_at)
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
