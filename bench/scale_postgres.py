"""certgate benchmark: the PostgreSQL tenant store with 1k, 100k and 1M tenants.

Run from the repository root (as root it starts a throwaway PostgreSQL from
Debian's package, like the tests; about 5 minutes on 2 cores with 1M)::

    .venv/bin/python bench/scale_postgres.py                  # 1k, 100k, 1M
    .venv/bin/python bench/scale_postgres.py --sizes 1000,100000 --json out.json
    .venv/bin/python bench/scale_postgres.py --dsn postgresql://u:p@db/empty  # your server

``--dsn`` must name an empty database (the benchmark fills it). The
throwaway server runs with ``fsync=off`` (tests/pg_server.py): that changes
write figures, not reads.

Tenants: ``t0000000`` ... with one exact host each (``t0000000.bench.test``)
and every tenth also a wildcard (``*.w0000000.bench.test``), anchored at one
of 16 shared CA certificates (``shared_anchors``), as in issue 10's
measurements. The store is filled with ``COPY`` (rows as the writer API
would write them: DER, fingerprints, digests), not through the writer API;
the writer API's own rate is measured separately (``import``).

Per size:

* **start-up**: a new process imports certgate, opens
  ``open_registry(url)`` (a :class:`~certgate.stores.caching.CachingRegistry`
  over :class:`~certgate.stores.postgres.PostgresRegistry`: one schema
  check) and looks up one host - wall time, and RSS (``VmRSS``) then and
  after 1,000 distinct tenants are cached.
* **lookup**: host lookups of 2,000 random tenants through the cache: cold
  (a miss: one query, the tenant built from DER), then cached (a hit);
  unknown hosts cold (one query); and through
  :class:`~certgate.stores.postgres.AsyncPostgresRegistry` (never cached:
  one query each), p50/p99 in microseconds (wall time).
* **propagation**: another process decides a device's request in a loop
  (sync: ``CertGate.decide`` over the cache; async: ``adecide`` over the
  async registry); this one switches the tenant's root between the
  device's CA and another CA 20 times: from the start of the write to the
  other process's first request decided under the new trust (p50, max).
* **import**: ``import_tenants`` of 2,000 new tenants (vetting and the
  anchor rule at write time, batches of 500): tenants per second.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from tests.pg_server import pg_cluster  # noqa: E402

from certgate import Tenant  # noqa: E402
from certgate.devpki import CA  # noqa: E402
from certgate.stores import open_registry  # noqa: E402
from certgate.stores.postgres import AsyncPostgresRegistry, PostgresRegistry  # noqa: E402
from certgate.stores.records import TenantRecord  # noqa: E402
from certgate.tenant import name_key  # noqa: E402

SHARED_CAS = 16
LOOKUPS = 2000
PROPAGATIONS = 20
IMPORTS = 2000


def host_of(i: int) -> str:
    return f"t{i:07d}.bench.test"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# -- filling ---------------------------------------------------------------------


def fill(dsn: str, count: int, cas: list[CA]) -> float:
    """``count`` tenants written with COPY; seconds taken."""
    started = time.perf_counter()
    PostgresRegistry(dsn, create=True).close()
    ders = [ca.der for ca in cas]
    shas = [hashlib.sha256(der).digest() for der in ders]
    settings = TenantRecord("t", ("x.test",), (ders[0],), shared_anchors=True).settings_json()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor() as cur:
            for ca, der, sha in zip(cas, ders, shas, strict=True):
                cur.execute(
                    "INSERT INTO certificates VALUES (%s, %s, %s, %s, %s)",
                    (
                        sha,
                        der,
                        ca.cert.subject.public_bytes(),
                        ca.cert.issuer.public_bytes(),
                        name_key(ca.cert),
                    ),
                )
        with conn.transaction(), conn.cursor() as cur:
            now = "2026-01-01T00:00:00.000000Z"
            with cur.copy(
                "COPY tenants (id, mode, shared_anchors, settings, digest, created, updated, "
                "version) FROM STDIN"
            ) as copy:
                for i in range(count):
                    hosts = (host_of(i),) if i % 10 else (host_of(i), f"*.w{i:07d}.bench.test")
                    record = TenantRecord(
                        f"t{i:07d}", hosts, (ders[i % SHARED_CAS],), shared_anchors=True
                    )
                    copy.write_row(
                        (record.id, None, True, settings, record.digest(), now, now, i + 1)
                    )
            with cur.copy("COPY hosts (pattern, tenant_id) FROM STDIN") as copy:
                for i in range(count):
                    copy.write_row((host_of(i), f"t{i:07d}"))
                    if i % 10 == 0:
                        copy.write_row((f"*.w{i:07d}.bench.test", f"t{i:07d}"))
            with cur.copy(
                "COPY tenant_certificates (tenant_id, role, position, sha256, shared) FROM STDIN"
            ) as copy:
                for i in range(count):
                    copy.write_row((f"t{i:07d}", "root", 0, shas[i % SHARED_CAS], True))
            cur.execute("UPDATE certgate_counter SET seq = %s WHERE id = 1", (count,))
        conn.execute("ANALYZE")
    return time.perf_counter() - started


# -- start-up ------------------------------------------------------------------------

STARTUP = textwrap.dedent(
    """
    import sys, time
    started = time.perf_counter()
    from certgate.stores import open_registry
    registry = open_registry(sys.argv[1])
    assert registry.tenant_for_host(sys.argv[2]) is not None
    elapsed = time.perf_counter() - started
    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    first = rss()
    for i in range(0, int(sys.argv[3]), max(1, int(sys.argv[3]) // 1000)):
        registry.tenant_for_host(f"t{i:07d}.bench.test")
    print(elapsed, first, rss(), registry.stats().tenants)
    """
)


def startup(dsn: str, count: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", STARTUP, dsn, host_of(count - 1), str(count)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.split()
    return {
        "start_s": float(out[0]),
        "rss_mb": float(out[1]),
        "rss_1000_cached_mb": float(out[2]),
        "cached_tenants": float(out[3]),
    }


# -- lookups ---------------------------------------------------------------------------


def lookups(dsn: str, count: int) -> dict[str, float]:
    rng = random.Random(count)
    sample = [host_of(rng.randrange(count)) for _ in range(LOOKUPS)]
    sample = list(dict.fromkeys(sample))
    unknown = [f"u{i}.nowhere.test" for i in range(LOOKUPS)]
    registry = open_registry(dsn, max_tenants=10_000)
    registry.tenant_for_host(host_of(0))  # connections open, statements prepared

    def timed(hosts: list[str]) -> list[float]:
        times = []
        for host in hosts:
            started = time.perf_counter()
            registry.tenant_for_host(host)
            times.append((time.perf_counter() - started) * 1e6)
        return times

    cold, cached, negative = timed(sample), timed(sample), timed(unknown)
    registry.close()
    registry.inner.close()

    async def async_times() -> list[float]:
        reg = AsyncPostgresRegistry(dsn)
        await reg.tenant_for_host(host_of(0))
        times = []
        for host in sample:
            started = time.perf_counter()
            await reg.tenant_for_host(host)
            times.append((time.perf_counter() - started) * 1e6)
        await reg.aclose()
        return times

    uncached = asyncio.run(async_times())
    result = {}
    for name, times in (
        ("cold", cold),
        ("cached", cached),
        ("unknown_cold", negative),
        ("async", uncached),
    ):
        result[f"{name}_p50_us"] = percentile(times, 0.5)
        result[f"{name}_p99_us"] = percentile(times, 0.99)
    return result


# -- propagation ---------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, base64, logging, sys, time
    from certgate import CertGate
    from certgate.stores import open_registry
    from certgate.stores.postgres import AsyncPostgresRegistry
    from tests.store_helpers import leaf_facts

    logging.getLogger("certgate").disabled = True
    mode, dsn, host, der = sys.argv[1:5]
    leaf = type("Leaf", (), {"der": base64.b64decode(der)})()
    options = dict(trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])

    def report(last, decision):
        now = "allowed" if decision.reason is None else decision.reason.value
        if now != last:
            print(f"{time.time():.6f} {now}", flush=True)
        return now

    async def run_async():
        gate = CertGate(AsyncPostgresRegistry(dsn), **options)
        last = None
        while True:
            last = report(last, await gate.adecide(leaf_facts(host, leaf)))
            await asyncio.sleep(0.001)

    if mode == "sync":
        gate = CertGate(open_registry(dsn), **options)
        last = None
        while True:
            last = report(last, gate.decide(leaf_facts(host, leaf)))
            time.sleep(0.001)
    else:
        asyncio.run(run_async())
    """
)


def propagation(dsn: str, mode: str) -> dict[str, float]:
    store = PostgresRegistry(dsn)
    mine = CA.root("Bench device CA")
    other = CA.root("Bench other CA")
    tenant_id = "t0000000"
    host = host_of(0)
    store.put(Tenant(tenant_id, (host,), (mine.cert,)))
    device = mine.issue("bench-device")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, dsn, host, base64.b64encode(device.der).decode()],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    lines: list[str] = []
    ready = threading.Condition()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            with ready:
                lines.append(line.strip())
                ready.notify_all()

    threading.Thread(target=read, daemon=True).start()

    def next_line(seen: int) -> str:
        with ready:
            if not ready.wait_for(lambda: len(lines) > seen, timeout=30):
                raise RuntimeError("the child reported nothing in 30 s")
            return lines[seen]

    delays = []
    try:
        assert next_line(0).endswith("allowed")
        for n in range(PROPAGATIONS):
            time.sleep(0.2)
            root = other if n % 2 == 0 else mine
            started = time.time()
            store.put(Tenant(tenant_id, (host,), (root.cert,)))
            stamp, outcome = next_line(n + 1).split()
            assert outcome == ("untrusted_chain" if n % 2 == 0 else "allowed"), outcome
            delays.append((float(stamp) - started) * 1000)
    finally:
        child.kill()
        child.wait()
        store.close()
    return {
        f"{mode}_p50_ms": statistics.median(delays),
        f"{mode}_max_ms": max(delays),
    }


