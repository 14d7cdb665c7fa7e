"""A worker process of the tenant store tests (and bench/bench_scale.py).

    python -m tests.store_worker watch URL HOST LEAF.der CHANGES [MAX_STALE]
        a gate over the store at URL (a CachingRegistry, default polling;
        MAX_STALE: its max_stale, polling every 0.05 s); prints "ready
        REASON", then decides for HOST with the leaf as fast as it can and
        prints "changed REASON MONOTONIC" each time the decision's reason
        changes, until CHANGES changes were seen. A line "close" on stdin
        closes the store's connections (the next poll opens the file again).
    python -m tests.store_worker awatch URL HOST LEAF.der CHANGES
        the same through the async PostgreSQL registry (one event loop).
    python -m tests.store_worker write URL PREFIX COUNT
        puts COUNT tenants PREFIX0..PREFIXn (own root each), one write each;
        prints "done N".

``time.monotonic()`` is the system-wide monotonic clock on Linux, so the
printed times compare with the parent's.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from pathlib import Path

from certgate import CertGate, RequestFacts, Tenant
from certgate.devpki import CA
from certgate.devpki import IssuedCert as _IssuedCert
from certgate.stores import SqlTenantStore, open_registry, open_store
from certgate.stores.caching import CachingRegistry
from certgate.stores.sqlite import SqliteRegistry, path_of_url
from tests.store_helpers import CLOUDFLARE, leaf_facts


class _Leaf:
    """Only what leaf_facts() reads of an IssuedCert."""

    def __init__(self, der: bytes) -> None:
        self.der = der


def _facts(host: str, leaf_path: str) -> RequestFacts:
    leaf: _IssuedCert = _Leaf(Path(leaf_path).read_bytes())  # type: ignore[assignment]
    return leaf_facts(host, leaf)


def _close_on_request(registry: CachingRegistry) -> None:
    """Closes the store's connections on each line "close" of stdin."""

    def read() -> None:
        for line in sys.stdin:
            if line.strip() == "close":
                registry.inner.close()

    threading.Thread(target=read, daemon=True).start()


def watch(url: str, host: str, leaf_path: str, changes: int, max_stale: str | None) -> None:
    logging.getLogger("certgate").setLevel(logging.CRITICAL)  # a refusal per decision otherwise
    options = {} if max_stale is None else {"poll_interval": 0.05, "max_stale": float(max_stale)}
    registry = open_registry(url, asynchronous=False, **options)
    gate = CertGate(registry, **CLOUDFLARE)  # type: ignore[arg-type]
    _close_on_request(registry)
    facts = _facts(host, leaf_path)
    reason = gate.decide(facts).reason
    print(f"ready {reason}", flush=True)
    seen = 0
    deadline = time.monotonic() + 120
    while seen < changes and time.monotonic() < deadline:
        now = gate.decide(facts).reason
        if now != reason:
            reason = now
            seen += 1
            print(f"changed {reason} {time.monotonic():.6f}", flush=True)
        time.sleep(0.001)


async def awatch(url: str, host: str, leaf_path: str, changes: int) -> None:
    from certgate.stores.postgres import AsyncPostgresRegistry

    logging.getLogger("certgate").setLevel(logging.CRITICAL)
    registry = AsyncPostgresRegistry(url)
    gate = CertGate(registry, **CLOUDFLARE)  # type: ignore[arg-type]
    facts = _facts(host, leaf_path)
    try:
        reason = (await gate.adecide(facts)).reason
        print(f"ready {reason}", flush=True)
        seen = 0
        deadline = time.monotonic() + 120
        while seen < changes and time.monotonic() < deadline:
            now = (await gate.adecide(facts)).reason
            if now != reason:
                reason = now
                seen += 1
                print(f"changed {reason} {time.monotonic():.6f}", flush=True)
            await asyncio.sleep(0.001)
    finally:
        await registry.aclose()


def write(url: str, prefix: str, count: int) -> None:
    if url.startswith("sqlite:"):  # the other writer may hold the lock while the machine is busy
        store: SqlTenantStore = SqliteRegistry(path_of_url(url), busy_timeout=10)
    else:
        store = open_store(url)
    for i in range(count):
        root = CA.root(f"{prefix} root {i}")
        store.put(Tenant(f"{prefix}{i}", (f"{prefix}{i}.test",), (root.cert,)))
    print(f"done {count}", flush=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["watch"] and len(argv) in (5, 6):
        watch(argv[1], argv[2], argv[3], int(argv[4]), argv[5] if len(argv) == 6 else None)
        return 0
    if argv[:1] == ["awatch"] and len(argv) == 5:
        asyncio.run(awatch(argv[1], argv[2], argv[3], int(argv[4])))
        return 0
    if argv[:1] == ["write"] and len(argv) == 4:
        write(argv[1], argv[2], int(argv[3]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
