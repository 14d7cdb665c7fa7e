"""The SQLite store in a worker forked after the cache was used (gunicorn
--preload): the inherited cache polls for itself.

Changes reaching another process's gate and writers in two processes run
against both backends in tests/test_store_backends.py."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from certgate import CertGate, Reason, Tenant
from certgate.devpki import CA
from certgate.stores import open_registry
from tests.store_helpers import leaf_facts, new_store, url_of


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