def import_rate(dsn: str) -> float:
    store = PostgresRegistry(dsn)
    cas = [CA.root(f"Import CA {i}") for i in range(4)]
    tenants = (
        Tenant(f"i{i:06d}", (f"i{i:06d}.import.test",), (cas[i % 4].cert,), shared_anchors=True)
        for i in range(IMPORTS)
    )
    started = time.perf_counter()
    store.import_tenants(tenants, batch=500)
    seconds = time.perf_counter() - started
    store.close()
    return IMPORTS / seconds


# -- the run ---------------------------------------------------------------------------


@contextlib.contextmanager
def databases(dsn: str | None) -> Iterator[Any]:
    if dsn is not None:
        yield lambda _name: dsn
        return
    with pg_cluster() as server:
        yield server.create_database


def run(sizes: list[int], dsn: str | None) -> dict[str, Any]:
    cas = [CA.root(f"Shared CA {i}", organization="Bench") for i in range(SHARED_CAS)]
    results: dict[str, Any] = {}
    with databases(dsn) as new_database:
        for count in sizes:
            url = new_database(f"scale_{count}")
            row: dict[str, Any] = {"fill_s": fill(url, count, cas)}
            row["startup"] = startup(url, count)
            row["lookup"] = lookups(url, count)
            row["propagation"] = {**propagation(url, "sync"), **propagation(url, "async")}
            row["import_tenants_per_s"] = import_rate(url)
            results[str(count)] = row
            print(json.dumps({count: row}, indent=1), flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--dsn", help="an empty database to fill (default: a throwaway server)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.dsn and "," in args.sizes:
        parser.error("--dsn takes one size (the database must be empty)")
    results = run([int(s) for s in args.sizes.split(",")], args.dsn)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
