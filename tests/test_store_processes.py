"""The SQLite store shared by several processes: changes propagate to
another process's gate (measured; the promise is 2 s), writers in two
processes, and a worker forked after the cache was used."""

from __future__ import annotations

import multiprocessing
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from certgate import CertGate, Reason, Tenant
from certgate.devpki import CA
from certgate.stores import open_registry
from tests.store_helpers import leaf_facts, new_store, url_of

ROOT = Path(__file__).resolve().parent.parent


def _worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store_worker", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class _Lines:
    """A worker's stdout lines, read by a thread (a hung worker fails the
    test after ``timeout`` instead of hanging it)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self._lines.put(line)

        threading.Thread(target=pump, daemon=True).start()

    def next(self, timeout: float = 30) -> list[str]:
        return self._lines.get(timeout=timeout).split()


def _stderr(proc: subprocess.Popen[str]) -> str:
    proc.kill()
    return proc.stderr.read()[-2000:] if proc.stderr is not None else ""


def test_changes_reach_another_process_within_two_seconds(tmp_path: Path) -> None:
    """Three changes of acme's trust (another root, the right root again,
    removed), each written here and seen by a gate in another process. The
    median latency must keep the 2 s promise (bench/bench_scale.py reports
    the distribution)."""
    store = new_store(tmp_path)
    right, wrong = CA.root("Acme Root"), CA.root("Other Root")
    store.put(Tenant("acme", ("pay.acme.test",), (right.cert,)))
    leaf = tmp_path / "leaf.der"
    leaf.write_bytes(right.issue("device").der)
    proc = _worker("watch", url_of(store), "pay.acme.test", str(leaf), "3")
    try:
        lines = _Lines(proc)
        assert lines.next() == ["ready", "None"]
        latencies = []
        expected = []
        for change in ("untrusted", "trusted", "removed"):
            time.sleep(0.3)  # the watcher settles on the current decision
            if change == "untrusted":
                store.put(Tenant("acme", ("pay.acme.test",), (wrong.cert,)))
                expected.append(Reason.UNTRUSTED_CHAIN.value)
            elif change == "trusted":
                store.put(Tenant("acme", ("pay.acme.test",), (right.cert,)))
                expected.append("None")
            else:
                store.remove("acme")
                expected.append(Reason.UNKNOWN_TENANT.value)
            written = time.monotonic()
            line = lines.next()
            assert line[:2] == ["changed", expected[-1]], (line, _stderr(proc))
            latencies.append(float(line[2]) - written)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert statistics.median(latencies) < 2.0, latencies


def test_writers_in_two_processes(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    procs = [_worker("write", url_of(store), prefix, "60") for prefix in ("a", "b")]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.split() == ["done", "60"]
    assert store.count() == 120
    assert store.change_position() == 120
    assert store.changes_since(0)[1] == frozenset(f"{p}{i}" for p in "ab" for i in range(60))


def _forked_child(url: str, leaf: bytes, queue: Any, go: Any) -> None:
    """In a forked worker: the inherited cache must start its own poller and
    see a change made after the fork."""

    class Leaf:
        der = leaf

    try:
        gate = _forked_gate[0]
        facts = leaf_facts("pay.acme.test", Leaf())  # type: ignore[arg-type]
        queue.put(("before", str(gate.decide(facts).reason)))
        go.wait(30)
        deadline = time.monotonic() + 20
        reason = gate.decide(facts).reason
        while reason is None and time.monotonic() < deadline:
            time.sleep(0.02)
            reason = gate.decide(facts).reason
        queue.put(("after", str(reason)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put(("error", repr(exc)))


_forked_gate: list[CertGate] = []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_worker_polls_for_itself(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    root = CA.root("Acme Root")
    store.put(Tenant("acme", ("pay.acme.test",), (root.cert,)))
    device = root.issue("device")
    gate = CertGate(
        open_registry(url_of(store), poll_interval=0.05),
        trusted_proxies=["10.0.0.0/8"],
        header_sources=["cloudflare"],
    )
    assert gate.decide(leaf_facts("pay.acme.test", device)).reason is None  # poller runs here
    _forked_gate[:] = [gate]
    context = multiprocessing.get_context("fork")
    queue, go = context.Queue(), context.Event()
    child = context.Process(target=_forked_child, args=(url_of(store), device.der, queue, go))
    child.start()
    try:
        assert queue.get(timeout=30) == ("before", "None")
        store.remove("acme")
        go.set()
        assert queue.get(timeout=30) == ("after", Reason.UNKNOWN_TENANT.value)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
        _forked_gate.clear()
    assert child.exitcode == 0
