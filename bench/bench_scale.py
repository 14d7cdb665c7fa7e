"""certgate benchmark: many tenants in a shared store (SQLite; a hook for more).

Run from the repository root (one command)::

    .venv/bin/python bench/bench_scale.py                    # 1k, 100k and 1M tenants
    .venv/bin/python bench/bench_scale.py --sizes 1000,100000 --json scale.json
    python3 dev.py bench-scale [same options]

Stores are kept in ``--dir`` (default ``/tmp/certgate-bench-scale``) and
reused by the next run when they hold the expected tenants (``--fresh``
rebuilds them): generating and importing a million tenants takes minutes.
Exit status: 0 when every target is met, 1 otherwise (FAIL lines).

**The tenants.** Tenant ``i`` has its own root CA (``CN=Tenant i Root CA``,
EC P-256, CA flags, keyCertSign) and the hosts ``tI.scale.test`` and
``*.tI.scale.test``. To generate a million of them in minutes, every root
is signed with **one shared key pair** (a certificate per tenant, one key):
the store still sees a million distinct anchors (subject and key), the
anchor-sharing check runs its indexed queries for each, and a device of
tenant ``i`` (issuer ``CN=Tenant i Root CA``) never builds a path to
another tenant's root. A per-tenant key pair would cost about 0.06 ms more
per tenant and change no figure below.

**What is measured**, per size (wall clock unless said; the machine's load
average is printed, other work on it shows in the figures):

1. *import*: ``import_tenants`` of freshly generated records (parse, CA
   vetting, anchor-sharing queries, batched transactions of 1,000), with the
   time spent generating certificates subtracted; the store's file size.
2. *start-up*: a new process opens the store (``open_registry``), builds a
   ``CertGate`` and decides one request; time and RSS after opening and
   after that request (median of 3). Target: independent of the tenant
   count (within 10 % + 2 MB of the 1k figures).
3. *host lookups*: the store itself (``SqliteRegistry.tenant_for_host``:
   indexed query and a tenant built from DER, no caching) for 2,000 random
   known hosts, unknown hosts, and the cache's inline answer
   (``CachingRegistry.peek_tenant_for_host``) for a hot set: p50 / p99.
4. *first request of a cold tenant*: ``CertGate.decide`` for 500 tenants
   never seen by the process (cache miss, store read, cold verification).
5. *warm request*: ``CertGate.decide`` cycling over a hot working set of
   1,000 tenants, each device seen before: with the decision memo (the
   default) and without it (a registry wrapper without ``change_token``:
   the cache's inline answer and the verification cache). Every size is
   open at once and measured in alternating rounds (10,000 decisions
   each, median of 7): CPU time per decision, and wall time. Target: the
   largest size's CPU figure within 10 % of the smallest's.
6. *propagation*: another process runs a gate over the store; 20 changes
   of a tenant's trust (another root, back, ...) are written here, each
   after a random pause; the latency until that process decides
   differently (p50 / max; its clock is the same ``CLOCK_MONOTONIC``).
   Target: max under 2 s.
7. *4 processes sharing one store*: each loads 300 cold tenants and then
   decides warm requests over its own 200-tenant hot set for 3 s, while
   this process writes 5 changes a second to other tenants: cold loads/s
   and warm decisions/s per process.

Other stores: :data:`BACKENDS` maps ``--store NAME`` to a factory of a
:class:`Backend` (a URL per size, reset, size on disk); the measurements
only use registry URLs (``open_store`` / ``open_registry``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from certgate import CertGate, RequestFacts  # noqa: E402
from certgate.stores import TenantRecord, open_registry, open_store  # noqa: E402
from certgate.stores.caching import CachingRegistry  # noqa: E402

HOT = 1000
CHANGES = 20
BATCH = 1000
PROXY = "10.20.30.40"
DEFAULT_SIZES = (1000, 100_000, 1_000_000)


# -- stores ---------------------------------------------------------------------


class Backend(Protocol):
    """A kind of store the bench can fill and measure."""

    name: str

    def url(self, size: int) -> str: ...

    def reset(self, size: int) -> None:
        """Make the store of ``size`` empty (created on first write)."""
        ...

    def disk_bytes(self, size: int) -> int | None: ...


class SqliteBackend:
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, size: int) -> Path:
        return self.directory / f"scale-{size}.db"

    def url(self, size: int) -> str:
        return f"sqlite:///{self.path(size)}"

    def reset(self, size: int) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path(size)}{suffix}").unlink(missing_ok=True)

    def disk_bytes(self, size: int) -> int | None:
        return sum(
            Path(f"{self.path(size)}{s}").stat().st_size
            for s in ("", "-wal")
            if Path(f"{self.path(size)}{s}").exists()
        )


def _postgres(args: argparse.Namespace) -> Backend:
    from scale_postgres import PostgresBackend  # noqa: PLC0415 - psycopg only when asked

    return PostgresBackend(Path(args.dir))


BACKENDS: dict[str, Callable[[argparse.Namespace], Backend]] = {
    "sqlite": lambda args: SqliteBackend(Path(args.dir)),
    "postgresql": _postgres,
}
"""``--store`` names; another store's helper adds its own factory here."""


