"""certgate benchmark: warm requests through a real server, 1k vs 1M tenants.

Run from the repository root (one command; the stores are the ones
``bench/bench_scale.py`` builds and keeps)::

    .venv/bin/python bench/bench_scale_server.py            # ~2 min
    .venv/bin/python bench/bench_scale_server.py --quick    # ~1 min
    .venv/bin/python bench/bench_scale_server.py --sizes 1000,100000 --json out.json

Exit status: 0 when the target is met, 1 when it is missed, 2 when the
benchmark itself went wrong (a store missing, unexpected statuses).

**The stores.** ``--dir`` (default ``/tmp/certgate-bench-scale``) holds
``scale-{size}.db`` from ``bench_scale.py``: tenant ``i`` has the hosts
``tI.scale.test`` and ``*.tI.scale.test`` and a root ``CN=Tenant i Root
CA`` signed with the key kept there (``scale-key.pem``). A store that is
missing or incomplete is not built here (a million tenants take ~20
minutes): run ``bench_scale.py --sizes N`` first, or pass ``--build``. When
the 1M store is missing and ``--sizes`` was not given, the 100k store is
used instead and the output says so.

**The servers.** One per size, each a real uvicorn server (one worker, plain
HTTP on loopback, httptools) through certgate's adapter
(``certgate.servers.uvicorn.config``, which records the socket peer) with
the FastAPI app of ``bench/e2e_server.py`` (``CertGateMiddleware``; the
route reads the identity and answers its tenant id and common name), the
gate being ``CertGate(CachingRegistry(SqliteRegistry(path)),
header_sources=["cloudflare"], trusted_proxies=["127.0.0.1/32"])`` with the
registry cache's defaults. A third server, the e2e bare app on plain
uvicorn (no certgate), is measured alongside as a reference for what the
machine gives at the time (the certgate servers' CPU over it is reported).
Servers are pinned to CPU 0, the load generator (this process,
``bench/e2e_load.py``) to CPU 1.

**The traffic.** A hot working set of 1,000 tenants per store (all of the
1k store; a random 1,000 of the larger one), one client certificate each
(issued now by the tenant's root, so it verifies), sent as the trusted proxy
in ``Cf-Client-Cert-Der-Base64`` to the tenant's host, rotating through the
set: 32 requests in flight, keep-alive (100 requests per connection), each
request on a connection for the next tenant. Every server is warmed first
(3 passes over its set: tenants cached, verifications cached, decision memo
filled), then the servers are measured in alternating rounds (A B C / C B A),
each sample ``--duration`` seconds.

**Reported** per size: throughput (median, min-max), p50/p99 latency
(medians over rounds), server CPU per request (``/proc``, user + system of
the server process, its threads included), registry loads during the
samples (0 expected: a hot set) and the server's RSS at the end; the ratio
of the largest size to the smallest: median of the per-round ratios of CPU
per request (rounds are adjacent in time, so other work on the machine
weighs on both alike) and of the medians. Target (issue 10): the largest
size's server CPU per request within 10 % of the smallest's (per-round ratio
median <= 1.10).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import uvloop
from bench_e2e import (
    GENERATOR_CPU,
    SERVER_CPU,
    Running,
    ServerSpec,
    VariantResult,
    _free_port,
    _pin,
    _wait_ready,
    fetch_stats,
    stop_servers,
)
from bench_scale import HOT, Factory, SqliteBackend, ensure_store, host
from e2e_load import _PROXY_LINES, Material, Plan, _request_prefix, run_sample
from e2e_pki import CACHE, STATS_PATH, Client

from certgate import CertGate
from certgate.stores import open_store
from certgate.stores.caching import CachingRegistry
from certgate.stores.sqlite import SqliteRegistry, path_of_url

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TARGET = 1.10
KEEP_ALIVE = 100
INFLIGHT = 32
FALLBACK = 100_000
BARE = "bare"
"""The reference server's key: the same app without certgate (plain uvicorn)."""


# -------------------------------------------------------------------- server


