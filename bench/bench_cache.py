"""certgate benchmark: the verification cache under working sets and scans.

Run from the repository root (one command, about a minute on 2 cores)::

    .venv/bin/python bench/bench_cache.py            # full run
    .venv/bin/python bench/bench_cache.py --quick    # smaller scan (smoke test, ~15 s)
    .venv/bin/python bench/bench_cache.py --json out.json

Exit status: 0 when every target is met, 1 otherwise (FAIL lines).

What is measured, in process: ``CertGate.decide(RequestFacts)`` with the
Cloudflare header source (``cf-client-cert-der-base64`` plus
``cf-client-cert-sha256``) from a trusted proxy peer, one tenant with an EC
P-256 root, EC P-256 leaves (distinct serial and name, one shared key pair so
that generating 100,000 of them takes seconds). The default cache size
(10,000). Cache on and cache off (``cache_size=0``) are two gates run round
by round, alternating in slices of 500 requests; times are the CPU time of
the benchmark thread (``time.thread_time``: other processes on a shared
machine do not count), figures are medians over 10 rounds and ratios medians
of per-round ratios. The garbage collector stays on (what a
server sees); certgate's log records are dropped (no handler work).

(a) **working set**: 1,000 certificates cycled (after one warm-up pass).
(b) **scan**: 100,000 distinct certificates, each presented once (every
    request a cold verification; the cache on can only cost extra).
(c) **mix**: 80 % of requests from 2,000 hot devices, 20 % from the scan,
    each scan certificate presented once; the hot set warmed first. Hot-set
    hit rate = requests served without a verification (by the decision memo
    or a cache hit) / hot requests (a scan request never hits).
(d) **burst**: the hot set warmed, then a burst of 20,000 scan certificates
    (twice the cache), then one pass over the hot set: the share of that pass
    served from the cache - with the segmented cache and with a plain LRU of
    the same size (``protected_share=0``), for comparison.
(e) **memory per cached allow**: ``tracemalloc`` (Python heap) over 1,000
    distinct leaves verified into an empty cache, leaf under the root, and
    leaf under an intermediate (configured on the tenant, header source), and
    leaf + intermediate sent by the client (TLS source); ``gc.collect()``
    before each snapshot. Native memory of ``cryptography``'s Rust objects is
    not seen by tracemalloc: run with ``PYTHONMALLOC=malloc`` and ``--malloc``
    to also print the C heap growth (glibc ``mallinfo2``) per entry.

Not included: servers, sockets, the ASGI/WSGI adapters (see bench_gate.py
and bench_e2e.py), refused traffic, lock contention between threads.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import datetime as dt
import gc
import hashlib
import json
import logging
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certgate import CertGate, InMemoryRegistry, RequestFacts, Tenant
from certgate.cache import ValidationCache
from certgate.devpki import CA
from certgate.sources.asgi_tls import from_scope

HOST = "api.cache.bench.test"
PEER = "10.0.0.1"
CERT_HEADER = "cf-client-cert-der-base64"
SHA256_HEADER = "cf-client-cert-sha256"

SCAN_RATIO_LIMIT = 1.02
"""Scan: cache on / cache off per request must not exceed this. The target
is "no more than with the cache off"; 2 % is the noise allowance of a
median over rounds on a shared 2-core machine."""
HOT_HIT_TARGET = 0.90
CHUNK = 500
MEMORY_TARGET_BYTES = 2048


@dataclass(frozen=True)
class Pki:
    tenant: Tenant
    inter_tenant: Tenant
    key: ec.EllipticCurvePrivateKey
    root: CA
    inter: CA


def make_pki() -> Pki:
    root = CA.root("bench_cache root", key_type="ec")
    inter = root.intermediate("bench_cache intermediate", key_type="ec")
    tenant = Tenant("cache", (HOST,), (root.cert,))
    inter_tenant = Tenant("cache-inter", ("inter." + HOST,), (root.cert,), (inter.cert,))
    return Pki(tenant, inter_tenant, ec.generate_private_key(ec.SECP256R1()), root, inter)


def issue(pki: Pki, issuer: CA, start: int, count: int) -> list[bytes]:
    """``count`` distinct leaves (serials ``start``...) signed by ``issuer``."""
    now = dt.datetime.now(dt.UTC)
    public = pki.key.public_key()
    out = []
    for n in range(start, start + count):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"device-{n}")]))
            .issuer_name(issuer.cert.subject)
            .public_key(public)
            .serial_number(n + 1)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        out.append(
            builder.sign(issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
        )
    return out


def header_facts(der: bytes, host: str = HOST) -> RequestFacts:
    return RequestFacts(
        host=host,
        path="/api/items",
        peer=PEER,
        headers={
            CERT_HEADER: [base64.b64encode(der).decode("ascii")],
            SHA256_HEADER: [hashlib.sha256(der).hexdigest()],
        },
        transport=None,
    )


def tls_facts(der: bytes, chain: Sequence[bytes], host: str) -> RequestFacts:
    pems = [
        x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM).decode()
        for d in (der, *chain)
    ]
    presented = from_scope({"extensions": {"tls": {"client_cert_chain": pems}}})
    return RequestFacts(host=host, path="/", peer="192.0.2.1", headers={}, transport=presented)


def gate_for(tenants: Sequence[Tenant], cache_size: int) -> CertGate:
    return CertGate(
        InMemoryRegistry(tenants),
        trusted_proxies=["10.0.0.0/8"],
        header_sources=["cloudflare"],
        cache_size=cache_size,
        expiry_warning_days=0,
    )


def run_timed(gate: CertGate, facts: Sequence[RequestFacts]) -> float:
    """µs per request over ``facts`` (every one must be allowed)."""
    decide = gate.decide
    t0 = time.thread_time_ns()
    for f in facts:
        decision = decide(f)
        if decision.reason is not None:
            raise SystemExit(f"bench_cache: unexpected refusal {decision.reason}")
    return (time.thread_time_ns() - t0) / len(facts) / 1000.0


@dataclass
class Result:
    name: str
    on_us: float
    off_us: float
    ratio: float
    hit_rate: float
    extra: dict[str, Any]

    def line(self) -> str:
        text = (
            f"{self.name:<34} on {self.on_us:8.2f} µs  off {self.off_us:8.2f} µs  "
            f"on/off {self.ratio:5.3f}  hit rate {self.hit_rate * 100:5.1f} %"
        )
        return text + "".join(f"  {k} {v}" for k, v in self.extra.items())


def compare(
    name: str,
    rounds: Sequence[Sequence[RequestFacts]],
    on: CertGate,
    off: CertGate,
    hit_base: Callable[[int], int] | None = None,
) -> Result:
    """Run each round through both gates (alternating which goes first)."""
    on_us, off_us, ratios = [], [], []
    before = on.cache.stats()
    requests = 0
    for facts in rounds:
        # Within a round, the two gates alternate in slices of CHUNK requests
        # (A B B A ...), so both see the same machine load.
        a = b = 0.0
        for start in range(0, len(facts), CHUNK):
            part = facts[start : start + CHUNK]
            if (start // CHUNK) % 2:
                b += run_timed(off, part) * len(part)
                a += run_timed(on, part) * len(part)
            else:
                a += run_timed(on, part) * len(part)
                b += run_timed(off, part) * len(part)
        on_us.append(a / len(facts))
        off_us.append(b / len(facts))
        ratios.append(a / b)
        requests += len(facts)
    after = on.cache.stats()
    # Served without a verification: by the gate's decision memo (which
    # answers before the cache) or by a cache hit.
    hits = requests - (after.misses - before.misses)
    denominator = hit_base(requests) if hit_base else requests
    return Result(
        name,
        statistics.median(on_us),
        statistics.median(off_us),
        statistics.median(ratios),
        hits / denominator if denominator else 0.0,
        {},
    )


def memory_per_entry(gate: CertGate, facts: Sequence[RequestFacts]) -> tuple[float, float]:
    """(tracemalloc bytes, C heap bytes or NaN) per cached allow."""
    gate.decide(facts[0])  # warm every lazy structure of the gate
    gate.cache.clear()
    heap = _malloc_used()
    gc.collect()
    tracemalloc.start()
    first = tracemalloc.take_snapshot()
    c0 = heap()
    for f in facts:
        if gate.decide(f).reason is not None:
            raise SystemExit("bench_cache: memory case refused")
    gc.collect()
    c1 = heap()
    second = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(d.size_diff for d in second.compare_to(first, "filename"))
    if len(gate.cache) != len(facts):
        raise SystemExit("bench_cache: not every allow was cached")
    return grown / len(facts), (c1 - c0) / len(facts)


def _malloc_used() -> Callable[[], float]:
    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (n, ctypes.c_size_t)
            for n in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return lambda: float("nan")

    def used() -> float:
        info = libc.mallinfo2()
        return float(info.uordblks + info.hblkhd)

    return used


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000-certificate scan")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--malloc", action="store_true", help="also print C heap per entry")
    args = parser.parse_args(argv)
    logging.getLogger("certgate").disabled = True
    started = time.perf_counter()
    scan_count = 20_000 if args.quick else 100_000
    rounds = 10
    pki = make_pki()
    hot = issue(pki, pki.root, 0, 2_000)
    scan = issue(pki, pki.root, 10_000_000, scan_count)
    burst = scan[:20_000]
    print(
        f"bench_cache: {len(hot) + len(scan):,} certificates in "
        f"{time.perf_counter() - started:.1f} s; Python {sys.version.split()[0]}",
        flush=True,
    )
    hot_facts = [header_facts(d) for d in hot]
    scan_facts = [header_facts(d) for d in scan]
    results: list[Result] = []

    # (a) 1,000-certificate working set
    on, off = gate_for([pki.tenant], 10_000), gate_for([pki.tenant], 0)
    working = hot_facts[:1_000]
    run_timed(on, working)
    run_timed(off, working)
    results.append(compare("(a) 1,000 working set", [working * 3] * rounds, on, off))

    # (b) scan: every certificate once
    on, off = gate_for([pki.tenant], 10_000), gate_for([pki.tenant], 0)
    size = len(scan_facts) // rounds
    scan_rounds = [scan_facts[i * size : (i + 1) * size] for i in range(rounds)]
    result = compare(f"(b) {len(scan):,} scan", scan_rounds, on, off)
    result.extra["miss cost on-off"] = f"{result.on_us - result.off_us:+.2f} µs"
    results.append(result)
    stats = on.cache.stats()
    result.extra["evictions"] = f"{stats.evictions:,}"

    # (c) 80 % hot set + 20 % scan
    on, off = gate_for([pki.tenant], 10_000), gate_for([pki.tenant], 0)
    rng = random.Random(7)
    mix_scan = iter(scan_facts)
    mix: list[RequestFacts] = []
    for _ in range(min(len(scan_facts), 20_000)):
        mix.append(next(mix_scan))
        mix.extend(rng.choice(hot_facts) for _ in range(4))
    for f in hot_facts:  # warm: two passes (probation, then protected)
        on.decide(f)
        on.decide(f)
    size = len(mix) // rounds
    mix_rounds = [mix[i * size : (i + 1) * size] for i in range(rounds)]
    result = compare(
        "(c) 80 % hot 2,000 + 20 % scan", mix_rounds, on, off, hit_base=lambda n: n * 4 // 5
    )
    results.append(result)

    # (d) burst: does a scan flush the hot set?
    burst_rates: dict[str, float] = {}
    for label, share in (("segmented", None), ("plain LRU", 0)):
        gate = gate_for([pki.tenant], 10_000)
        if share is not None:
            gate.verification.cache = ValidationCache(10_000, protected_share=share)
        for f in hot_facts:
            gate.decide(f)
            gate.decide(f)
        for f in scan_facts[: len(burst)]:
            gate.decide(f)
        before = gate.cache.stats().misses
        for f in hot_facts:
            gate.decide(f)
        served = len(hot_facts) - (gate.cache.stats().misses - before)
        burst_rates[label] = served / len(hot_facts)

    # (e) memory per cached allow
    inter_leaves = issue(pki, pki.inter, 20_000_000, 1_000)
    inter_der = pki.inter.cert.public_bytes(serialization.Encoding.DER)
    memory = {
        "leaf + root (header)": memory_per_entry(
            gate_for([pki.tenant], 10_000), hot_facts[1000:2000]
        ),
        "leaf + configured intermediate (header)": memory_per_entry(
            gate_for([pki.inter_tenant], 10_000),
            [header_facts(d, "inter." + HOST) for d in inter_leaves],
        ),
        "leaf + client-sent intermediate (TLS)": memory_per_entry(
            gate_for([Tenant("tls", ("tls." + HOST,), (pki.root.cert,))], 10_000),
            [tls_facts(d, [inter_der], "tls." + HOST) for d in inter_leaves],
        ),
    }

    print()
    for r in results:
        print(r.line())
    print()
    print(f"(d) hot-set pass after a {len(burst):,}-certificate burst, served from the cache:")
    for label, rate in burst_rates.items():
        print(f"    {label:<10} {rate * 100:5.1f} %")
    print()
    print("(e) memory per cached allow (1,000 entries):")
    for label, (py, native) in memory.items():
        text = f"    {label:<42} {py:7.0f} B (tracemalloc)"
        if args.malloc:
            text += f"  {native:7.0f} B (C heap growth)"
        print(text)

    failures = []
    scan_result, mix_result = results[1], results[2]
    if scan_result.ratio > SCAN_RATIO_LIMIT:
        failures.append(
            f"scan: cache on / cache off {scan_result.ratio:.3f} > {SCAN_RATIO_LIMIT} "
            "(the cache must not make a scan more expensive)"
        )
    if mix_result.hit_rate < HOT_HIT_TARGET:
        failures.append(
            f"mix: hot-set hit rate {mix_result.hit_rate * 100:.1f} % "
            f"< {HOT_HIT_TARGET * 100:.0f} %"
        )
    if burst_rates["segmented"] < HOT_HIT_TARGET:
        failures.append(
            f"burst: hot set served {burst_rates['segmented'] * 100:.1f} % from the cache "
            f"after the burst (< {HOT_HIT_TARGET * 100:.0f} %)"
        )
    worst = max(py for py, _ in memory.values())
    if worst > MEMORY_TARGET_BYTES:
        failures.append(f"memory: {worst:.0f} B per cached allow > {MEMORY_TARGET_BYTES} B")
    print()
    for failure in failures:
        print("FAIL", failure)
    print(
        f"{'all targets met' if not failures else f'{len(failures)} target(s) missed'} "
        f"in {time.perf_counter() - started:.0f} s"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "results": [r.__dict__ for r in results],
                    "burst_hot_hit_rate": burst_rates,
                    "memory_bytes_per_entry": {k: v[0] for k, v in memory.items()},
                    "failures": failures,
                },
                out,
                indent=2,
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
