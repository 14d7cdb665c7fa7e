"""certgate benchmark: the load time of a large configuration, and what CA
vetting adds to it.

Run from the repository root::

    .venv/bin/python bench/bench_vetting.py                      # 3,000 tenants
    .venv/bin/python bench/bench_vetting.py --workdir /tmp/v3k   # keep the files
    .venv/bin/python bench/bench_vetting.py --workdir /tmp/v3k --src ../main/src

``--src`` loads certgate from another source tree (an older checkout, for a
before/after comparison on the very same files; make them once with
``--workdir`` and pass the same directory to both runs).

What is measured: ``load_config()`` of a TOML file with N tenants (default
3,000), each with its own EC P-256 root and an issuing intermediate
(configured, so the ``chain`` rule checks one signature per tenant); wall
time, median and best of ``--rounds`` loads (default 5), files in the page
cache: a first load (vetting's memo of checked signatures cleared) and a
load again (what a reload costs: the memo holds every signature checked).
Then, when the tree has :mod:`certgate.vetting`, the CPU time of
``vet_cas()`` alone over every tenant, memo cleared (median of the rounds).
Nothing is asserted: this is a report (exit 0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _make(workdir: Path, tenants: int) -> Path:
    from certgate.devpki import CA  # noqa: PLC0415 - after --src is on sys.path

    config = workdir / "certgate.toml"
    if config.exists():
        return config
    pki = workdir / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    lines = []
    for number in range(tenants):
        root = CA.root(f"Tenant {number} Root", organization=f"Tenant {number}")
        issuing = root.intermediate(f"Tenant {number} Issuing", organization=f"Tenant {number}")
        (pki / f"t{number}-root.pem").write_bytes(root.cert_pem)
        (pki / f"t{number}-issuing.pem").write_bytes(issuing.cert_pem)
        lines.append(
            f'[[tenants]]\nid = "t{number}"\nhosts = ["t{number}.bench.test"]\n'
            f'roots = ["pki/t{number}-root.pem"]\nintermediates = ["pki/t{number}-issuing.pem"]\n'
        )
    config.write_text("\n".join(lines))
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, help="where the files are made (or reused)")
    parser.add_argument("--src", type=Path, help="load certgate from this source tree")
    args = parser.parse_args()
    src = args.src or Path(__file__).resolve().parent.parent / "src"
    sys.path.insert(0, str(src.resolve()))
    import certgate  # noqa: PLC0415
    from certgate.config import load_config  # noqa: PLC0415

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="certgate-bench-vetting-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    config = _make(workdir, args.tenants)
    print(f"certgate from {Path(certgate.__file__).parent}")
    print(f"{config}: made or reused in {time.perf_counter() - started:.1f} s")
    try:
        from certgate import vetting  # noqa: PLC0415
    except ImportError:
        vetting = None  # type: ignore[assignment]
    memo: dict[bytes, None] = getattr(vetting, "_SIGNED", {})
    load_config(config)  # warm the page cache and imports
    cold, warm = [], []
    for _ in range(args.rounds):
        memo.clear()  # a first load: no signature check remembered
        started = time.perf_counter()
        loaded = load_config(config)
        cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        load_config(config)  # a reload: the signature checks are remembered
        warm.append(time.perf_counter() - started)
    count = len(loaded.registry.tenants())
    print(
        f"load_config, {count} tenants (root + intermediate each): first load median "
        f"{statistics.median(cold):.3f} s (best {min(cold):.3f}); again median "
        f"{statistics.median(warm):.3f} s (best {min(warm):.3f}); {args.rounds} rounds"
    )
    if vetting is None:
        print("no certgate.vetting in this tree: vetting not measured")
        return 0
    tenants = loaded.registry.tenants()
    cpu = []
    for _ in range(args.rounds):
        memo.clear()
        started = time.process_time()
        for tenant in tenants:
            vetting.vet_cas(tenant.id, tenant.roots, tenant.intermediates)
        cpu.append(time.process_time() - started)
    per = statistics.median(cpu) / max(count, 1) * 1e6
    print(
        f"vet_cas alone over {count} tenants, nothing remembered: median "
        f"{statistics.median(cpu):.3f} s CPU ({per:.0f} us per tenant)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
