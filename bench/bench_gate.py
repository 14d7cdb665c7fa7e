"""certgate benchmark: warm-cache middleware overhead and cold verification cost.

Run from the repository root::

    .venv/bin/python bench/bench_gate.py            # default run (< 90 s)
    .venv/bin/python bench/bench_gate.py --quick    # smoke test (< 20 s)
    .venv/bin/python bench/bench_gate.py --json out.json
    .venv/bin/python bench/bench_gate.py --profile  # also cProfile certgate's paths

Exit status: 0 when every target is met, 1 otherwise.

What is measured (every ratio comes from variants run side by side in one
process, interleaved A B / B A round by round; the figures reported are the
MEDIAN of the per-round figures, and ratios/overheads are the median of the
per-round ratios/differences, i.e. each compares two samples taken moments
apart):

(a) Warm cache. The same bare ASGI app alone and behind
    ``CertGateMiddleware``; the same bare WSGI app alone and behind
    ``CertGateWSGIMiddleware``. Certificates come from the Cloudflare header
    source (``cf-client-cert-der-base64`` plus ``cf-client-cert-sha256``)
    from trusted proxy peer 10.0.0.1, cycling through N distinct EC client
    certificates issued by several tenants' root CAs, each request addressed
    to its tenant's Host. No server and no sockets: pre-built scopes/environs,
    no-op receive/send/start_response, one asyncio loop. Both variants copy
    the scope/environ per request (``dict(...)``), so the copy cancels out.
    The cache is warmed by one checked pass over all certificates first.

(b) Cold verification. ``CertGate(..., cache_size=0).decide(RequestFacts)``
    with the Cloudflare header (so base64 decoding, DER parsing, the
    forwarded-SHA-256 check, the leaf key check and the identity are included)
    against a raw ``cryptography`` verify of the same chain: a
    ``PolicyBuilder`` built per call with ``datetime.now(UTC)`` (the time must
    be the request time), the leaf ALREADY PARSED, the ``Store`` and the two
    ``ExtensionPolicy`` objects built once (certgate also builds them once).
    Cloudflare forwards the leaf only, so for 3-certificate chains the
    intermediate is configured on the tenant (certgate) / passed as the
    intermediates list (raw).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import dataclasses
import functools
import gc
import hashlib
import io
import json
import logging
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import cryptography
from cryptography import x509
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store

import certgate
from certgate import CertGate, InMemoryRegistry, RequestFacts, Tenant
from certgate.asgi import IDENTITY_KEY, CertGateMiddleware, Message, Receive, Scope, Send
from certgate.devpki import CA
from certgate.identity import ClientIdentity
from certgate.verifier import client_ee_policy
from certgate.wsgi import CertGateWSGIMiddleware, Environ, StartResponse

WARM_TARGET_US = 10.0
COLD_TARGET_RATIO = 1.5
PROXY_PEER = "10.0.0.1"
TRUSTED_PROXIES = ["10.0.0.0/8"]
CERT_HEADER = "cf-client-cert-der-base64"
SHA256_HEADER = "cf-client-cert-sha256"


# --------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class Settings:
    certs: int
    tenants: int
    warm_rounds: int
    warm_passes: int
    cold_rounds: int
    cold_calls: int

    @classmethod
    def default(cls) -> Settings:
        return cls(
            certs=1000, tenants=4, warm_rounds=41, warm_passes=5, cold_rounds=31, cold_calls=300
        )

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            certs=1000, tenants=4, warm_rounds=7, warm_passes=1, cold_rounds=5, cold_calls=40
        )


# --------------------------------------------------------------------------
# timing helpers


def interleave(samplers: Sequence[Callable[[], int]], rounds: int) -> list[list[int]]:
    """Run every sampler once per round, in order on even rounds and reversed
    on odd ones; return each sampler's list of elapsed nanoseconds."""
    out: list[list[int]] = [[] for _ in samplers]
    for r in range(rounds):
        order = range(len(samplers)) if r % 2 == 0 else range(len(samplers) - 1, -1, -1)
        for i in order:
            out[i].append(samplers[i]())
    return out