# -- tenants ----------------------------------------------------------------------


def self_signed_root(
    key: ec.EllipticCurvePrivateKey, name: x509.Name, serial: int
) -> x509.Certificate:
    """A root CA certificate that certgate's vetting accepts (critical CA
    basic constraints and key usage, 2025-2040), self-signed with ``key``."""
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2040, 1, 1, tzinfo=dt.UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )


class Factory:
    """Tenant roots and devices from one shared key pair (kept in ``directory``
    so that a reused store's roots and new devices match)."""


    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        key_file = directory / "scale-key.pem"
        if key_file.exists():
            key = serialization.load_pem_private_key(key_file.read_bytes(), None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            key_file.write_bytes(
                key.private_bytes(
                    Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        self.key = key
        self.device_key = ec.generate_private_key(ec.SECP256R1())
        self.generating = 0.0
        self.generating_cpu = 0.0

    @staticmethod
    def name(i: int) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"Tenant {i} Root CA"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certgate scale bench"),
            ]
        )

    def root(self, i: int, serial: int = 0) -> bytes:
        cert = self_signed_root(self.key, self.name(i), i + 1 + serial * 10_000_000)
        return cert.public_bytes(Encoding.DER)

    def device(self, i: int) -> bytes:
        """A client certificate of tenant ``i`` (DER)."""
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"device {i}")]))
            .issuer_name(self.name(i))
            .public_key(self.device_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(Encoding.DER)

    def record(self, i: int, serial: int = 0) -> TenantRecord:
        return TenantRecord(
            id=tenant_id(i), hosts=(host(i), f"*.{host(i)}"), roots=(self.root(i, serial),)
        )

    def records(self, count: int) -> Iterator[TenantRecord]:
        for i in range(count):
            started, cpu = time.perf_counter(), time.process_time()
            record = self.record(i)
            self.generating += time.perf_counter() - started
            self.generating_cpu += time.process_time() - cpu
            yield record


def tenant_id(i: int) -> str:
    return f"t{i:07d}"


def host(i: int) -> str:
    return f"t{i}.scale.test"


def facts(i: int, der: bytes) -> RequestFacts:
    import base64  # noqa: PLC0415

    return RequestFacts(
        host=host(i),
        path="/",
        peer=PROXY,
        headers={"cf-client-cert-der-base64": [base64.b64encode(der).decode()]},
        transport=None,
    )


def gate_of(url: str, **cache: Any) -> CertGate:
    return CertGate(
        open_registry(url, **cache), trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"]
    )


class NoToken:
    """A registry wrapper without ``change_token``: the gate keeps no
    decision memo, every request asks the registry (its cache, inline)."""

    blocking = True

    def __init__(self, inner: CachingRegistry) -> None:
        self.peek_tenant_for_host = inner.peek_tenant_for_host
        self.peek_tenant_by_id = inner.peek_tenant_by_id
        self.tenant_for_host = inner.tenant_for_host
        self.tenant_by_id = inner.tenant_by_id
        self.has_tenant_modes = False


# -- measurements -----------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Callable[[], object], count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def ensure_store(backend: Backend, factory: Factory, size: int, fresh: bool) -> dict[str, Any]:
    """The store of ``size`` tenants: reused when complete, else imported."""
    url = backend.url(size)
    if not fresh:
        try:
            store = open_store(url)
            if store.count() == size and store.get(tenant_id(size - 1)) is not None:
                return {"reused": True, "disk_mb": _mb(backend.disk_bytes(size))}
        except Exception:  # noqa: BLE001 - missing or partial: rebuilt below
            pass
    backend.reset(size)
    store = open_store(url, create=True)
    factory.generating = factory.generating_cpu = 0.0
    shown = [time.monotonic()]

    def progress(done: int) -> None:
        if time.monotonic() - shown[0] > 10:
            shown[0] = time.monotonic()
            print(f"  ... {done:,} / {size:,} imported", flush=True)

    started, cpu = time.perf_counter(), time.process_time()
    result = store.import_tenants(factory.records(size), batch=BATCH, progress=progress)
    wall = time.perf_counter() - started - factory.generating
    assert result.written == size, result
    return {
        "reused": False,
        "import_s": round(wall, 1),
        "import_cpu_s": round(time.process_time() - cpu - factory.generating_cpu, 1),
        "generate_s": round(factory.generating, 1),
        "tenants_per_s": round(size / wall),
        "disk_mb": _mb(backend.disk_bytes(size)),
    }


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 1e6, 1)


