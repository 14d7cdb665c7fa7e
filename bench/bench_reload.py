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
  ``watch_interval`` when nothing changed;
* ``request p50/p99/max, idle`` and ``... during reloads``: warm requests
  (the ASGI middleware, TLS transport certificate, answered from the
  decision memo) sent back to back in the main thread, alone and while
  another thread reloads the file over and over - a reload never blocks a
  request, but its CPU work shares the interpreter lock with them.

Nothing here runs on a request: requests read the snapshot reference only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from certgate import CertGate
from certgate.asgi import CertGateMiddleware
from certgate.devpki import CA, IssuedCert


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
        root = CA.root("t0 Root")  # tenant t0 trusts this root from now on
        (directory / "t0.pem").write_bytes(root.cert_pem)
        gate.reload()
        idle = requests(gate, root.issue("device"), None)
        busy = requests(gate, root.issue("device"), gate)
        for label, lat in (("idle", idle), ("during reloads", busy)):
            ordered = sorted(lat)
            figures[f"request p50, {label}"] = ordered[len(ordered) // 2]
            figures[f"request p99, {label}"] = ordered[int(len(ordered) * 0.99)]
            figures[f"request max, {label}"] = ordered[-1]
        for made in gates:
            made.close()
        return figures


def requests(gate: CertGate, device: IssuedCert, reloading: CertGate | None) -> list[float]:
    """Latencies of warm requests for 2 s (while ``reloading`` reloads)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    middleware = CertGateMiddleware(app, gate)
    chain = [device.cert_pem.decode()]
    scope = {
        "type": "http",
        "path": "/",
        "headers": [(b"host", b"t0.bench.test")],
        "certgate.socket_peer": ("192.0.2.1", 1),
        "extensions": {"tls": {"client_cert_chain": chain}},
    }
    stop = threading.Event()

    def reload_loop() -> None:
        while not stop.is_set() and reloading is not None:
            reloading.reload()

    thread = threading.Thread(target=reload_loop)
    latencies: list[float] = []

    async def drive() -> None:
        for _ in range(3):  # warm: verified, then remembered
            await middleware(dict(scope), _receive, _send)
        thread.start()
        deadline = time.perf_counter() + 2.0
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await middleware(dict(scope), _receive, _send)
            latencies.append(time.perf_counter() - start)

    asyncio.run(drive())
    stop.set()
    thread.join()
    return latencies


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


async def _send(message: Any) -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenants", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for size in args.tenants:
        for what, seconds in run(size, args.rounds).items():
            print(f"{size:>6} tenants  {what:<32} {seconds * 1000:10.3f} ms")


if __name__ == "__main__":
    main()
