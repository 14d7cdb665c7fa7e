"""certgate benchmark: whole-store scans - the expiry check and the CA bundle.

Run from the repository root against a store made by ``bench/bench_scale.py``
(it is only read; pass a copy if other benchmarks use it at the same time)::

    .venv/bin/python bench/bench_store_expiry.py sqlite:////tmp/copy/scale-1000000.db

Each measurement runs in a new process (its peak RSS is its own), wall and
CPU time:

1. *expiry, nothing late* - the daily case: :func:`certgate.reload.expiry_report`
   at the default thresholds (one pass over the distinct CA certificates;
   no tenant read when none is late);
2. *expiry, everything late* - the worst case: a warning threshold of 100
   years, so every CA of every tenant is an item (the pass over every
   tenant-certificate link; the report keeps the 10,000 soonest);
3. *bundle* - :func:`certgate.stores.scan.bundle_pem` (every distinct CA
   as PEM, written nowhere).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class Levels:
    expiry_warning_days: float = 30.0
    expiry_critical_days: float = 14.0
    crl_warning_days: float = 3.0
    crl_critical_days: float = 1.0


def measure(url: str, what: str) -> dict[str, float]:
    """One measurement in this process."""
    from certgate.reload import expiry_report  # noqa: PLC0415
    from certgate.stores import open_store  # noqa: PLC0415
    from certgate.stores.scan import bundle_pem  # noqa: PLC0415

    store = open_store(url)
    wall, cpu = time.perf_counter(), time.process_time()
    if what == "bundle":
        count = sum(1 for _ in bundle_pem(store))
        omitted = 0
    else:
        levels = Levels() if what == "nothing-late" else Levels(36500.0, 14.0)
        report = expiry_report(store, levels)
        count, omitted = len(report.items), report.omitted
    return {
        "wall_s": round(time.perf_counter() - wall, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
        "items": count,
        "omitted": omitted,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the store (sqlite:///... or postgresql://...)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.url, args.one)))
        return 0
    for what in ("nothing-late", "everything-late", "bundle"):
        done = subprocess.run(
            [sys.executable, __file__, args.url, "--one", what],
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"{what:16} {done.stdout.strip()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