def startup(url: str, directory: Path) -> dict[str, float]:
    runs = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, __file__, "--dir", str(directory), "--child", "startup", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        runs.append(json.loads(out.splitlines()[-1]))
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def child_startup(url: str, factory: Factory) -> None:
    device = factory.device(0)
    base = rss_kb()
    started = time.perf_counter()
    gate = gate_of(url)
    opened = time.perf_counter() - started
    after_open = rss_kb()
    started = time.perf_counter()
    decision = gate.decide(facts(0, device))
    first = time.perf_counter() - started
    assert decision.reason is None, decision
    print(
        json.dumps(
            {
                "open_ms": round(opened * 1e3, 2),
                "first_request_ms": round(first * 1e3, 2),
                "rss_mb_before": round(base / 1024, 1),
                "rss_mb_open": round(after_open / 1024, 1),
                "rss_mb_first": round(rss_kb() / 1024, 1),
            }
        )
    )


def lookups(url: str, size: int, rng: random.Random) -> dict[str, float]:
    store = open_store(url)
    known = [rng.randrange(size) for _ in range(2000)]
    samples = timed(lambda: store.tenant_for_host(host(known.pop())), 2000)
    ids = [rng.randrange(size) for _ in range(2000)]
    id_only = timed(lambda: store.id_for_host(host(ids.pop())), 2000)
    unknown = timed(lambda: store.tenant_for_host(f"n{rng.random()}.unknown.test"), 2000)
    cache = CachingRegistry(open_store(url))
    hot = [host(rng.randrange(size)) for _ in range(HOT)]
    for name in hot:
        assert cache.tenant_for_host(name) is not None
    cycle = iter(hot * 10)
    cached = timed(lambda: cache.peek_tenant_for_host(next(cycle)), HOT * 10)
    us = 1e6
    return {
        "store_p50_us": round(pct(samples, 0.5) * us, 1),
        "store_p99_us": round(pct(samples, 0.99) * us, 1),
        "id_only_p50_us": round(pct(id_only, 0.5) * us, 1),
        "unknown_p50_us": round(pct(unknown, 0.5) * us, 1),
        "unknown_p99_us": round(pct(unknown, 0.99) * us, 1),
        "cached_p50_us": round(pct(cached, 0.5) * us, 2),
        "cached_p99_us": round(pct(cached, 0.99) * us, 2),
    }


def requests(url: str, size: int, factory: Factory, rng: random.Random) -> dict[str, float]:
    gate = gate_of(url)
    cold_ids = rng.sample(range(size), 500)
    cold_devices = {i: factory.device(i) for i in cold_ids}
    cold = []
    for i in cold_ids:
        item = facts(i, cold_devices[i])
        started = time.perf_counter()
        decision = gate.decide(item)
        cold.append(time.perf_counter() - started)
        assert decision.reason is None, decision
    out = {
        "cold_p50_ms": round(pct(cold, 0.5) * 1e3, 2),
        "cold_p99_ms": round(pct(cold, 0.99) * 1e3, 2),
    }
    return out


