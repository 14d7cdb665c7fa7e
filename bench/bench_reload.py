"""certgate benchmark: what a hot reload and the file watch cost.

Run from the repository root::

    .venv/bin/python bench/bench_reload.py            # 100 and 1,000 tenants
    .venv/bin/python bench/bench_reload.py --tenants 100 --rounds 3

For each size it writes a configuration of N tenants (one EC root file each,
a host each) and reports the medians over ``--rounds``:

* ``load``: ``CertGate.from_toml`` (parse, read and vet N CA files, index);
* ``reload (tenants only)``: ``gate.reload()`` of the same file - the
  settings' parts and the verification cache are kept;
* ``reload (settings changed)``: ``gate.reload()`` after a ``[certgate]``
  change - every part built anew;
* ``watch check``: one poll of the file watch (``os.stat`` of the TOML file
  and the N CA files) - what the monitor thread does every
  ``watch_interval`` when nothing changed.

Nothing here runs on a request: requests read the snapshot reference only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from certgate import CertGate
from certgate.devpki import CA


def write_config(directory: Path, tenants: int, settings: str = "") -> None:
    lines = [f"[certgate]\n{settings}\n"]
    for index in range(tenants):
        name = f"t{index}"
        if not (directory / f"{name}.pem").exists():
            (directory / f"{name}.pem").write_bytes(CA.root(f"{name} Root").cert_pem)
        lines.append(
            f'[[tenants]]\nid = "{name}"\nhosts = ["{name}.bench.test"]\nroots = ["{name}.pem"]\n'
        )
    (directory / "certgate.toml").write_text("".join(lines))


def timed(action: Callable[[], object], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run(tenants: int, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        write_config(directory, tenants)
        config = directory / "certgate.toml"
        gates: list[CertGate] = []

        def load() -> None:
            gates.append(CertGate.from_toml(config))

        figures = {"load": timed(load, rounds)}
        gate = gates[-1]
        figures["reload (tenants only)"] = timed(gate.reload, rounds)
        samples = []
        for flip in range(rounds):  # the file is written before the clock starts
            write_config(directory, tenants, f"cache_size = {10001 + flip}")
            samples.append(timed(gate.reload, 1))
        figures["reload (settings changed)"] = statistics.median(samples)
        reloader = gate._reloader
        assert reloader is not None
        figures["watch check"] = timed(reloader.changed, max(rounds, 20))
        for made in gates:
            made.close()
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenants", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for size in args.tenants:
        for what, seconds in run(size, args.rounds).items():
            print(f"{size:>6} tenants  {what:<27} {seconds * 1000:9.2f} ms")


if __name__ == "__main__":
    main()
