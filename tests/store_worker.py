"""A worker process of the tenant store tests (and bench/bench_scale.py).

    python -m tests.store_worker watch URL HOST LEAF.der CHANGES
        a gate over the store at URL (a CachingRegistry, default polling);
        prints "ready REASON", then decides for HOST with the leaf as fast
        as it can and prints "changed REASON MONOTONIC" each time the
        decision's reason changes, until CHANGES changes were seen.
    python -m tests.store_worker write URL PREFIX COUNT
        puts COUNT tenants PREFIX0..PREFIXn (own root each), one write each;
        prints "done N".

``time.monotonic()`` is the system-wide monotonic clock on Linux, so the
printed times compare with the parent's.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from certgate import CertGate, Tenant
from certgate.devpki import CA
from certgate.devpki import IssuedCert as _IssuedCert
from certgate.stores import open_registry, open_store
from tests.store_helpers import leaf_facts


class _Leaf:
    """Only what leaf_facts() reads of an IssuedCert."""

    def __init__(self, der: bytes) -> None:
        self.der = der


def watch(url: str, host: str, leaf_path: str, changes: int) -> None:
    logging.getLogger("certgate").setLevel(logging.ERROR)  # a refusal per decision otherwise
    gate = CertGate(
        open_registry(url), trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"]
    )
    leaf: _IssuedCert = _Leaf(Path(leaf_path).read_bytes())  # type: ignore[assignment]
    facts = leaf_facts(host, leaf)
    reason = gate.decide(facts).reason
    print(f"ready {reason}", flush=True)
    seen = 0
    deadline = time.monotonic() + 120
    while seen < changes and time.monotonic() < deadline:
        now = gate.decide(facts).reason
        if now != reason:
            reason = now
            seen += 1
            print(f"changed {reason} {time.monotonic():.6f}", flush=True)
        time.sleep(0.001)


def write(url: str, prefix: str, count: int) -> None:
    store = open_store(url)
    for i in range(count):
        root = CA.root(f"{prefix} root {i}")
        store.put(Tenant(f"{prefix}{i}", (f"{prefix}{i}.test",), (root.cert,)))
    print(f"done {count}", flush=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["watch"] and len(argv) == 5:
        watch(argv[1], argv[2], argv[3], int(argv[4]))
        return 0
    if argv[:1] == ["write"] and len(argv) == 4:
        write(argv[1], argv[2], int(argv[3]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