def warm(urls: dict[int, str], factory: Factory) -> dict[int, dict[str, float]]:
    """Warm requests at every size, measured in alternating rounds (so that
    other work on the machine weighs on every size alike): CPU time per
    decision (``time.process_time``) and wall time, median of 7 rounds."""
    gates: dict[tuple[int, str], tuple[CertGate, list[RequestFacts]]] = {}
    for size, url in urls.items():
        rng = random.Random(size + 1)
        hot = [facts(i, factory.device(i)) for i in rng.sample(range(size), min(HOT, size))]
        gate = gate_of(url)
        registry = gate.registry
        assert isinstance(registry, CachingRegistry)
        plain = CertGate(
            NoToken(registry),
            trusted_proxies=["10.0.0.0/8"],
            header_sources=["cloudflare"],
        )
        for label, which in (("memo", gate), ("no_memo", plain)):
            for item in hot * 2:  # cached tenant, cached verification, memo entry
                assert which.decide(item).reason is None
            gates[size, label] = (which, hot)
    rounds: dict[tuple[int, str], list[tuple[float, float]]] = {key: [] for key in gates}
    for _ in range(7):
        for key, (gate, hot) in gates.items():
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(10):
                for item in hot:
                    gate.decide(item)
            count = 10 * len(hot)
            rounds[key].append(
                ((time.process_time() - cpu) / count, (time.perf_counter() - started) / count)
            )
    out: dict[int, dict[str, float]] = {size: {} for size in urls}
    for (size, label), values in rounds.items():
        out[size][f"warm_{label}_cpu_us"] = round(statistics.median(v[0] for v in values) * 1e6, 2)
        out[size][f"warm_{label}_wall_us"] = round(statistics.median(v[1] for v in values) * 1e6, 2)
    return out


