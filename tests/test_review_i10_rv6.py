"""Adversarial review of the tenant stores (issue 10, reviewer rv6): each
finding is a test that failed before its fix."""

from __future__ import annotations

import gc
import os
import signal
import sys
from pathlib import Path

import pytest

from certgate import Tenant
from certgate.devpki import CA
from certgate.stores import open_registry
from certgate.stores.sqlite import SqliteRegistry
from tests.store_helpers import new_store, url_of


@pytest.fixture(scope="module")
def roots() -> list[CA]:
    return [CA.root(f"Review rv6 Root {i}") for i in range(4)]


def _fds_on(path: Path) -> dict[int, str]:
    """This process's open descriptors on ``path`` and its -wal/-shm files."""
    found: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(path)):
            found[int(name)] = target
    return found


# -- fork safety (gunicorn --preload) -------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_opening_a_registry_leaves_no_connection_open(tmp_path: Path) -> None:
    """A preloading master (gunicorn --preload) opens the registry, then
    forks: an SQLite connection open at fork time is carried into every
    worker, which SQLite documents as a corruption risk. Opening a store
    (reader or writer) checks the schema and closes its connection again."""
    path = tmp_path / "tenants.db"
    SqliteRegistry(path, create=True)
    gc.collect()
    assert _fds_on(path) == {}
    registry = open_registry(url_of(SqliteRegistry(path)))
    gc.collect()
    assert _fds_on(path) == {}
    assert registry.stats().loads == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_closes_the_parents_connection(
    tmp_path: Path, roots: list[CA]
) -> None:
    """A connection the parent used before ``fork`` is neither used nor
    closed by the child (closing it releases POSIX locks and may checkpoint
    the WAL under the other processes): the child opens its own."""
    store = new_store(tmp_path)
    store.put(Tenant("a", ("a.test",), (roots[0].cert,)))
    reader = SqliteRegistry(store.path)
    assert reader.tenant_for_host("a.test") is not None  # a connection on this thread
    inherited = _fds_on(store.path)
    assert inherited
    pid = os.fork()
    if pid == 0:  # the child: exit status says what happened
        status = 1
        try:
            found = reader.tenant_for_host("a.test")
            gc.collect()
            still = _fds_on(store.path)
            ok = found is not None and all(still.get(fd) == t for fd, t in inherited.items())
            status = 0 if ok else 3
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert reader.tenant_for_host("a.test") is not None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_poll_lock_held_at_fork_does_not_hang_the_child(tmp_path: Path, roots: list[CA]) -> None:
    """A master whose poller was mid-poll when it forked (the store's poll
    lock held by a thread that does not exist in the child) must not leave
    the worker's change feed waiting on that lock forever (every lookup
    after max_stale would hang, then 503, for the worker's lifetime)."""
    store = new_store(tmp_path)
    store.put(Tenant("a", ("a.test",), (roots[0].cert,)))
    reader = SqliteRegistry(store.path)
    position = reader.change_position()
    with reader._poll_lock:  # as the parent's poller thread would, at fork time
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                signal.alarm(10)  # a hang ends the child with SIGALRM
                store.put(Tenant("b", ("b.test",), (roots[1].cert,)))
                _, changed = reader.changes_since(position)
                status = 0 if changed == frozenset({"b"}) else 3
            finally:
                os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