def serve(url: str, port: int) -> None:
    """The server process: the e2e FastAPI app over a SQLite store (``url``
    ``bare``: the e2e bare app, plain uvicorn, no certgate)."""
    import uvicorn  # noqa: PLC0415
    from e2e_server import uvicorn_config  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if url == BARE:
        os.environ["BENCH_APP"] = "bare"
        uvicorn.Server(uvicorn_config("bare", None, port, False)).run()
        return
    gate = CertGate(
        CachingRegistry(SqliteRegistry(path_of_url(url))),
        header_sources=["cloudflare"],
        trusted_proxies=["127.0.0.1/32"],
        exempt_paths=[STATS_PATH],
    )
    os.environ["BENCH_APP"] = "certgate"
    uvicorn.Server(uvicorn_config("certgate", None, port, False, gate=gate)).run()


@contextlib.contextmanager
def start_servers(urls: dict[str, str], directory: Path) -> Iterator[dict[str, Running]]:
    """One server per store (and the bare one), pinned to the server CPU;
    stopped on exit."""
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    running: dict[str, Running] = {}
    try:
        for size, url in urls.items():
            port = _free_port()
            log = logs / f"scale-server-{size}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, __file__, "--dir", str(directory), "--serve", url, str(port)],
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT)])},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=lambda: _pin(SERVER_CPU),  # noqa: PLW1509 - affinity only
                )
            app = "bare" if url == BARE else "certgate"
            spec = ServerSpec(size, "uvicorn", app, "header")
            running[size] = Running(spec, port, proc, log)
        for server in running.values():
            _wait_ready(server)
        yield running
    finally:
        stop_servers(running.values())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


# ------------------------------------------------------------------- traffic


class HotSet(Material):
    """Client ``k`` of the set belongs to the tenant of ``hosts[k]``: every
    request goes to its own client's tenant (through the Cloudflare header)."""

    def __init__(self, clients: Sequence[Client], hosts: Sequence[str]) -> None:
        super().__init__(clients)
        self.host_prefixes = [_request_prefix(name) for name in hosts]

    def request(self, index: int, plan: Plan, last: bool) -> bytes:
        parts = [self.host_prefixes[index], _PROXY_LINES, self.cert_lines[index]]
        if last:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)


def hot_set(size: int, factory: Factory) -> HotSet:
    """1,000 tenants of the store of ``size`` (all of them at 1k), a fresh
    client certificate each, issued by the tenant's root."""
    picks = random.Random(size + 1).sample(range(size), min(HOT, size))
    clients = [
        Client(index=k, tenant=i, der=factory.device(i), pem=b"") for k, i in enumerate(picks)
    ]
    return HotSet(clients, [host(i) for i in picks])


class Measure:
    """Samples of one server: the e2e bench's per-variant figures plus the
    registry loads during the samples."""

    def __init__(self, size: str, server: Running, material: HotSet) -> None:
        self.size = size
        self.server = server
        self.material = material
        self.plan = Plan(server.port, "header", False, KEEP_ALIVE, INFLIGHT)
        self.result = VariantResult(f"{size}")
        self.cursor = 0
        self.registry_loads = 0
        self.registry_misses = 0

    def warm(self, loop: Any) -> None:
        sample, self.cursor = run_sample(
            loop, self.plan, self.material, self.cursor, max_requests=3 * self.material.count
        )
        self.result.warm_requests = sample.requests
        if sample.errors or set(sample.statuses) - {200}:
            raise SystemExit(
                f"bench: warm-up of the {self.size} server: {dict(sample.statuses)}, "
                f"{sample.errors} errors (log: {self.server.log})"
            )

    def sample(self, loop: Any, duration: float) -> None:
        before = fetch_stats(self.server)
        cpu0 = self.server.cpu_seconds()
        sample, self.cursor = run_sample(
            loop, self.plan, self.material, self.cursor, duration=duration
        )
        cpu = self.server.cpu_seconds() - cpu0
        after = fetch_stats(self.server)
        self.result.add(sample, cpu, before, after)
        for key in ("registry_loads", "registry_misses"):
            setattr(self, key, getattr(self, key) + after.get(key, 0) - before.get(key, 0))


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def summary(m: Measure) -> dict[str, Any]:
    r = m.result
    return {
        "req_per_s_median": round(median(r.rates)),
        "req_per_s_min": round(min(r.rates)),
        "req_per_s_max": round(max(r.rates)),
        "p50_ms_median": round(median(r.p50_ms), 3),
        "p99_ms_median": round(median(r.p99_ms), 3),
        "server_cpu_us_per_request_median": round(median(r.server_us), 1),
        "server_cpu_us_per_request_min": round(min(r.server_us), 1),
        "server_cpu_us_per_request_max": round(max(r.server_us), 1),
        "server_cpu_us_per_round": [round(v, 1) for v in r.server_us],
        "server_cpu_utilisation_median": round(median(r.server_util), 3),
        "generator_cpu_utilisation_max": round(max(r.gen_util, default=0.0), 3),
        "statuses": {str(k): v for k, v in sorted(r.statuses.items())},
        "errors": r.errors,
        "connections": r.connections,
        "verification_cache_hit_rate": r.hit_rate,
        "registry_loads_during_samples": m.registry_loads,
        "registry_misses_during_samples": m.registry_misses,
        "warm_up_requests": r.warm_requests,
        "server_rss_mb_end": rss_mb(m.server.proc.pid),
    }


