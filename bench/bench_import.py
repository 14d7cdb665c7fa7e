"""certgate benchmark: ``certgate tenants import`` of a JSON-lines file.

    .venv/bin/python bench/bench_import.py [--size 100000] [--cas 16] [--store sqlite,postgresql]
        [--dir /tmp/certgate-bench-import] [--profile FILE]

Writes ``DIR/tenants-SIZE-CAS.jsonl`` once (reused): tenant ``i`` has the
hosts ``tI.import.test`` and ``*.tI.import.test`` and one root. ``--cas N``
(N > 0): the roots are N CA certificates shared by every N-th tenant
(``shared_anchors = true``: what bench_scale's 16-CA in-memory figures
use); ``--cas 0``: every tenant its own root (as bench_scale.py's stores;
all signed with one key pair).

Then, per store, imports the file into a new store with the CLI's code path
(:func:`certgate.stores.cli.run` - JSON parsing, PEM decoding, vetting, the
write-time rules, batched transactions; the progress bar off) and prints
wall time, CPU time of this process and of the reader process the CLI
starts for a large file, tenants/s and CPU per tenant. SQLite:
a new file in DIR; PostgreSQL: a new database on a throwaway cluster
(tests/pg_server.py, ``fsync=off``) or on ``CERTGATE_BENCH_PG``. The
server's own CPU (PostgreSQL) is not in the CPU figure. ``--profile FILE``
writes a cProfile of the (first) import; ``--serial``: no reader process
(the file parsed in the importing process, as for a small file).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import self_signed_root  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from certgate.stores import cli, open_store  # noqa: E402
from certgate.stores.cli import run as run_cli  # noqa: E402
from certgate.stores.cli import store_parsers  # noqa: E402


def _root(key: ec.EllipticCurvePrivateKey, i: int) -> str:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"Import {i} Root CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certgate import bench"),
        ]
    )
    cert = self_signed_root(key, name, i + 1)
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def jsonl(directory: Path, size: int, cas: int) -> Path:
    """The JSON-lines file of ``size`` tenants (written once)."""
    path = directory / f"tenants-{size}-{cas}.jsonl"
    if path.exists():
        return path
    key = ec.generate_private_key(ec.SECP256R1())
    shared = [_root(key, i) for i in range(cas)]
    partial = path.with_suffix(".partial")
    with partial.open("w", encoding="ascii") as out:
        for i in range(size):
            line = {
                "id": f"t{i:07d}",
                "hosts": [f"t{i}.import.test", f"*.t{i}.import.test"],
                "roots": [shared[i % cas] if cas else _root(key, i)],
                "shared_anchors": bool(cas),
            }
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
    partial.rename(path)
    return path


def _pg_url(directory: Path, name: str) -> tuple[str, contextlib.ExitStack]:
    from scale_postgres import PostgresBackend  # noqa: PLC0415 - psycopg only when asked

    stack = contextlib.ExitStack()
    backend = PostgresBackend(directory)
    size = f"import_{name}"
    backend.reset(size)  # type: ignore[arg-type]
    return backend.url(size), stack  # type: ignore[arg-type]


def import_once(source: Path, url: str, profile: str | None) -> dict[str, float]:
    parser = argparse.ArgumentParser()
    store_parsers(parser.add_subparsers(dest="tenants_command"))
    args = parser.parse_args(["import", "--from", str(source), "--to", url, "--quiet"])
    profiler = cProfile.Profile() if profile else None
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started, cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    code = run_cli(args)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)  # type: ignore[arg-type]
    wall, used = time.perf_counter() - started, time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reader = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    if code != 0:
        raise SystemExit(f"import failed ({code})")
    return {"wall_s": round(wall, 1), "cpu_s": round(used, 1), "reader_cpu_s": round(reader, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--cas", type=int, default=16)
    parser.add_argument("--store", default="sqlite")
    parser.add_argument("--dir", default="/tmp/certgate-bench-import")
    parser.add_argument("--profile")
    parser.add_argument(
        "--serial", action="store_true", help="no reader process (parse in the importing one)"
    )
    args = parser.parse_args()
    if args.serial:
        cli.PARALLEL_MIN_LINES = sys.maxsize
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    source = jsonl(directory, args.size, args.cas)
    print(f"{source}: ready in {time.perf_counter() - started:.1f} s", flush=True)
    for kind in args.store.split(","):
        name = f"{args.size}_{args.cas}"
        if kind == "sqlite":
            path = directory / f"import-{name}.db"
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{path}{suffix}")
            url = f"sqlite:///{path}"
        else:
            url, _ = _pg_url(directory, name)
        load = os.getloadavg()
        figures = import_once(source, url, args.profile)
        count = open_store(url).count()
        assert count == args.size, count
        print(
            f"{kind}: {args.size:,} tenants ({args.cas or 'own'} CAs) in {figures['wall_s']} s = "
            f"{args.size / figures['wall_s']:,.0f}/s; CPU {figures['cpu_s']} s = "
            f"{figures['cpu_s'] / args.size * 1e6:.0f} µs/tenant (+ reader process "
            f"{figures['reader_cpu_s']} s = {figures['reader_cpu_s'] / args.size * 1e6:.0f} "
            f"µs/tenant); load {load[0]:.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
