"""Per-tenant handshakes over a large SQLite store: how long the SNI
callback holds the thread of the handshake (the event loop under uvicorn).

Real TLS 1.3 handshakes in memory (``ssl.MemoryBIO``, no sockets: only
certgate's and OpenSSL's work is timed) against a copy of the store that
``bench/bench_scale.py`` builds (hosts ``tI.scale.test``), through
:class:`~certgate.servers.tenant_contexts.TenantContexts` over
``open_registry(url)`` (the cache) behind a ``CertGate``. Four kinds of SNI:

* **cached**: a tenant already looked up (the cache's inline answer);
* **uncached**: a tenant not looked up before (a store lookup on a lookup
  thread while the handshake waits, then a new per-tenant context);
* **made-up**: a name no tenant serves, first time (a store lookup);
* **made-up again**: such a name repeated (the negative cache).

For each: the time inside the SNI callback (the event loop is blocked for
exactly that long), split into the tenant lookup and the rest (building or
finding the context), and the whole handshake, p50 / p99 in microseconds.

    .venv/bin/python bench/bench_sni.py [--store /tmp/certgate-bench-scale/scale-1000000.db]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from certgate import CertGate, Tenant
from certgate.devpki import CA
from certgate.servers.tenant_contexts import TenantContexts
from certgate.stores import open_registry
from certgate.stores.sqlite import sqlite_url

DEFAULT_STORE = Path("/tmp/certgate-bench-scale/scale-1000000.db")
ROUNDS = 400


def host(i: int) -> str:
    return f"t{i}.scale.test"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Timed:
    """Wraps ``TenantContexts.tenant_for`` and ``select`` to time them."""

    def __init__(self, contexts: TenantContexts) -> None:
        self.lookup: list[float] = []
        self.callback: list[float] = []
        tenant_for, select = contexts.tenant_for, contexts.select

        def timed_tenant_for(host: str) -> Tenant | None:
            start = time.perf_counter()
            try:
                return tenant_for(host)
            finally:
                self.lookup.append(time.perf_counter() - start)

        def timed_select(conn: Any) -> int | None:
            start = time.perf_counter()
            try:
                return select(conn)
            finally:
                self.callback.append(time.perf_counter() - start)

        contexts.tenant_for = timed_tenant_for  # type: ignore[method-assign]
        contexts.select = timed_select  # type: ignore[method-assign]

    def reset(self) -> None:
        self.lookup.clear()
        self.callback.clear()


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, sni: str) -> float:
    """One in-memory handshake; its seconds."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(c_in, c_out, server_hostname=sni)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    start = time.perf_counter()
    done_c = done_s = False
    for _ in range(20):
        if not done_c:
            try:
                tls_client.do_handshake()
                done_c = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not done_s:
            try:
                tls_server.do_handshake()
                done_s = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if done_c and done_s:
            break
    else:
        raise RuntimeError(f"handshake for {sni} did not finish")
    return time.perf_counter() - start


def run(store: Path, rounds: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="certgate-bench-sni-"))
    try:
        copy = work / store.name
        started = time.perf_counter()
        shutil.copyfile(store, copy)  # the original is never opened
        copied = time.perf_counter() - started
        server_ca = CA.root("bench sni server CA")
        server_ca.server(["*.scale.test"]).write_files(work, "server")
        registry = open_registry(sqlite_url(copy))
        gate = CertGate(registry)
        contexts = TenantContexts(gate, work / "server.pem", work / "server.key")
        server = contexts.server_context()
        client = ssl.create_default_context(cafile=None)
        client.load_verify_locations(cadata=server_ca.cert_pem.decode())
        client.check_hostname = False  # made-up names are not on the certificate
        timed = Timed(contexts)
        size = registry.inner.count()
        rng = random.Random(1)
        picks = rng.sample(range(size), 2 * rounds + 1)
        hot = host(picks[0])
        uncached = [host(i) for i in picks[1 : rounds + 1]]
        made_up = [f"n{rng.getrandbits(64):x}.scale.test" for _ in range(rounds)]
        out: dict[str, Any] = {"store": str(store), "tenants": size, "copy_s": round(copied, 1)}

        def case(name: str, names: Callable[[int], str]) -> None:
            timed.reset()
            total = [handshake(server, client, names(i)) for i in range(rounds)]
            assert len(timed.callback) == rounds, (name, len(timed.callback))
            rest = [c - lk for c, lk in zip(timed.callback, timed.lookup, strict=True)]
            out[name] = {
                "callback_us": us(timed.callback),
                "lookup_us": us(timed.lookup),
                "context_us": us(rest),
                "handshake_us": us(total),
            }

        handshake(server, client, hot)
        case("cached", lambda i: hot)
        case("uncached", lambda i: uncached[i])
        case("made_up", lambda i: made_up[i])
        case("made_up_again", lambda i: made_up[i])
        stats = registry.stats()
        out["cache"] = {"tenants": stats.tenants, "negative": stats.negative, "loads": stats.loads}
        out["contexts_built"] = contexts.built
        registry.close()
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def us(values: list[float]) -> dict[str, float]:
    return {"p50": round(pct(values, 0.5) * 1e6, 1), "p99": round(pct(values, 0.99) * 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args(argv)
    if not args.store.exists():
        print(f"{args.store}: no such store (build it with bench/bench_scale.py)", file=sys.stderr)
        return 2
    print(json.dumps(run(args.store, args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
