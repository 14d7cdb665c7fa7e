"""certgate benchmark: the PostgreSQL store - bench_scale's backend, and
what only PostgreSQL has (the async registry).

1. ``bench/bench_scale.py --store postgresql`` measures the PostgreSQL store
   like the SQLite one (import, start-up and RSS, lookups, requests,
   propagation, 4 processes; see that file), through
   :class:`PostgresBackend`: one database per size (``scale_1000``, ...) on
   a cluster kept in ``DIR/postgres`` (started for the run as in the tests,
   with ``fsync=off``; stopped at the end, reused by the next run), or on
   your server when ``CERTGATE_BENCH_PG`` holds a URL of a role that may
   create databases (``postgresql://admin:pw@db/postgres``).

2. This file, run after (1), measures :class:`~certgate.stores.postgres.AsyncPostgresRegistry`
   on the same databases::

       .venv/bin/python bench/scale_postgres.py [--sizes 1000,100000,1000000] [--json F]

   * **lookup**: 2,000 random known hosts, then 2,000 unknown hosts,
     awaited one after another on one event loop (never cached: one query
     each): p50 / p99 in microseconds (wall time);
   * **propagation**: another process decides a device's request in a loop
     with ``CertGate.adecide`` over the async registry (its decision memo
     on); this one switches the tenant's root (another key) and back 10
     times: from the write's commit to that process's first decision under
     the new trust (p50, max; target under 2 s; one CLOCK_MONOTONIC).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402
from bench_scale import Factory, _other_root, host, tenant_id  # noqa: E402
from tests.pg_server import PgServer, pg_cluster  # noqa: E402

from certgate.stores import TenantRecord, open_store  # noqa: E402
from certgate.stores.postgres import AsyncPostgresRegistry  # noqa: E402

ENV_URL = "CERTGATE_BENCH_PG"
LOOKUPS = 2000
PROPAGATIONS = 10


class PostgresBackend:
    """bench_scale's :class:`Backend` for PostgreSQL (see the module docstring)."""

    name = "postgresql"

    def __init__(self, directory: Path) -> None:
        admin = os.environ.get(ENV_URL)
        self.server: PgServer | None = None
        if admin:
            self.admin_url = admin
        else:
            stack = contextlib.ExitStack()
            self.server = stack.enter_context(pg_cluster(keep=directory / "postgres"))
            atexit.register(_stop, stack)
            self.admin_url = ""

    def _admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self.server is not None:
            return self.server.admin()
        return psycopg.connect(self.admin_url, autocommit=True)

    def url(self, size: int) -> str:
        """The database of ``size`` tenants; the throwaway server's password
        is in a libpq passfile, not in the URL (which the bench prints)."""
        name = f"scale_{size}"
        server = self.server
        if server is None:
            return self.admin_url.rsplit("/", 1)[0] + "/" + name
        passfile = server.root / "pgpass"
        if not passfile.exists() or str(server.port) not in passfile.read_text():
            passfile.write_text(f"127.0.0.1:{server.port}:*:certgate:{server.password}\n")
            passfile.chmod(0o600)
        return f"postgresql://certgate@127.0.0.1:{server.port}/{name}?passfile={passfile}"

    def reset(self, size: int) -> None:
        name = f"scale_{size}"
        with self._admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            owner = " OWNER certgate" if self.server is not None else ""
            conn.execute(f"CREATE DATABASE {name}{owner}")

    def disk_bytes(self, size: int) -> int | None:
        with self._admin() as conn:
            row = conn.execute(
                "SELECT pg_database_size(datname) FROM pg_database WHERE datname = %s",
                (f"scale_{size}",),
            ).fetchone()
        return None if row is None else int(row[0])


def _stop(stack: contextlib.ExitStack) -> None:
    """Stop the kept cluster at exit; the registries still open in this
    process would log its going away as an outage."""
    for name in ("certgate", "psycopg"):
        logging.getLogger(name).disabled = True
    stack.close()


