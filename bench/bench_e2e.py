"""certgate end to end: real servers, a real app, bare vs certgate interleaved.

Run from the repository root (``python3 dev.py bench-e2e [ARGS]`` sets up
the virtual environment first)::

    .venv/bin/python bench/bench_e2e.py             # full run (~10 min on 2 cores)
    .venv/bin/python bench/bench_e2e.py --quick     # fewer rounds, no 100,000 set (~90 s)
    .venv/bin/python bench/bench_e2e.py --smoke     # seconds: checks that the bench works
    .venv/bin/python bench/bench_e2e.py --json out.json --profile

Exit status: 0 when every target is met, 1 when one is missed, 2 when the
benchmark itself went wrong (unexpected statuses, failed requests).

Setups (one server worker each; every variant of a setup runs as its own
server process, all pinned to CPU 0, the load generator - this process -
pinned to CPU 1; variants are measured alternately, A B C / C B A, round by
round, each sample a fresh set of connections):

1. FastAPI + Cloudflare header source. uvicorn serves plain HTTP on loopback
   and the generator is the trusted proxy (127.0.0.1) sending
   ``Cf-Client-Cert-Der-Base64``, ``Cf-Client-Cert-Sha256`` and
   ``X-Forwarded-For``. The certgate variant runs through certgate's uvicorn
   adapter (``certgate.servers.uvicorn.config``), which records the socket
   peer before uvicorn's proxy-headers middleware (on by default, trusting
   127.0.0.1) rewrites ``scope["client"]`` from ``X-Forwarded-For``: that is
   what a deployment behind a proxy must use. ``trust_reported_peer`` with
   plain uvicorn would see the rewritten client address (203.0.113.7), not
   the proxy, and strip the certificate headers. The bare variant is plain
   uvicorn. Extra variants: the documented FastAPI dependency
   (``Depends(client_identity)``) vs the middleware alone, and certgate with
   ``cache_size = 0`` for the 100,000-certificate rotation.
2. FastAPI + mTLS through certgate's uvicorn adapter: the client presents its
   certificate in the handshake (TLS 1.3, EC P-256, full handshake on every
   connection). The bare variant is plain uvicorn with the same prepared
   server context; the ``adapter`` variant is the bare app through the
   adapter (the adapter's own cost).
3. Flask + gunicorn (one sync worker) with the header source.
4. Flask + gunicorn over mTLS (certgate's ``ssl_context`` hook).
   gunicorn's sync worker closes the connection after every response, so
   the gunicorn setups have connection-per-request runs only.

Traffic: 32 requests in flight; keep-alive runs send 100 requests per
connection, connection-per-request runs one. Allowed traffic addresses each
request to the tenant whose root issued the client certificate; refused
traffic to the next tenant (certgate: 403 ``untrusted_chain``; the bare app
answers it like any other request). Certificates: 1,000 or 100,000 distinct
EC P-256 client certificates (cached under bench/.cache/), rotated in order;
the rotation continues across rounds, and each server is warmed first (up to
11,000 requests, enough to fill the default 10,000-entry cache).

The app reads the identity and answers ``{"tenant_id": ..., "common_name":
...}``; the bare app builds the same body from constants.

Reported per setup, case and variant: throughput (median over rounds and
min-max), the variant/bare ratio (median of per-round ratios), p50/p99
latency (medians over rounds), server CPU per request (from /proc, the
server process and its children), the generator's CPU use, and certgate's
cache hit rate (read from ``/_bench/stats``, an exempt route). Targets
(issue 7): certgate >= 0.95 of bare in every case; the dependency costs no
more than the middleware alone (ratio >= 0.98, i.e. within noise); refused
requests cost no more than allowed ones (refused ratio >= allowed ratio -
0.02); with 100,000 certificates the cache on is no slower than the cache
off (ratio >= 0.98). The generator's ceiling (a trivial uvloop server on CPU
0) is measured first.

``--profile`` adds a separate pass after the measurements (so the profiler
never slows a measured variant): each certgate server again under cProfile,
one sample of allowed and one of refused traffic, and the certgate
functions with the most own time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import pstats
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from e2e_load import Material, Plan, Sample, run_sample
from e2e_pki import CACHE, STATS_PATH, Pki, ensure_pki, load_clients, tenant_host

import certgate

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RATIO_TARGET = 0.95
DEPENDENCY_TARGET = 0.98
CACHE_OFF_TARGET = 0.98
REFUSED_SLACK = 0.02
KEEP_ALIVE = 100
SERVER_CPU = 0
GENERATOR_CPU = 1


# --------------------------------------------------------------------- model


@dataclass(frozen=True)
class ServerSpec:
    name: str  # variant name: bare, adapter, certgate, dependency, cache-off
    kind: str  # uvicorn | gunicorn | trivial
    app: str  # bare | adapter | certgate | dependency
    source: str  # header | tls
    cache_size: int | None = None

    @property
    def tls(self) -> bool:
        return self.source == "tls"


@dataclass(frozen=True)
class Case:
    per_conn: int
    refused: bool
    count: int
    variants: tuple[str, ...]  # the first is the baseline (bare)

    @property
    def label(self) -> str:
        conn = f"keep-alive x{self.per_conn}" if self.per_conn > 1 else "conn/request"
        traffic = "refused" if self.refused else "allowed"
        return f"{conn}, {traffic}, {self.count:,} certs"

    @property
    def key(self) -> str:
        conn = f"ka{self.per_conn}" if self.per_conn > 1 else "cpr"
        return f"{conn}-{'refused' if self.refused else 'allowed'}-{self.count}"


@dataclass(frozen=True)
class Setup:
    key: str
    title: str
    servers: tuple[ServerSpec, ...]
    cases: tuple[Case, ...]


def setups(big: int | None) -> list[Setup]:
    """The four setups (the FastAPI dependency is a variant of setup 1)."""
    small = 1000
    out: list[Setup] = []
    h = "header"
    s1_cases = [
        Case(KEEP_ALIVE, False, small, ("bare", "certgate", "dependency")),
        Case(KEEP_ALIVE, True, small, ("bare", "certgate")),
        Case(1, False, small, ("bare", "certgate")),
    ]
    if big:
        s1_cases.append(Case(KEEP_ALIVE, False, big, ("bare", "certgate", "cache-off")))
    out.append(
        Setup(
            "fastapi-header",
            "FastAPI + Cloudflare header (uvicorn, plain HTTP on loopback, generator = proxy)",
            (
                ServerSpec("bare", "uvicorn", "bare", h),
                ServerSpec("certgate", "uvicorn", "certgate", h),
                ServerSpec("dependency", "uvicorn", "dependency", h),
                *(
                    (ServerSpec("cache-off", "uvicorn", "certgate", h, cache_size=0),)
                    if big
                    else ()
                ),
            ),
            tuple(s1_cases),
        )
    )
    t = "tls"
    s2_cases = [
        Case(KEEP_ALIVE, False, small, ("bare", "adapter", "certgate")),
        Case(KEEP_ALIVE, True, small, ("bare", "certgate")),
        Case(1, False, small, ("bare", "certgate")),
    ]
    if big:
        s2_cases.append(Case(1, False, big, ("bare", "certgate")))
    out.append(
        Setup(
            "fastapi-mtls",
            "FastAPI + mTLS through certgate's uvicorn adapter (certificate in the handshake)",
            (
                ServerSpec("bare", "uvicorn", "bare", t),
                ServerSpec("adapter", "uvicorn", "adapter", t),
                ServerSpec("certgate", "uvicorn", "certgate", t),
            ),
            tuple(s2_cases),
        )
    )
    for source, title in (
        (h, "Flask + gunicorn (1 sync worker) + Cloudflare header"),
        (t, "Flask + gunicorn (1 sync worker) over mTLS"),
    ):
        cases = [
            Case(1, False, small, ("bare", "certgate")),
            Case(1, True, small, ("bare", "certgate")),
        ]
        if big:
            cases.append(Case(1, False, big, ("bare", "certgate")))
        out.append(
            Setup(
                f"flask-gunicorn-{source if source == h else 'mtls'}",
                title,
                (
                    ServerSpec("bare", "gunicorn", "bare", source),
                    ServerSpec("certgate", "gunicorn", "certgate", source),
                ),
                tuple(cases),
            )
        )
    return out


@dataclass(frozen=True)
class Settings:
    rounds: int
    duration: float
    warm_cap: int
    big: int | None
    ceiling_rounds: int

    @classmethod
    def full(cls) -> Settings:
        return cls(rounds=5, duration=2.0, warm_cap=11_000, big=100_000, ceiling_rounds=3)

    @classmethod
    def quick(cls) -> Settings:
        return cls(rounds=3, duration=0.7, warm_cap=1_000, big=None, ceiling_rounds=1)

    @classmethod
    def smoke(cls) -> Settings:
        return cls(rounds=1, duration=0.4, warm_cap=200, big=None, ceiling_rounds=0)


# ------------------------------------------------------------------- servers


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Running:
    spec: ServerSpec
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process and its descendants."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in _tree(self.proc.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / ticks


def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out += _tree(int(child))
    return out


def server_cmd(
    spec: ServerSpec, port: int, pki: Pki, profile: Path | None
) -> tuple[list[str], dict[str, str]]:
    env = {
        "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT)]),
        "BENCH_APP": spec.app,
        "CERTGATE_CONFIG": str(pki.config(spec.source)),
        "BENCH_PKI": str(pki.directory),
    }
    if spec.cache_size is not None:
        env["BENCH_CACHE_SIZE"] = str(spec.cache_size)
    if spec.kind == "gunicorn":
        env["BENCH_BIND"] = f"127.0.0.1:{port}"
        env["BENCH_TLS"] = "1" if spec.tls else "0"
        if profile is not None:
            env["BENCH_PROFILE"] = str(profile)
        cmd = [
            sys.executable, "-m", "gunicorn", "-c", str(BENCH / "e2e_gunicorn_conf.py"),
            "e2e_server:flask_app()",
        ]  # fmt: skip
        return cmd, env
    cmd = [sys.executable, str(BENCH / "e2e_server.py"), "--port", str(port)]
    if spec.kind == "trivial":
        cmd.append("--trivial")
    else:
        cmd += ["--app", spec.app, "--source", spec.source]
    if spec.tls:
        cmd.append("--tls")
    if profile is not None:
        cmd += ["--profile", str(profile)]
    return cmd, env


@contextlib.contextmanager
def start_servers(
    specs: Sequence[ServerSpec], pki: Pki, profile_dir: Path | None = None
) -> Iterator[dict[str, Running]]:
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    running: dict[str, Running] = {}
    try:
        for spec in specs:
            port = _free_port()
            profile = None if profile_dir is None else profile_dir / f"{spec.name}.prof"
            cmd, env = server_cmd(spec, port, pki, profile)
            log = logs / f"{spec.kind}-{spec.source}-{spec.name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env={**os.environ, **env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=lambda: _pin(SERVER_CPU),  # noqa: PLW1509 - affinity only
                )
            running[spec.name] = Running(spec, port, proc, log)
        for server in running.values():
            _wait_ready(server)
        yield running
    finally:
        stop_servers(running.values())


def stop_servers(servers: Iterable[Running]) -> None:
    """SIGTERM every server still running, then wait (kill after 20 s)."""
    servers = list(servers)
    for server in servers:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
    for server in servers:
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(5)


def _wait_ready(server: Running) -> None:
    deadline = time.monotonic() + 60
    while True:
        if server.proc.poll() is not None:
            raise SystemExit(f"bench: server {server.spec} exited:\n{server.log.read_text()}")
        try:
            fetch_stats(server)
            return
        except (OSError, http.client.HTTPException, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(
                f"bench: server {server.spec} did not start:\n{server.log.read_text()}"
            )
        time.sleep(0.1)


def fetch_stats(server: Running) -> dict[str, int]:
    conn: http.client.HTTPConnection
    if server.spec.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=5)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", STATS_PATH, headers={"Host": tenant_host(0)})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise ValueError(f"stats: HTTP {response.status}")
        if server.spec.kind == "trivial":
            return {}
        data = json.loads(body)
        assert isinstance(data, dict)
        return {str(k): int(v) for k, v in data.items()}
    finally:
        conn.close()


# ------------------------------------------------------------------- results


@dataclass
class VariantResult:
    name: str
    rates: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    server_us: list[float] = field(default_factory=list)
    server_util: list[float] = field(default_factory=list)
    gen_util: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    stalls: int = 0
    connections: int = 0
    hits: int = 0
    misses: int = 0
    refusal_hits: int = 0
    refusal_misses: int = 0
    entries: int = 0
    has_stats: bool = False
    warm_requests: int = 0

    def add(
        self, sample: Sample, server_cpu: float, before: dict[str, int], after: dict[str, int]
    ) -> None:
        self.rates.append(sample.rate)
        lat = sorted(sample.latencies_ns)
        if lat:
            self.p50_ms.append(lat[len(lat) // 2] / 1e6)
            self.p99_ms.append(lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e6)
        if sample.requests:
            self.server_us.append(server_cpu / sample.requests * 1e6)
        self.server_util.append(server_cpu / sample.elapsed if sample.elapsed else 0.0)
        self.gen_util.append(sample.gen_cpu_s / sample.elapsed if sample.elapsed else 0.0)
        for status, n in sample.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n
        self.errors += sample.errors
        self.stalls += sample.stalls
        self.connections += sample.connections
        if after:
            self.has_stats = True
            self.hits += after["hits"] - before["hits"]
            self.misses += after["misses"] - before["misses"]
            self.refusal_hits += after["refusal_hits"] - before["refusal_hits"]
            self.refusal_misses += after["refusal_misses"] - before["refusal_misses"]
            self.entries = after["entries"]

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses + self.refusal_hits + self.refusal_misses
        if not self.has_stats or total == 0:
            return None
        return (self.hits + self.refusal_hits) / total

    def as_dict(self) -> dict[str, Any]:
        return {
            "variant": self.name,
            "req_per_s_median": _median(self.rates),
            "req_per_s_min": min(self.rates, default=0.0),
            "req_per_s_max": max(self.rates, default=0.0),
            "req_per_s_per_round": self.rates,
            "p50_ms_median": _median(self.p50_ms),
            "p99_ms_median": _median(self.p99_ms),
            "server_cpu_us_per_request_median": _median(self.server_us),
            "server_cpu_utilisation_median": _median(self.server_util),
            "generator_cpu_utilisation_max": max(self.gen_util, default=0.0),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors,
            "tls_context_stalls": self.stalls,
            "connections": self.connections,
            "cache_hit_rate": self.hit_rate,
            "cache": {
                "hits": self.hits,
                "misses": self.misses,
                "refusal_hits": self.refusal_hits,
                "refusal_misses": self.refusal_misses,
                "entries_at_end": self.entries,
            }
            if self.has_stats
            else None,
            "warm_up_requests": self.warm_requests,
        }


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


@dataclass
class CaseResult:
    setup: str
    case: Case
    variants: dict[str, VariantResult]

    def ratio(self, name: str, base: str = "bare") -> float:
        b = self.variants[base].rates
        c = self.variants[name].rates
        return _median([y / x for x, y in zip(b, c, strict=True) if x > 0])

    def as_dict(self) -> dict[str, Any]:
        base = self.case.variants[0]
        return {
            "setup": self.setup,
            "case": self.case.key,
            "label": self.case.label,
            "variants": [
                {
                    **self.variants[v].as_dict(),
                    "ratio_to_bare_median": None if v == base else self.ratio(v, base),
                }
                for v in self.case.variants
            ],
        }


# ---------------------------------------------------------------------- runs


class Bench:
    def __init__(self, settings: Settings, pki: Pki) -> None:
        self.settings = settings
        self.pki = pki
        self.loop = uvloop.new_event_loop()
        self.materials: dict[int, Material] = {}
        self.cursors: dict[tuple[str, str, int], int] = {}
        self.problems: list[str] = []

    def material(self, count: int) -> Material:
        if count not in self.materials:
            t0 = time.perf_counter()
            clients = load_clients(self.pki, count)
            self.materials[count] = Material(clients)
            print(
                f"  {count:,} client certificates ready in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
        return self.materials[count]

    def close(self) -> None:
        for material in self.materials.values():
            material.close()
        self.loop.close()

    def _prepare(self, plan: Plan, material: Material, cursor: int, expected: int) -> None:
        if plan.tls:
            material.prepare(cursor, expected)

    def sample(
        self,
        setup: Setup,
        server: Running,
        case: Case,
        result: VariantResult,
        expect_conns: int,
    ) -> int:
        material = self.material(case.count)
        plan = Plan(server.port, server.spec.source, case.refused, case.per_conn)
        key = (setup.key, server.spec.name, case.count)
        cursor = self.cursors.get(key, 0)
        self._prepare(plan, material, cursor, expect_conns)
        before = fetch_stats(server)
        cpu0 = server.cpu_seconds()
        sample, cursor = run_sample(
            self.loop, plan, material, cursor, duration=self.settings.duration
        )
        cpu = server.cpu_seconds() - cpu0
        after = fetch_stats(server)
        self.cursors[key] = cursor
        result.add(sample, cpu, before, after)
        return sample.connections

    def warm(self, setup: Setup, server: Running, case: Case) -> int:
        material = self.material(case.count)
        plan = Plan(server.port, server.spec.source, case.refused, case.per_conn)
        key = (setup.key, server.spec.name, case.count)
        cursor = self.cursors.get(key, 0)
        n = min(case.count, self.settings.warm_cap)
        if case.count > n:  # a rotation larger than the warm-up: fill the cache
            n = self.settings.warm_cap
        self._prepare(plan, material, cursor, n)
        sample, cursor = run_sample(self.loop, plan, material, cursor, max_requests=n)
        self.cursors[key] = cursor
        if sample.errors:
            self.problems.append(f"{setup.key} {server.spec.name} warm-up: {sample.errors} errors")
        return n

    def run_case(self, setup: Setup, servers: dict[str, Running], case: Case) -> CaseResult:
        results = {name: VariantResult(name) for name in case.variants}
        for name in case.variants:
            results[name].warm_requests = self.warm(setup, servers[name], case)
        expect = 1000 if case.count <= 5000 else 2500
        order = list(case.variants)
        for r in range(self.settings.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                conns = self.sample(setup, servers[name], case, results[name], expect)
                expect = max(expect, int(conns * 1.5) + 64)
        outcome = CaseResult(setup.key, case, results)
        self.check(outcome)
        return outcome

    def check(self, outcome: CaseResult) -> None:
        """The statuses must be what the traffic asks for."""
        for name, result in outcome.variants.items():
            expected = 403 if outcome.case.refused and name not in {"bare", "adapter"} else 200
            wrong = {s: n for s, n in result.statuses.items() if s != expected}
            where = f"{outcome.setup} {outcome.case.label} {name}"
            if wrong or not result.statuses.get(expected):
                self.problems.append(
                    f"{where}: expected only HTTP {expected}, got {result.statuses}"
                )
            if result.errors:
                self.problems.append(f"{where}: {result.errors} failed connections/requests")

    def ceiling(self) -> list[dict[str, Any]]:
        """The generator against a trivial server on the server CPU."""
        out: list[dict[str, Any]] = []
        for source, per_conn in (
            ("header", KEEP_ALIVE),
            ("header", 1),
            ("tls", KEEP_ALIVE),
            ("tls", 1),
        ):
            spec = ServerSpec("trivial", "trivial", "trivial", source)
            setup = Setup("ceiling", "ceiling", (spec,), ())
            case = Case(per_conn, False, 1000, ("trivial",))
            with start_servers([spec], self.pki) as servers:
                result = VariantResult("trivial")
                self.warm(setup, servers["trivial"], case)
                for _ in range(self.settings.ceiling_rounds):
                    self.sample(setup, servers["trivial"], case, result, 1000)
            out.append(
                {
                    "traffic": f"{'TLS' if source == 'tls' else 'plain HTTP + header'}, "
                    + case.label.split(",")[0],
                    **result.as_dict(),
                }
            )
        return out


# -------------------------------------------------------------------- output


def print_case(outcome: CaseResult) -> None:
    print(f"  {outcome.case.label}")
    base = outcome.case.variants[0]
    for name in outcome.case.variants:
        v = outcome.variants[name]
        ratio = "    -" if name == base else f"{outcome.ratio(name, base):5.2f}"
        hit = v.hit_rate
        cache = "-" if hit is None else f"{hit * 100:5.1f}% ({v.entries} entries)"
        print(
            f"    {name:<10} {_median(v.rates):8.0f} req/s "
            f"[{min(v.rates):6.0f}-{max(v.rates):6.0f}]"
            f"  ratio {ratio}  p50 {_median(v.p50_ms):6.2f} ms  p99 {_median(v.p99_ms):6.2f} ms"
            f"  server {_median(v.server_us):6.0f} µs/req "
            f"({_median(v.server_util) * 100:3.0f}% cpu)"
            f"  gen {max(v.gen_util, default=0) * 100:3.0f}%  cache {cache}"
        )


def verdicts(outcomes: Sequence[CaseResult]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(target: str, value: float, ok: bool, line: str) -> None:
        out.append({"target": target, "value": value, "pass": ok, "line": line})

    by_key = {(o.setup, o.case.key): o for o in outcomes}
    for o in outcomes:
        if "certgate" in o.variants:
            r = o.ratio("certgate")
            add(
                f"{o.setup} {o.case.key} certgate/bare >= {RATIO_TARGET}",
                r,
                r >= RATIO_TARGET,
                f"{o.setup}, {o.case.label}: certgate/bare {r:.2f} (target >= {RATIO_TARGET})",
            )
        if "dependency" in o.variants:
            r = o.ratio("dependency", "certgate")
            add(
                f"{o.setup} {o.case.key} dependency/middleware >= {DEPENDENCY_TARGET}",
                r,
                r >= DEPENDENCY_TARGET,
                f"{o.setup}, {o.case.label}: Depends(client_identity) / middleware alone {r:.2f} "
                f"(target: costs no more, >= {DEPENDENCY_TARGET})",
            )
        if "cache-off" in o.variants:
            r = o.ratio("certgate", "cache-off")
            add(
                f"{o.setup} {o.case.key} cache on / cache off >= {CACHE_OFF_TARGET}",
                r,
                r >= CACHE_OFF_TARGET,
                f"{o.setup}, {o.case.label}: cache on / cache off {r:.2f} "
                f"(target: no slower, >= {CACHE_OFF_TARGET})",
            )
        if o.case.refused:
            allowed = by_key.get((o.setup, o.case.key.replace("-refused-", "-allowed-")))
            if allowed is not None:
                rr, ra = o.ratio("certgate"), allowed.ratio("certgate")
                add(
                    f"{o.setup} {o.case.key} refused ratio >= allowed ratio - {REFUSED_SLACK}",
                    rr - ra,
                    rr >= ra - REFUSED_SLACK,
                    f"{o.setup}, {o.case.label}: refused {rr:.2f} vs allowed {ra:.2f} of bare "
                    f"(target: refused costs no more, >= allowed - {REFUSED_SLACK})",
                )
    return out


# ------------------------------------------------------------------- profile


def profile_pass(bench: Bench, chosen: Sequence[Setup]) -> dict[str, str]:
    texts: dict[str, str] = {}
    directory = CACHE / "profiles"
    directory.mkdir(parents=True, exist_ok=True)
    for setup in chosen:
        spec = next(s for s in setup.servers if s.name == "certgate")
        for refused in (False, True):
            case = next(c for c in setup.cases if c.refused == refused and c.count == 1000)
            path = directory / f"{setup.key}-{'refused' if refused else 'allowed'}"
            path.mkdir(exist_ok=True)
            prof = path / "certgate.prof"
            prof.unlink(missing_ok=True)
            with start_servers([spec], bench.pki, profile_dir=path) as servers:
                bench.warm(setup, servers["certgate"], case)
                result = VariantResult("certgate")
                bench.sample(setup, servers["certgate"], case, result, 1000)
                requests = case_requests(result) + min(case.count, bench.settings.warm_cap)
            deadline = time.monotonic() + 10
            while not prof.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if prof.exists():
                texts[f"{setup.key}, {case.label}"] = profile_summary(prof, requests)
            else:
                texts[f"{setup.key}, {case.label}"] = "  (no profile written)"
    return texts


def case_requests(result: VariantResult) -> int:
    return sum(result.statuses.values())


def profile_summary(path: Path, requests: int, top: int = 15) -> str:
    stats = pstats.Stats(str(path))
    rows: list[tuple[float, float, int, str]] = []
    entry = 0.0
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in raw.items():
        if "/certgate/" not in filename:
            continue
        short = filename.split("/certgate/", 1)[1]
        if func == "__call__" and short in ("asgi.py", "wsgi.py"):
            entry = max(entry, cumtime)
        rows.append((tottime, cumtime, calls, f"{short}:{line}({func})"))
    rows.sort(reverse=True)
    per = 1e6 / max(requests, 1)
    lines = [
        f"  {requests} requests profiled; certgate middleware __call__ cumulative "
        f"{entry * per:.1f} µs/request (under cProfile, which inflates small calls)",
        f"  {'own µs/req':>10} {'cum µs/req':>10} {'calls/req':>9}  function",
    ]
    for tottime, cumtime, calls, name in rows[:top]:
        lines.append(
            f"  {tottime * per:10.2f} {cumtime * per:10.2f} {calls / max(requests, 1):9.2f}  {name}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="3 short rounds, 1,000 certs (~90 s)")
    mode.add_argument(
        "--smoke", action="store_true", help="seconds: one setup, checks the bench works"
    )
    parser.add_argument("--json", metavar="PATH", type=Path, help="write results as JSON")
    parser.add_argument(
        "--profile", action="store_true", help="add a cProfile pass of the certgate servers"
    )
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--duration", type=float, help="override seconds per sample")
    parser.add_argument("--setup", action="append", help="run only these setups (repeatable)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = (
        Settings.smoke() if args.smoke else Settings.quick() if args.quick else Settings.full()
    )
    if args.rounds or args.duration:
        settings = Settings(
            rounds=args.rounds or settings.rounds,
            duration=args.duration or settings.duration,
            warm_cap=settings.warm_cap,
            big=settings.big,
            ceiling_rounds=settings.ceiling_rounds,
        )
    started = time.perf_counter()
    pinned = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    _pin(GENERATOR_CPU)
    chosen = setups(settings.big)
    if args.smoke:
        s = chosen[0]
        chosen = [
            Setup(
                s.key,
                s.title,
                s.servers[:2],
                tuple(
                    Case(c.per_conn, c.refused, c.count, ("bare", "certgate")) for c in s.cases[:2]
                ),
            )
        ]
    if args.setup:
        chosen = [s for s in chosen if s.key in args.setup]
    mode = "--smoke" if args.smoke else "--quick" if args.quick else "full"
    print(f"certgate end-to-end benchmark ({mode})")
    print(
        f"python {platform.python_version()}, certgate {certgate.__version__}, "
        f"{ssl.OPENSSL_VERSION}, cpu_count {os.cpu_count()}, "
        + (
            f"servers pinned to CPU {SERVER_CPU}, generator to CPU {GENERATOR_CPU}"
            if pinned
            else "NOT pinned (no sched_setaffinity or 1 CPU)"
        )
    )
    print(
        f"{settings.rounds} rounds x {settings.duration:g} s per variant, interleaved; "
        "32 in flight; "
        "figures: median over rounds [min-max], ratio = median of per-round ratios"
    )
    pki = ensure_pki()
    bench = Bench(settings, pki)
    outcomes: list[CaseResult] = []
    ceiling: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    try:
        bench.material(1000)
        if settings.ceiling_rounds:
            print("\ngenerator ceiling (trivial uvloop server on the server CPU, 1,000 certs):")
            ceiling = bench.ceiling()
            for row in ceiling:
                print(
                    f"  {row['traffic']:<36} {row['req_per_s_median']:8.0f} req/s  "
                    f"generator cpu {row['generator_cpu_utilisation_max'] * 100:3.0f}%  "
                    f"server cpu {row['server_cpu_utilisation_median'] * 100:3.0f}%"
                )
        for number, setup in enumerate(chosen, 1):
            print(f"\n[{number}] {setup.title}", flush=True)
            with start_servers(setup.servers, pki) as servers:
                for case in setup.cases:
                    outcome = bench.run_case(setup, servers, case)
                    outcomes.append(outcome)
                    print_case(outcome)
                    sys.stdout.flush()
        if args.profile:
            profiles = profile_pass(bench, chosen)
    finally:
        bench.close()

    results = verdicts(outcomes)
    print("\nverdicts:")
    for v in results:
        print(f"  {'PASS' if v['pass'] else 'FAIL'}  {v['line']}")
    for problem in bench.problems:
        print(f"  ERROR  {problem}")
    for name, text in profiles.items():
        print(f"\ncProfile of the certgate server, {name} (top certgate functions by own time):")
        print(text)
    elapsed = time.perf_counter() - started
    print(f"\ntotal wall time {elapsed:.0f} s")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "mode": mode,
                    "machine": {
                        "python": platform.python_version(),
                        "openssl": ssl.OPENSSL_VERSION,
                        "cpu_count": os.cpu_count(),
                        "pinned": pinned,
                        "platform": platform.platform(),
                    },
                    "settings": {
                        "rounds": settings.rounds,
                        "duration_s": settings.duration,
                        "warm_cap": settings.warm_cap,
                        "counts": [1000] + ([settings.big] if settings.big else []),
                        "inflight": 32,
                        "keep_alive_requests_per_connection": KEEP_ALIVE,
                    },
                    "ceiling": ceiling,
                    "cases": [o.as_dict() for o in outcomes],
                    "verdicts": [{k: v[k] for k in ("target", "value", "pass")} for v in results],
                    "problems": bench.problems,
                    "profiles": profiles,
                    "wall_time_s": elapsed,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"results written to {args.json}")
    if bench.problems:
        return 2
    return 0 if all(v["pass"] for v in results) else 1


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())