@dataclass(frozen=True)
class Pair:
    """Per-round per-operation figures (µs) of a baseline and a candidate."""

    label: str
    base_label: str
    cand_label: str
    base_us: list[float]
    cand_us: list[float]

    @property
    def base_median(self) -> float:
        return statistics.median(self.base_us)

    @property
    def cand_median(self) -> float:
        return statistics.median(self.cand_us)

    @property
    def base_min(self) -> float:
        return min(self.base_us)

    @property
    def cand_min(self) -> float:
        return min(self.cand_us)

    @property
    def overhead_median(self) -> float:
        return statistics.median(self._overheads())

    @property
    def ratio_median(self) -> float:
        return statistics.median(self._ratios())

    def _ratios(self) -> list[float]:
        return [c / b for b, c in zip(self.base_us, self.cand_us, strict=True)]

    def _overheads(self) -> list[float]:
        return [c - b for b, c in zip(self.base_us, self.cand_us, strict=True)]

    @property
    def ratio_iqr(self) -> tuple[float, float]:
        """Interquartile range of the per-round ratios."""
        return _iqr(self._ratios())

    @property
    def overhead_iqr(self) -> tuple[float, float]:
        """Interquartile range of the per-round differences (µs)."""
        return _iqr(self._overheads())

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "baseline": self.base_label,
            "candidate": self.cand_label,
            "baseline_us_median": self.base_median,
            "candidate_us_median": self.cand_median,
            "baseline_us_min": self.base_min,
            "candidate_us_min": self.cand_min,
            "overhead_us_median_of_rounds": self.overhead_median,
            "overhead_us_iqr": list(self.overhead_iqr),
            "ratio_median_of_rounds": self.ratio_median,
            "ratio_iqr": list(self.ratio_iqr),
            "rounds": len(self.base_us),
            "baseline_us_per_round": self.base_us,
            "candidate_us_per_round": self.cand_us,
        }


def _iqr(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (0.0, 0.0)
    q1, _q2, q3 = statistics.quantiles(values, n=4)
    return q1, q3


def to_us(samples_ns: Iterable[int], ops: int) -> list[float]:
    return [ns / ops / 1000.0 for ns in samples_ns]


# --------------------------------------------------------------------------
# PKI


@dataclass(frozen=True)
class Client:
    tenant_id: str
    host: str
    der: bytes
    b64: str
    sha256: str


def build_warm_pki(settings: Settings) -> tuple[InMemoryRegistry, list[Client]]:
    """Several tenants, each with its own EC root; N distinct EC leaves spread
    round-robin over them."""
    roots = [CA.root(f"bench tenant {i} root CA", key_type="ec") for i in range(settings.tenants)]
    tenants = [
        Tenant(f"tenant{i}", (f"api.tenant{i}.bench.test",), (root.cert,))
        for i, root in enumerate(roots)
    ]
    clients: list[Client] = []
    for n in range(settings.certs):
        i = n % settings.tenants
        leaf = roots[i].issue(f"device-{n:05d}", key_type="ec")
        der = leaf.der
        clients.append(
            Client(
                tenant_id=tenants[i].id,
                host=tenants[i].hosts[0],
                der=der,
                b64=base64.b64encode(der).decode("ascii"),
                sha256=hashlib.sha256(der).hexdigest(),
            )
        )
    if len({c.der for c in clients}) != len(clients):
        raise SystemExit("bench: client certificates are not distinct")
    return InMemoryRegistry(tenants), clients


@dataclass(frozen=True)
class ColdCase:
    name: str
    tenant: Tenant
    leaf: x509.Certificate
    intermediates: list[x509.Certificate]
    facts: RequestFacts


def build_cold_cases() -> tuple[InMemoryRegistry, list[ColdCase]]:
    tenants: list[Tenant] = []
    cases: list[ColdCase] = []
    for key_type, label in (("rsa", "RSA-2048"), ("ec", "ECDSA P-256")):
        root = CA.root(f"cold {label} root", key_type=key_type, rsa_bits=2048)
        inter = root.intermediate(f"cold {label} intermediate", key_type=key_type, rsa_bits=2048)
        for depth, issuer, configured in ((2, root, ()), (3, inter, (inter.cert,))):
            tid = f"cold-{key_type}-{depth}"
            # both depths of one key type share the root: declared
            tenant = Tenant(
                tid, (f"{tid}.bench.test",), (root.cert,), configured, shared_anchors=True
            )
            tenants.append(tenant)
            leaf = issuer.issue(f"cold client {label} {depth}", key_type=key_type, rsa_bits=2048)
            der = leaf.der
            facts = RequestFacts(
                host=tenant.hosts[0],
                path="/api/items",
                peer=PROXY_PEER,
                headers={
                    CERT_HEADER: [base64.b64encode(der).decode("ascii")],
                    SHA256_HEADER: [hashlib.sha256(der).hexdigest()],
                },
                transport=None,
            )
            cases.append(
                ColdCase(
                    name=f"{label}, {depth}-cert chain",
                    tenant=tenant,
                    leaf=x509.load_der_x509_certificate(der),
                    intermediates=list(leaf.issuers),
                    facts=facts,
                )
            )
    return InMemoryRegistry(tenants), cases


# --------------------------------------------------------------------------
# (a) warm: ASGI


_START: Message = {"type": "http.response.start", "status": 200, "headers": []}
_BODY: Message = {"type": "http.response.body", "body": b"ok"}
_REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}