# -- the async registry ------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def async_lookups(url: str, size: int) -> dict[str, float]:
    rng = random.Random(size)
    known = [host(rng.randrange(size)) for _ in range(LOOKUPS)]
    unknown = [f"u{i}.nowhere.test" for i in range(LOOKUPS)]

    async def run() -> dict[str, float]:
        registry = AsyncPostgresRegistry(url)
        await registry.tenant_for_host(known[0])  # connections open, statements prepared
        out: dict[str, float] = {}
        for name, hosts in (("known", known), ("unknown", unknown)):
            times = []
            for name_ in hosts:
                started = time.perf_counter()
                found = await registry.tenant_for_host(name_)
                times.append((time.perf_counter() - started) * 1e6)
                assert (found is not None) == (name == "known")
            out[f"{name}_p50_us"] = round(percentile(times, 0.5))
            out[f"{name}_p99_us"] = round(percentile(times, 0.99))
        await registry.aclose()
        return out

    return asyncio.run(run())


CHILD = """
import asyncio, base64, logging, sys, time
from certgate import CertGate
from certgate.stores.postgres import AsyncPostgresRegistry
from bench_scale import facts

logging.getLogger("certgate").disabled = True
url, i, der = sys.argv[1], int(sys.argv[2]), base64.b64decode(sys.argv[3])

async def run():
    gate = CertGate(
        AsyncPostgresRegistry(url), trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"]
    )
    last = None
    while True:
        decision = await gate.adecide(facts(i, der))
        now = "allowed" if decision.reason is None else decision.reason.value
        if now != last:
            print(f"{time.monotonic():.6f} {now}", flush=True)
            last = now
        await asyncio.sleep(0.001)

asyncio.run(run())
"""


def async_propagation(url: str, size: int, directory: Path) -> dict[str, float]:
    factory = Factory(directory)
    i = size // 2
    store = open_store(url)
    if store.get(tenant_id(i)) is None:
        raise SystemExit(f"run bench/bench_scale.py --store postgresql --sizes {size} first")
    record = factory.record(i)
    store.put(record)
    device = factory.device(i)
    other_record = TenantRecord(record.id, record.hosts, (_other_root(factory, i),))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(i), base64.b64encode(device).decode()],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT / "bench",
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}:{ROOT / 'src'}"},
    )
    lines: list[str] = []
    ready = threading.Condition()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            with ready:
                lines.append(line.strip())
                ready.notify_all()

    threading.Thread(target=read, daemon=True).start()

    def line(n: int) -> str:
        with ready:
            if not ready.wait_for(lambda: len(lines) > n, timeout=30):
                raise RuntimeError("the watching process reported nothing in 30 s")
            return lines[n]

    delays = []
    try:
        assert line(0).endswith("allowed"), lines
        for n in range(PROPAGATIONS):
            time.sleep(0.25)
            store.put(other_record if n % 2 == 0 else record)
            written = time.monotonic()
            stamp, outcome = line(n + 1).split()
            assert outcome == ("untrusted_chain" if n % 2 == 0 else "allowed"), outcome
            delays.append((float(stamp) - written) * 1000)
    finally:
        child.kill()
        child.wait()
        store.put(record)
    return {"p50_ms": round(statistics.median(delays), 1), "max_ms": round(max(delays), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--dir", default="/tmp/certgate-bench-scale")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    backend = PostgresBackend(Path(args.dir))
    results: dict[str, Any] = {"load": os.getloadavg()[0]}
    for size in (int(s) for s in args.sizes.split(",")):
        url = backend.url(size)
        row = {
            "lookups": async_lookups(url, size),
            "propagation": async_propagation(url, size, Path(args.dir)),
            "load": os.getloadavg()[0],
        }
        print(f"{size:>9,}  {json.dumps(row)}", flush=True)
        results[str(size)] = row
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    worst = max(row["propagation"]["max_ms"] for key, row in results.items() if key != "load")
    print("all targets met" if worst < 2000 else f"FAIL: propagation max {worst} ms (target < 2 s)")
    return 0 if worst < 2000 else 1


if __name__ == "__main__":
    sys.exit(main())