def print_row(size: str, s: dict[str, Any]) -> None:
    name = "bare (no certgate)" if size == BARE else f"{int(size):,} tenants"
    print(
        f"  {name:>18}  {s['req_per_s_median']:6d} req/s "
        f"[{s['req_per_s_min']}-{s['req_per_s_max']}]  p50 {s['p50_ms_median']:.2f} ms  "
        f"p99 {s['p99_ms_median']:.2f} ms  server {s['server_cpu_us_per_request_median']:.1f} "
        f"µs/req [{s['server_cpu_us_per_request_min']:.1f}-"
        f"{s['server_cpu_us_per_request_max']:.1f}] "
        f"({s['server_cpu_utilisation_median'] * 100:.0f}% cpu)  "
        f"gen {s['generator_cpu_utilisation_max'] * 100:.0f}%  "
        f"registry loads {s['registry_loads_during_samples']}  "
        f"RSS {s['server_rss_mb_end']} MB",
        flush=True,
    )


# ---------------------------------------------------------------------- main


def choose_sizes(args: argparse.Namespace, backend: SqliteBackend, factory: Factory) -> list[int]:
    """The sizes to compare: their stores complete (or built, ``--build``)."""
    sizes = [int(s) for s in (args.sizes or "1000,1000000").split(",")]
    out: list[int] = []
    for size in sizes:
        if args.build:
            ensure_store(backend, factory, size, fresh=False)
        elif not complete(backend, size):
            if args.sizes is None and size == 1_000_000 and complete(backend, FALLBACK):
                print(
                    f"NOTE: no complete 1,000,000-tenant store in {args.dir}: "
                    f"using the {FALLBACK:,} store (build it: bench/bench_scale.py)",
                    flush=True,
                )
                out.append(FALLBACK)
                continue
            else:
                raise SystemExit(
                    f"bench: no complete {size:,}-tenant store at {backend.url(size)} "
                    f"(build it with bench/bench_scale.py --sizes {size}, or pass --build)"
                )
        out.append(size)
    return out


