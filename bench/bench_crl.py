"""certgate benchmark: CRL revocation - load time and per-request cost.

Run from the repository root (one command, about half a minute on 2 cores)::

    .venv/bin/python bench/bench_crl.py            # 100,000-entry CRL
    .venv/bin/python bench/bench_crl.py --entries 10000

Exit status: 0 when every target is met, 1 otherwise (FAIL lines).

What is measured, in process, with a root and an issuing intermediate (EC
P-256, the intermediate configured on the tenant) and a leaf under it:

(a) **load**: building the tenant with the issuing CA's CRL of N entries
    (signature check, critical-extension checks of the CRL and of every
    entry, the serial index) and a 1-entry root CRL; wall time, best of 3.
    Target: under 1 s for 100,000 entries.
(b) **check**: ``tenant.revocation.check()`` of the verified 3-certificate
    path (leaf against the issuing CA's CRL, intermediate against the
    root's) - the whole cost revocation adds to a cold verification; CPU
    time (``time.thread_time``), best of 5 runs of 20,000. Target: < 2 us.
    Side by side: the same check against 1-entry CRLs (O(1): about equal).
(c) **cold request**: ``CachedVerification.verify()`` (what the gate runs
    per request once it has the tenant) with the verification cache off
    (``cache_size=0``: every request verifies the path), tenant without CRLs
    vs the tenant with the CRLs of (a); median over rounds of 2,000 per
    gate, alternating. The difference is the per-request cost of revocation.
(d) **warm request**: the same with the cache on (a cache hit: revocation
    was checked when the entry was made; it costs nothing more per request).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from certgate import CertGate, InMemoryRegistry, Tenant
from certgate.devpki import CA
from certgate.facts import Presented

HOST = "bench.test"


def crl_of(ca: CA, serials: range) -> x509.CertificateRevocationList:
    now = dt.datetime.now(dt.UTC)
    entries = [
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(now)
        .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
        .build()
        for serial in serials
    ]
    return (
        x509.CertificateRevocationListBuilder(revoked_certificates=entries)
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=7))
        .add_extension(x509.CRLNumber(1), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def best(fn: Callable[[], object], runs: int, number: int) -> float:
    """Best per-call CPU time in seconds over ``runs`` runs of ``number``."""
    out = float("inf")
    for _ in range(runs):
        start = time.thread_time()
        for _ in range(number):
            fn()
        out = min(out, (time.thread_time() - start) / number)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    args = parser.parse_args()
    root = CA.root("Bench Root")
    issuing = root.intermediate("Bench Issuing")
    leaf = issuing.issue("device")
    big = crl_of(issuing, range(10**15, 10**15 + args.entries))
    root_crl = crl_of(root, range(1, 2))
    small = crl_of(issuing, range(1, 2))

    def tenant(*crls: x509.CertificateRevocationList) -> Tenant:
        return Tenant("bench", (HOST,), (root.cert,), (issuing.cert,), crls=crls)

    loads = []
    for _ in range(3):
        start = time.perf_counter()
        with_big = tenant(big, root_crl)
        loads.append(time.perf_counter() - start)
    load = min(loads)
    with_small = tenant(small, root_crl)
    plain = tenant()
    path = (leaf.cert, issuing.cert, root.cert)
    now = time.time()
    assert with_big.revocation is not None
    assert with_small.revocation is not None
    big_rev, small_rev = with_big.revocation, with_small.revocation
    check_big = best(lambda: big_rev.check(path, now, "bench"), 5, 20_000)
    check_small = best(lambda: small_rev.check(path, now, "bench"), 5, 20_000)

    presented = Presented("bench", leaf.der, lambda: [leaf.der])

    def per_request(cache_size: int) -> tuple[float, float]:
        runs = [
            (CertGate(InMemoryRegistry([t]), cache_size=cache_size).verification, t)
            for t in (plain, with_big)
        ]
        for verification, each in runs:
            verification.verify(each, presented)
        rounds: list[list[float]] = [[], []]
        number = 2000 if cache_size == 0 else 50_000
        for _ in range(9):
            for index, (verification, each) in enumerate(runs):
                start = time.thread_time()
                for _ in range(number):
                    verification.verify(each, presented)
                rounds[index].append((time.thread_time() - start) / number)
        return statistics.median(rounds[0]), statistics.median(rounds[1])

    cold_plain, cold_crl = per_request(0)
    warm_plain, warm_crl = per_request(10_000)
    us = 1e6
    print(f"CRL entries: {args.entries:,} ({len(big.public_bytes(Encoding.DER)) / 1e6:.1f} MB DER)")
    print(f"(a) load (vet + index), best of 3:      {load * 1000:8.1f} ms")
    print(f"(b) revocation check, 3-cert path:      {check_big * us:8.2f} us"
          f"   (1-entry CRLs: {check_small * us:.2f} us)")  # fmt: skip
    print(f"(c) cold request (cache off): no CRL    {cold_plain * us:8.1f} us")
    print(f"                              with CRL  {cold_crl * us:8.1f} us"
          f"   (+{(cold_crl - cold_plain) * us:.1f} us, median of rounds)")  # fmt: skip
    print(f"(d) warm request (cache hit): no CRL    {warm_plain * us:8.2f} us")
    print(f"                              with CRL  {warm_crl * us:8.2f} us")
    failed = False
    if args.entries >= 100_000 and load >= 1.0:
        print(f"FAIL: loading {args.entries:,} entries took {load:.2f} s (target < 1 s)")
        failed = True
    if check_big >= 2e-6:
        print(f"FAIL: the revocation check costs {check_big * us:.2f} us (target < 2 us)")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