async def _receive() -> Message:
    return _REQUEST


async def _send(message: Message) -> None:
    return None


class BareASGI:
    """The application: answers 200 "ok" and counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await send(_START)
        await send(_BODY)


class CheckingASGI:
    """Used for the warm-up pass only: asserts the identity certgate attached."""

    def __init__(self, expected: dict[str, Client]) -> None:
        self.expected = expected
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        identity = scope.get(IDENTITY_KEY)
        assert isinstance(identity, ClientIdentity), "no identity in scope"
        client = self.expected[identity.fingerprint_sha256]
        assert identity.tenant_id == client.tenant_id, "wrong tenant"
        self.calls += 1
        await send(_START)
        await send(_BODY)


def make_scope(client: Client, n: int) -> Scope:
    headers: list[tuple[bytes, bytes]] = [
        (b"host", client.host.encode()),
        (b"user-agent", b"bench-client/1.0"),
        (b"accept", b"application/json"),
        (b"accept-encoding", b"gzip, br"),
        (b"cf-connecting-ip", b"203.0.113.7"),
        (b"cf-ray", b"8a1b2c3d4e5f6789-AMS"),
        (b"x-forwarded-for", b"203.0.113.7"),
        (b"x-forwarded-proto", b"https"),
        (CERT_HEADER.encode(), client.b64.encode()),
        (SHA256_HEADER.encode(), client.sha256.encode()),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": "/api/items",
        "raw_path": b"/api/items",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": (PROXY_PEER, 40000 + n % 20000),
        # recorded by certgate.servers.uvicorn before any proxy-headers rewriting
        "certgate.socket_peer": (PROXY_PEER, 40000 + n % 20000),
        "server": ("10.0.0.2", 8000),
        "state": {},
    }


async def _drive_asgi(
    app: Callable[[Scope, Receive, Send], Any], scopes: Sequence[Scope], passes: int
) -> int:
    t0 = time.perf_counter_ns()
    for _ in range(passes):
        for scope in scopes:
            await app(dict(scope), _receive, _send)
    return time.perf_counter_ns() - t0


def asgi_sampler(
    loop: asyncio.AbstractEventLoop,
    app: Callable[[Scope, Receive, Send], Any],
    counter: BareASGI,
    scopes: Sequence[Scope],
    passes: int,
) -> Callable[[], int]:
    expected = len(scopes) * passes

    def sample() -> int:
        before = counter.calls
        gc.disable()
        try:
            elapsed = loop.run_until_complete(_drive_asgi(app, scopes, passes))
        finally:
            gc.enable()
        if counter.calls - before != expected:
            raise SystemExit("bench: some ASGI requests did not reach the app (rejected?)")
        return elapsed

    return sample


# --------------------------------------------------------------------------
# (a) warm: WSGI

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


def _write(data: bytes) -> object:
    return None


def _start_response(
    status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None, /
) -> Callable[[bytes], object]:
    return _write


_RESPONSE_HEADERS = [("Content-Type", "text/plain")]


class BareWSGI:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        self.calls += 1
        start_response("200 OK", _RESPONSE_HEADERS)
        return [b"ok"]


def make_environ(client: Client, n: int) -> Environ:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/api/items",
        "QUERY_STRING": "",
        "SERVER_NAME": "10.0.0.2",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": PROXY_PEER,
        "REMOTE_PORT": str(40000 + n % 20000),
        "HTTP_HOST": client.host,
        "HTTP_USER_AGENT": "bench-client/1.0",
        "HTTP_ACCEPT": "application/json",
        "HTTP_ACCEPT_ENCODING": "gzip, br",
        "HTTP_CF_CONNECTING_IP": "203.0.113.7",
        "HTTP_CF_RAY": "8a1b2c3d4e5f6789-AMS",
        "HTTP_X_FORWARDED_FOR": "203.0.113.7",
        "HTTP_X_FORWARDED_PROTO": "https",
        "HTTP_CF_CLIENT_CERT_DER_BASE64": client.b64,
        "HTTP_CF_CLIENT_CERT_SHA256": client.sha256,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def wsgi_sampler(
    app: Callable[[Environ, StartResponse], Iterable[bytes]],
    counter: BareWSGI,
    environs: Sequence[Environ],
    passes: int,
) -> Callable[[], int]:
    expected = len(environs) * passes

    def sample() -> int:
        before = counter.calls
        start = _start_response
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            for _ in range(passes):
                for environ in environs:
                    app(dict(environ), start)
            elapsed = time.perf_counter_ns() - t0
        finally:
            gc.enable()
        if counter.calls - before != expected:
            raise SystemExit("bench: some WSGI requests did not reach the app (rejected?)")
        return elapsed

    return sample


# --------------------------------------------------------------------------
# (b) cold


def raw_sampler(case: ColdCase, calls: int) -> Callable[[], int]:
    store = Store(list(case.tenant.roots))
    ca_policy = ExtensionPolicy.webpki_defaults_ca()
    ee_policy = client_ee_policy()
    leaf = case.leaf
    intermediates = case.intermediates

    def sample() -> int:
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                (
                    PolicyBuilder()
                    .store(store)
                    .time(datetime.now(UTC))
                    .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
                    .build_client_verifier()
                    .verify(leaf, intermediates)
                )
            return time.perf_counter_ns() - t0
        finally:
            gc.enable()

    return sample


def certgate_cold_sampler(gate: CertGate, case: ColdCase, calls: int) -> Callable[[], int]:
    facts = case.facts
    decide = gate.decide

    def sample() -> int:
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                decide(facts)
            elapsed = time.perf_counter_ns() - t0
        finally:
            gc.enable()
        return elapsed

    return sample


def certgate_miss_sampler(gate: CertGate, case: ColdCase, calls: int) -> Callable[[], int]:
    """Cache ON but always missing: key hashing, lookup, verify, expiry and put."""
    facts = case.facts
    decide = gate.decide
    clear = gate.cache.clear

    def sample() -> int:
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                clear()
                decide(facts)
            elapsed = time.perf_counter_ns() - t0
        finally:
            gc.enable()
        return elapsed

    return sample


# --------------------------------------------------------------------------
# reporting


def machine_facts() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "cryptography": cryptography.__version__,
        "openssl": openssl_backend.openssl_version_text(),
        "certgate": certgate.__version__,
    }


def print_warm(pairs: Sequence[Pair]) -> None:
    print(
        f"{'adapter':<7} {'bare µs/req':>11} {'certgate µs/req':>15} {'overhead µs/req':>15} "
        f"{'(IQR)':>13} {'ratio':>6}   {'min bare / certgate':>19}"
    )
    for p in pairs:
        lo, hi = p.overhead_iqr
        iqr = f"{lo:.2f}-{hi:.2f}"
        mins = f"{p.base_min:.2f} / {p.cand_min:.2f}"
        print(
            f"{p.label:<7} {p.base_median:>11.2f} {p.cand_median:>15.2f} "
            f"{p.overhead_median:>15.2f} {iqr:>13} {p.ratio_median:>5.1f}x   {mins:>19}"
        )


def print_cold(pairs: Sequence[Pair]) -> None:
    width = max(26, *(len(p.label) for p in pairs))
    print(
        f"{'chain':<{width}} {'raw µs':>7} {'certgate µs':>11} {'ratio':>6} {'(IQR)':>11} "
        f"{'extra µs':>8}   {'min raw / certgate':>18}"
    )
    for p in pairs:
        lo, hi = p.ratio_iqr
        iqr = f"{lo:.2f}-{hi:.2f}"
        mins = f"{p.base_min:.1f} / {p.cand_min:.1f}"
        print(
            f"{p.label:<{width}} {p.base_median:>7.1f} {p.cand_median:>11.1f} "
            f"{p.ratio_median:>5.2f}x {iqr:>11} {p.overhead_median:>8.1f}   {mins:>18}"
        )


def profile_text(fn: Callable[[], object], ops: int, top: int = 22) -> str:
    """cProfile of ``fn()`` (which performs ``ops`` operations): the ``top``
    functions by internal time, in µs per operation. cProfile inflates every
    Python call, so read the shares, not the absolute figures."""
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)
    total = sum(v[2] for v in stats.values())
    lines = [
        f"  {'tottime µs/op':>13} {'cumtime µs/op':>13} {'calls/op':>8}  function",
    ]
    for (filename, lineno, func), (_cc, ncalls, tottime, cumtime, _callers) in rows[:top]:
        if filename == "~":
            where = func
        else:
            short = filename.split("/src/", 1)[-1].split("/bench/", 1)[-1]
            where = f"{short}:{lineno}({func})"
        lines.append(
            f"  {tottime / ops * 1e6:>13.2f} {cumtime / ops * 1e6:>13.2f} "
            f"{ncalls / ops:>8.1f}  {where}"
        )
    lines.append(f"  {total / ops * 1e6:>13.2f} {'':>13} {'':>8}  TOTAL (profiled)")
    return "\n".join(lines)


def _decide_many(gate: CertGate, facts: RequestFacts, calls: int) -> None:
    for _ in range(calls):
        gate.decide(facts)


def _wsgi_pass(
    app: Callable[[Environ, StartResponse], Iterable[bytes]], environs: Sequence[Environ]
) -> None:
    for environ in environs:
        app(dict(environ), _start_response)


# --------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test, < 20 s)")
    parser.add_argument("--json", metavar="PATH", type=Path, help="write results as JSON")
    parser.add_argument(
        "--profile", action="store_true", help="also print a cProfile of the warm paths"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.quick() if args.quick else Settings.default()
    started = time.perf_counter()
    cg_logger = logging.getLogger("certgate")
    saved_disabled = cg_logger.disabled
    cg_logger.disabled = True  # silence certgate's logging for the whole run
    try:
        return run(args, settings, started)
    finally:
        cg_logger.disabled = saved_disabled


def run(args: argparse.Namespace, settings: Settings, started: float) -> int:
    facts = machine_facts()
    print("certgate benchmark" + (" (--quick)" if args.quick else ""))
    print(
        f"python {facts['python']} ({facts['implementation']}), "
        f"cryptography {facts['cryptography']} ({facts['openssl']}), "
        f"certgate {facts['certgate']}"
    )
    print(
        f"cpu_count {facts['cpu_count']} (usable {facts['usable_cpus']}), "
        f"{facts['platform']}, {facts['machine']}"
    )
    print(
        "method: variants interleaved A B / B A per round in this one process; figures are the "
        "MEDIAN of per-round values;\n        overhead and ratio are the median of per-round "
        "differences / ratios; GC disabled inside timed loops; time.perf_counter_ns."
    )

    # ---------------------------------------------------------------- PKI
    t0 = time.perf_counter()
    registry, clients = build_warm_pki(settings)
    cold_registry, cold_cases = build_cold_cases()
    print(
        f"\nsetup: {len(clients)} distinct EC P-256 client certificates over "
        f"{settings.tenants} tenants + {len(cold_cases)} cold chains "
        f"in {time.perf_counter() - t0:.1f} s"
    )

    # ---------------------------------------------------------------- (a) warm
    # The pre-built environs carry no server socket: REMOTE_ADDR stands for
    # the peer a WSGI server reports (trust_reported_peer), as under mod_wsgi.
    gate = CertGate(
        registry,
        trusted_proxies=TRUSTED_PROXIES,
        header_sources=["cloudflare"],
        trust_reported_peer=True,
    )
    by_fp = {c.sha256: c for c in clients}
    scopes = [make_scope(c, n) for n, c in enumerate(clients)]
    environs = [make_environ(c, n) for n, c in enumerate(clients)]

    bare_asgi = BareASGI()
    gated_asgi = CertGateMiddleware(bare_asgi, gate)
    bare_wsgi = BareWSGI()
    gated_wsgi = CertGateWSGIMiddleware(bare_wsgi, gate)

    loop = asyncio.new_event_loop()
    try:
        # Warm-up: one checked pass over every certificate (fills the cache
        # and proves each request is allowed for the right tenant).
        checker = CheckingASGI(by_fp)
        loop.run_until_complete(_drive_asgi(CertGateMiddleware(checker, gate), scopes, 1))
        if checker.calls != len(scopes) or len(gate.cache) != len(clients):
            raise SystemExit("bench: warm-up did not allow and cache every certificate")
        for environ, client in zip(environs, clients, strict=True):
            env = dict(environ)
            gated_wsgi(env, _start_response)
            identity = env.get("certgate.identity")
            assert isinstance(identity, ClientIdentity)
            assert identity.tenant_id == client.tenant_id
        misses_before = gate.cache.misses
        # One untimed pass of every variant (code paths, allocator warm).
        for sampler in (
            asgi_sampler(loop, bare_asgi, bare_asgi, scopes, 1),
            asgi_sampler(loop, gated_asgi, bare_asgi, scopes, 1),
            wsgi_sampler(bare_wsgi, bare_wsgi, environs, 1),
            wsgi_sampler(gated_wsgi, bare_wsgi, environs, 1),
        ):
            sampler()

        gc.collect()
        ops = len(scopes) * settings.warm_passes
        asgi_ns = interleave(
            [
                asgi_sampler(loop, bare_asgi, bare_asgi, scopes, settings.warm_passes),
                asgi_sampler(loop, gated_asgi, bare_asgi, scopes, settings.warm_passes),
            ],
            settings.warm_rounds,
        )
        wsgi_ns = interleave(
            [
                wsgi_sampler(bare_wsgi, bare_wsgi, environs, settings.warm_passes),
                wsgi_sampler(gated_wsgi, bare_wsgi, environs, settings.warm_passes),
            ],
            settings.warm_rounds,
        )
        if gate.cache.misses != misses_before:
            raise SystemExit("bench: cache misses during the timed warm runs")
        warm = [
            Pair("ASGI", "bare", "certgate", to_us(asgi_ns[0], ops), to_us(asgi_ns[1], ops)),
            Pair("WSGI", "bare", "certgate", to_us(wsgi_ns[0], ops), to_us(wsgi_ns[1], ops)),
        ]
        print(
            f"\n(a) WARM cache: µs per request, {len(clients)} distinct certs cycled, "
            f"{settings.warm_passes} pass(es) x {settings.warm_rounds} rounds per variant; "
            f"{gate.cache.misses - misses_before} cache misses in the timed runs"
        )
        print(
            "    Cloudflare header source (DER base64 + SHA-256 headers), peer 10.0.0.1 trusted, "
            "10 request headers;\n    scope/environ copied per request in BOTH variants."
        )
        print_warm(warm)

        profiles: dict[str, str] = {}
        if args.profile:
            profiles["warm ASGI certgate path, 1 pass"] = profile_text(
                lambda: loop.run_until_complete(_drive_asgi(gated_asgi, scopes, 1)), len(scopes)
            )
            profiles["warm WSGI certgate path, 1 pass"] = profile_text(
                lambda: _wsgi_pass(gated_wsgi, environs), len(environs)
            )
    finally:
        loop.close()

    # ---------------------------------------------------------------- (b) cold
    cold_gate = CertGate(
        cold_registry, trusted_proxies=TRUSTED_PROXIES, header_sources=["cloudflare"], cache_size=0
    )
    miss_gate = CertGate(
        cold_registry, trusted_proxies=TRUSTED_PROXIES, header_sources=["cloudflare"]
    )
    cold: list[Pair] = []
    cold_miss: list[Pair] = []
    for case in cold_cases:
        decision = cold_gate.decide(case.facts)
        if not decision.allowed or decision.tenant_id != case.tenant.id:
            raise SystemExit(f"bench: cold case {case.name} rejected: {decision}")
        raw = raw_sampler(case, settings.cold_calls)
        ours = certgate_cold_sampler(cold_gate, case, settings.cold_calls)
        miss = certgate_miss_sampler(miss_gate, case, settings.cold_calls)
        raw()
        ours()
        miss()
        ns = interleave([raw, ours, miss], settings.cold_rounds)
        raw_us = to_us(ns[0], settings.cold_calls)
        cold.append(
            Pair(
                case.name,
                "raw cryptography",
                "certgate decide",
                raw_us,
                to_us(ns[1], settings.cold_calls),
            )
        )
        cold_miss.append(
            Pair(
                case.name + " (cache miss)",
                "raw cryptography",
                "certgate decide, cache on, miss",
                raw_us,
                to_us(ns[2], settings.cold_calls),
            )
        )
    if miss_gate.cache.hits != 0:
        raise SystemExit("bench: the cache-miss variant hit the cache")
    if len(cold_gate.cache) != 0:
        raise SystemExit("bench: cold gate cached something")
    if args.profile:
        for case in cold_cases:
            profiles[f"cold {case.name}, certgate decide x {settings.cold_calls}"] = profile_text(
                functools.partial(_decide_many, cold_gate, case.facts, settings.cold_calls),
                settings.cold_calls,
            )
    print(
        f"\n(b) COLD verification (no cache): µs per verification, {settings.cold_calls} calls "
        f"x {settings.cold_rounds} rounds per variant"
    )
    print(
        "    raw  = PolicyBuilder().store(S).time(now).extension_policies(webpki CA, "
        "client_ee_policy()).build_client_verifier()\n"
        "           .verify(leaf, intermediates) per call, leaf ALREADY PARSED, Store/policies "
        "built once, now = datetime.now(UTC) per call\n"
        "    certgate = CertGate(cache_size=0).decide(RequestFacts) with the Cloudflare headers: "
        "base64 decode, DER parse, SHA-256 check,\n"
        "           leaf key check, verify, identity (3-cert: intermediate configured on the "
        "tenant; Cloudflare forwards the leaf only)"
    )
    print_cold(cold)
    print(
        "\n    the same chains through a gate WITH its cache, cleared before every call, so each "
        "call misses\n    (adds: cache-key SHA-256 of the header, lookup, expiry from the "
        "chain's notAfter, insert):"
    )
    print_cold(cold_miss)

    # ---------------------------------------------------------------- verdicts
    verdicts: list[dict[str, Any]] = []
    for p in warm:
        ok = p.overhead_median <= WARM_TARGET_US
        verdicts.append(
            {
                "target": f"{p.label} warm overhead <= {WARM_TARGET_US:g} µs/request",
                "value": p.overhead_median,
                "pass": ok,
                "line": f"{p.label} warm overhead {p.overhead_median:.2f} µs/request "
                f"(target <= {WARM_TARGET_US:g} µs)",
            }
        )
    for p in [*cold, *cold_miss]:
        ok = p.ratio_median <= COLD_TARGET_RATIO
        verdicts.append(
            {
                "target": f"cold {p.label} ratio <= {COLD_TARGET_RATIO:g}x",
                "value": p.ratio_median,
                "pass": ok,
                "line": f"cold {p.label}: certgate/raw {p.ratio_median:.2f}x "
                f"(target <= {COLD_TARGET_RATIO:g}x)",
            }
        )
    print("\nverdicts:")
    for v in verdicts:
        print(f"  {'PASS' if v['pass'] else 'FAIL'}  {v['line']}")
    elapsed = time.perf_counter() - started
    print(f"\ntotal wall time {elapsed:.1f} s")

    if profiles:
        for name, text in profiles.items():
            print(f"\ncProfile, {name} (sorted by internal time, µs per request):")
            print(text)

    if args.json is not None:
        result = {
            "machine": facts,
            "settings": {
                **dataclasses.asdict(settings),
                "quick": bool(args.quick),
                "statistic": "median of per-round values; overhead/ratio = median of per-round "
                "differences/ratios; variants interleaved A B / B A",
            },
            "warm": [p.as_dict() for p in warm],
            "cold": [p.as_dict() for p in cold],
            "cold_cache_miss": [p.as_dict() for p in cold_miss],
            "verdicts": [{k: v[k] for k in ("target", "value", "pass")} for v in verdicts],
            "wall_time_s": elapsed,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0 if all(v["pass"] for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