def complete(backend: SqliteBackend, size: int) -> bool:
    if not backend.path(size).exists():
        return False
    try:
        store = open_store(backend.url(size))
        return store.count() == size and store.get(f"t{size - 1:07d}") is not None
    except Exception:  # noqa: BLE001 - a broken store counts as missing
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", help="store sizes to compare (default 1000,1000000)")
    parser.add_argument("--dir", default="/tmp/certgate-bench-scale", help="where the stores are")
    parser.add_argument("--build", action="store_true", help="build missing stores (slow)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (~1 min)")
    parser.add_argument("--rounds", type=int, help="rounds (default 9, --quick 5)")
    parser.add_argument("--duration", type=float, help="seconds per sample (default 3, quick 1)")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--serve", nargs=2, metavar=("URL", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    rounds = args.rounds or (5 if args.quick else 9)
    duration = args.duration or (1.0 if args.quick else 3.0)
    logging.getLogger("certgate").setLevel(logging.ERROR)
    directory = Path(args.dir)
    factory = Factory(directory)
    backend = SqliteBackend(directory)
    sizes = choose_sizes(args, backend, factory)
    _pin(GENERATOR_CPU)
    load = os.getloadavg()
    print(
        f"sizes {sizes}, {rounds} rounds x {duration:g} s, {INFLIGHT} in flight, keep-alive "
        f"x{KEEP_ALIVE}, hot set {HOT:,} tenants, load average {load[0]:.2f}",
        flush=True,
    )
    materials = {str(size): hot_set(size, factory) for size in sizes}
    materials[BARE] = materials[str(sizes[0])]  # the bare app ignores host and certificate
    loop = uvloop.new_event_loop()
    started = time.monotonic()
    try:
        urls = {str(s): backend.url(s) for s in sizes} | {BARE: BARE}
        with start_servers(urls, directory) as servers:
            all_measures = [Measure(k, servers[k], materials[k]) for k in urls]
            for m in all_measures:
                m.warm(loop)
            for r in range(rounds):
                for m in all_measures if r % 2 == 0 else all_measures[::-1]:
                    m.sample(loop, duration)
            rows = {m.size: summary(m) for m in all_measures}
    finally:
        loop.close()
        for material in set(materials.values()):
            material.close()
    problems = []
    for key, s in rows.items():
        wrong = {k: v for k, v in s["statuses"].items() if k != "200"}
        if wrong or s["errors"]:
            problems.append(f"{key}: statuses {s['statuses']}, {s['errors']} errors")
    first, last = all_measures[0], all_measures[len(sizes) - 1]
    bare = all_measures[-1]
    per_round = [b / a for a, b in zip(first.result.server_us, last.result.server_us, strict=True)]
    ratio = median(per_round)
    figures: dict[str, Any] = {
        "sizes": sizes,
        "rounds": rounds,
        "duration_s": duration,
        "inflight": INFLIGHT,
        "keep_alive": KEEP_ALIVE,
        "hot_tenants": HOT,
        "load_average_start": load,
        "load_average_end": os.getloadavg(),
        "elapsed_s": round(time.monotonic() - started, 1),
        "servers": rows,
        "cpu_ratio_per_round": [round(v, 3) for v in per_round],
        "cpu_ratio_median": round(ratio, 3),
        "cpu_ratio_of_medians": round(
            median(last.result.server_us) / median(first.result.server_us), 3
        ),
        "throughput_ratio_of_medians": round(
            median(last.result.rates) / median(first.result.rates), 3
        ),
        "p50_ratio_of_medians": round(median(last.result.p50_ms) / median(first.result.p50_ms), 3),
        "certgate_cpu_us_over_bare_median": {
            m.size: round(
                median(
                    [c - b for c, b in zip(m.result.server_us, bare.result.server_us, strict=True)]
                ),
                1,
            )
            for m in all_measures[:-1]
        },
        "target": f"server CPU/request at {sizes[-1]:,} <= {TARGET} x {sizes[0]:,}",
        "pass": ratio <= TARGET,
        "problems": problems,
    }
    print(f"\nwarm requests through uvicorn (load average now {os.getloadavg()[0]:.2f})")
    for key, s in rows.items():
        print_row(key, s)
    print(
        f"  ratio {sizes[-1]:,}/{sizes[0]:,}: server CPU per request {ratio:.3f} "
        f"(per round {min(per_round):.3f}-{max(per_round):.3f}; of medians "
        f"{figures['cpu_ratio_of_medians']:.3f}), throughput "
        f"{figures['throughput_ratio_of_medians']:.3f}, p50 {figures['p50_ratio_of_medians']:.3f}"
    )
    over = figures["certgate_cpu_us_over_bare_median"]
    print(
        "  certgate's server CPU over bare, per round, median: "
        + ", ".join(f"{int(k):,} tenants {v:.1f} µs" for k, v in over.items())
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    for problem in problems:
        print(f"PROBLEM: {problem}")
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(
        f"{verdict}: server CPU per request at {sizes[-1]:,} tenants is {ratio:.3f} x the "
        f"{sizes[0]:,} figure (target <= {TARGET:.2f})"
    )
    if problems:
        return 2
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