def propagation(url: str, directory: Path, factory: Factory, size: int) -> dict[str, float]:
    i = size // 2
    store = open_store(url)
    right = factory.record(i)
    wrong = TenantRecord(id=right.id, hosts=right.hosts, roots=(_other_root(factory, i),))
    store.put(right)
    device = directory / "propagation-device.der"
    device.write_bytes(factory.device(i))
    proc = subprocess.Popen(
        [sys.executable, __file__, "--dir", str(directory), "--child", "watch", url, str(i)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().split() == ["ready", "None"]
    latencies = []
    pause = random.Random(i)
    try:
        for change in range(CHANGES):
            # at a random phase of the watcher's poll (every 0.5 s): a fixed
            # pause would always land at the same point of its cycle
            time.sleep(pause.uniform(0.1, 0.8))
            store.put(wrong if change % 2 == 0 else right)
            written = time.monotonic()
            line = proc.stdout.readline().split()
            assert line[0] == "changed", line
            latencies.append(float(line[2]) - written)
    finally:
        proc.kill()
        proc.wait()
        store.put(right)
    return {
        "p50_ms": round(pct(latencies, 0.5) * 1e3),
        "max_ms": round(max(latencies) * 1e3),
    }


def _other_root(factory: Factory, i: int) -> bytes:
    """A root of tenant ``i``'s name under another key: its devices fail."""
    saved = factory.key
    factory.key = ec.generate_private_key(ec.SECP256R1())
    try:
        return factory.root(i, serial=2)
    finally:
        factory.key = saved


def child_watch(url: str, factory: Factory, i: int) -> None:
    gate = gate_of(url)
    device = (Path(factory_dir) / "propagation-device.der").read_bytes()
    item = facts(i, device)
    reason = gate.decide(item).reason
    print(f"ready {reason}", flush=True)
    while True:
        now = gate.decide(item).reason
        if now != reason:
            reason = now
            print(f"changed {reason} {time.monotonic():.6f}", flush=True)
        time.sleep(0.0005)


def shared(url: str, directory: Path, size: int) -> dict[str, Any]:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--dir",
                str(directory),
                "--child",
                "worker",
                url,
                str(size),
                str(seed),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    store = open_store(url)
    factory = Factory(directory)
    writes = 0
    deadline = time.monotonic() + 8
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline + 30:
        if time.monotonic() < deadline:
            i = size - 1 - (writes % 50)
            store.put(factory.record(i, serial=writes % 2))
            writes += 1
        time.sleep(0.2)
    results = [json.loads(p.communicate()[0].splitlines()[-1]) for p in procs]
    return {
        "cold_loads_per_s": [r["cold_per_s"] for r in results],
        "warm_decisions_per_s": [r["warm_per_s"] for r in results],
        "warm_total_per_s": sum(r["warm_per_s"] for r in results),
        "changes_written": writes,
    }


def child_worker(url: str, factory: Factory, size: int, seed: int) -> None:
    rng = random.Random(seed)
    gate = gate_of(url)
    picks = rng.sample(range(size - 100), 500)
    devices = {i: factory.device(i) for i in picks}
    started = time.perf_counter()
    for i in picks[:300]:
        assert gate.decide(facts(i, devices[i])).reason is None
    cold = 300 / (time.perf_counter() - started)
    hot = [facts(i, devices[i]) for i in picks[300:]]
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < 3:
        for item in hot:
            gate.decide(item)
        count += len(hot)
    warm = count / (time.perf_counter() - started)
    print(json.dumps({"cold_per_s": round(cold), "warm_per_s": round(warm)}))


# -- main ------------------------------------------------------------------------------

factory_dir = "/tmp/certgate-bench-scale"


@dataclass
class Targets:
    failures: list[str]

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.failures.append(message)
            print(f"FAIL: {message}")


def main() -> int:
    global factory_dir  # noqa: PLW0603 - the child modes read it
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--store", default="sqlite", choices=sorted(BACKENDS))
    parser.add_argument("--dir", default=factory_dir, help="where stores are kept and reused")
    parser.add_argument("--fresh", action="store_true", help="rebuild the stores")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    factory_dir = args.dir
    logging.getLogger("certgate").setLevel(logging.ERROR)  # refusals are expected in places
    factory = Factory(Path(args.dir))
    if args.child:
        mode, url, *rest = args.child
        if mode == "startup":
            child_startup(url, factory)
        elif mode == "watch":
            child_watch(url, factory, int(rest[0]))
        elif mode == "worker":
            child_worker(url, factory, int(rest[0]), int(rest[1]))
        return 0
    backend = BACKENDS[args.store](args)
    sizes = [int(s) for s in args.sizes.split(",")]
    figures: dict[str, Any] = {"store": args.store, "load": os.getloadavg(), "sizes": {}}
    print(f"store {args.store}, sizes {sizes}, load average {os.getloadavg()[0]:.2f}", flush=True)
    for size in sizes:
        rng = random.Random(size)
        url = backend.url(size)
        print(f"\n== {size:,} tenants ({url})", flush=True)
        row: dict[str, Any] = {"store": ensure_store(backend, factory, size, args.fresh)}
        print(f"store        {row['store']}", flush=True)
        row["startup"] = startup(url, Path(args.dir))
        print(f"start-up     {row['startup']}", flush=True)
        row["lookups"] = lookups(url, size, rng)
        print(f"lookups      {row['lookups']}", flush=True)
        row["requests"] = requests(url, size, factory, rng)
        print(f"requests     {row['requests']}", flush=True)
        row["propagation"] = propagation(url, Path(args.dir), factory, size)
        print(f"propagation  {row['propagation']}", flush=True)
        row["shared_4"] = shared(url, Path(args.dir), size)
        print(f"4 processes  {row['shared_4']}", flush=True)
        row["load"] = os.getloadavg()[0]
        figures["sizes"][size] = row
    print("\n== warm requests, all sizes in alternating rounds", flush=True)
    for size, values in warm({size: backend.url(size) for size in sizes}, factory).items():
        figures["sizes"][size]["warm"] = values
        print(f"{size:>9,}  {values}", flush=True)
    targets = Targets([])
    rows = figures["sizes"]
    first, last = rows[sizes[0]], rows[sizes[-1]]
    for size in sizes:
        targets.check(
            rows[size]["propagation"]["max_ms"] < 2000,
            f"{size:,}: propagation max {rows[size]['propagation']['max_ms']} ms (target < 2 s)",
        )
    if len(sizes) > 1:
        rss0, rss1 = first["startup"]["rss_mb_first"], last["startup"]["rss_mb_first"]
        targets.check(
            rss1 <= rss0 * 1.1 + 2,
            f"RSS after the first request {rss1} MB at {sizes[-1]:,} vs {rss0} MB at {sizes[0]:,}",
        )
        for key in ("warm_memo_cpu_us", "warm_no_memo_cpu_us"):
            a, b = first["warm"][key], last["warm"][key]
            targets.check(
                b <= a * 1.1,
                f"{key}: {b} us at {sizes[-1]:,} vs {a} us at {sizes[0]:,} (target within 10 %)",
            )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print("\nall targets met" if not targets.failures else f"\n{len(targets.failures)} FAIL")
    return 1 if targets.failures else 0


if __name__ == "__main__":
    sys.exit(main())
