"""Sync registry behind lookup threads vs the async cache, on the ASGI path.

Both over the same PostgreSQL store (a throwaway cluster from Debian's
``postgresql``, as the tests start it; or ``CERTGATE_BENCH_PG`` = an admin
URL), both the same cache in front (``open_registry(url)`` and
``open_registry(url, asynchronous=True)``), timed in-process on one event
loop through the gate's ``adecide``:

* **hit**: the tenant is cached (answered inline, either way);
* **miss**: a tenant not looked up before (sync: a lookup thread and a
  ``ConnectionPool``; async: awaited on an ``AsyncConnectionPool``);
* **misses, 32 at once**: throughput of cold lookups with 32 concurrent
  requests (sync: at most ``LOOKUP_THREADS`` = 16 in flight);
* **propagation**: a cached tenant re-anchored by a writer (on a thread of
  this process, its own connection) until ``adecide`` refuses its device,
  10 times at random phases of the poll: p50 / max.

    .venv/bin/python bench/bench_async_cache.py [--tenants 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import Factory, _other_root, facts  # noqa: E402
from tests.pg_server import pg_cluster  # noqa: E402

from certgate import CertGate  # noqa: E402
from certgate.stores import TenantRecord, open_registry, open_store  # noqa: E402
from certgate.stores.async_caching import AsyncCachingRegistry  # noqa: E402

ROUNDS = 1000
PROPAGATIONS = 10
URL: list[str] = []
"""The database's URL (set by main)."""


@contextlib.contextmanager
def database() -> Iterator[str]:
    admin = os.environ.get("CERTGATE_BENCH_PG")
    if admin:
        yield admin
        return
    with pg_cluster() as server:
        yield server.create_database("bench_async")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def us(values: list[float]) -> dict[str, float]:
    return {"p50": round(pct(values, 0.5) * 1e6, 1), "p99": round(pct(values, 0.99) * 1e6, 1)}


async def measure(gate: CertGate, factory: Factory, tenants: int, first: int) -> dict[str, Any]:
    """Hits, misses one at a time (tenants first..first+ROUNDS), then
    misses 32 at a time (the next ROUNDS tenants)."""
    device = {i: factory.device(i) for i in range(first, first + 2 * ROUNDS)}
    device[0] = factory.device(0)

    async def one(i: int) -> float:
        start = time.perf_counter()
        decision = await gate.adecide(facts(i, device[i]))
        assert decision.reason is None, (i, decision.reason, decision.detail)
        return time.perf_counter() - start

    await one(0)
    hits = [await one(0) for _ in range(ROUNDS)]
    misses = [await one(i) for i in range(first, first + ROUNDS)]
    start = time.perf_counter()
    batch = range(first + ROUNDS, first + 2 * ROUNDS)
    for chunk in range(0, ROUNDS, 32):
        await asyncio.gather(*(one(i) for i in batch[chunk : chunk + 32]))
    wall = time.perf_counter() - start
    return {
        "hit_us": us(hits),
        "miss_us": us(misses),
        "misses_32_at_once_per_s": round(ROUNDS / wall),
        "propagation_ms": await propagation(gate, factory, first, device[first]),
    }


async def propagation(gate: CertGate, factory: Factory, i: int, der: bytes) -> dict[str, float]:
    store = open_store(URL[0])
    right = factory.record(i)
    wrong = TenantRecord(id=right.id, hosts=right.hosts, roots=(_other_root(factory, i),))
    pause = random.Random(i)
    latencies = []
    try:
        for change in range(PROPAGATIONS):
            await asyncio.sleep(pause.uniform(0.1, 0.8))
            record = wrong if change % 2 == 0 else right
            await asyncio.to_thread(store.put, record)
            written = time.monotonic()
            while ((await gate.adecide(facts(i, der))).reason is None) != (record is right):
                await asyncio.sleep(0.001)
            latencies.append(time.monotonic() - written)
    finally:
        await asyncio.to_thread(store.put, right)
        store.close()  # type: ignore[attr-defined]
    return {
        "p50": round(pct(latencies, 0.5) * 1e3, 1),
        "max": round(max(latencies) * 1e3, 1),
    }


async def one_kind(
    url: str, asynchronous: bool, factory: Factory, tenants: int, first: int
) -> dict[str, Any]:
    registry = open_registry(url, asynchronous=asynchronous)
    gate = CertGate(registry, trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])
    try:
        return await measure(gate, factory, tenants, first)
    finally:
        if isinstance(registry, AsyncCachingRegistry):
            await registry.aclose()
        else:
            registry.close()
            registry.inner.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=5 * ROUNDS)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="certgate-bench-async-"))
    factory = Factory(work)
    out: dict[str, Any] = {"tenants": args.tenants}
    with database() as url:
        URL.append(url)
        writer = open_store(url, create=True)
        started = time.perf_counter()
        writer.import_tenants(factory.records(args.tenants))
        out["import_s"] = round(time.perf_counter() - started, 1)
        writer.close()  # type: ignore[attr-defined]
        for name, asynchronous, first in (("sync", False, 1), ("async", True, 2 * ROUNDS + 1)):
            out[name] = asyncio.run(one_kind(url, asynchronous, factory, args.tenants, first))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
