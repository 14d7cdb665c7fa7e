"""``certgate tenants restore`` (SQLite, in place, live) racing concurrent
writers: the change counter only ever moves forward, past both the store's
and the backup's history, so no cache is left at a position it already saw
with other contents; a running cache drops everything."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from certgate import Tenant
from certgate.devpki import CA
from certgate.registry import MISS
from certgate.stores.caching import CachingRegistry
from certgate.stores.sqlite import SqliteRegistry
from tests.store_helpers import new_store


@pytest.fixture(scope="module")
def roots() -> list[CA]:
    return [CA.root(f"Restore Root {i}") for i in range(8)]


def wait_for(predicate: object, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_restore_racing_writers_never_moves_the_counter_back(
    tmp_path: Path, roots: list[CA]
) -> None:
    store = new_store(tmp_path)
    for i in range(3):
        store.put(Tenant(f"t{i}", (f"t{i}.test",), (roots[i].cert,)))
    backup = tmp_path / "backup.db"
    store.backup(backup)  # at 3
    for n in range(6):  # the live store goes on: t0 changes 6 times (at 9)
        store.put(Tenant("t0", ("t0.test",), (roots[3 + n % 2].cert,)))
    cache = CachingRegistry(SqliteRegistry(store.path), poll_interval=0.02, max_stale=30.0)
    changed = cache.tenant_for_host("t0.test")
    assert changed is not None
    assert changed.roots == (roots[4].cert,)
    seen: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        writer = SqliteRegistry(store.path, busy_timeout=30.0)
        k = 0
        try:
            while not stop.is_set():
                writer.put(Tenant("w", ("w.test",), (roots[5 + k % 2].cert,)))
                k += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            writer.close()

    def watch() -> None:
        reader = SqliteRegistry(store.path)
        try:
            while not stop.is_set():
                seen.append(reader.change_position())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            reader.close()

    threads = [threading.Thread(target=t, daemon=True) for t in (write, watch)]
    for thread in threads:
        thread.start()
    try:
        assert wait_for(lambda: len(seen) > 20 and seen[-1] > 12), (errors, seen[-3:])
        before = max(seen)
        store.restore(backup)
        after = store.change_position()
        assert wait_for(lambda: seen[-1] > after), (errors, seen[-3:], after)  # writes go on
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors, errors
    assert seen == sorted(seen), "the counter went back"
    assert after > before
    # a reader at any position it held before the restore: "everything changed"
    fresh = SqliteRegistry(store.path)
    held = sorted(p for p in set(seen) if p <= before)  # seen before the restore began
    for position in [*held[:: max(1, len(held) // 20)], held[-1]]:
        assert fresh.changes_since(position)[1] is None, position
    # the restored content, and the running cache dropped what it held
    assert wait_for(lambda: cache.peek_tenant_by_id("t0") is MISS)
    restored = cache.tenant_for_host("t0.test")
    assert restored is not None
    assert restored.roots == (roots[0].cert,)
    assert fresh.get("w") is not None  # written after the restore
    fresh.close()
    cache.close()


def test_restore_of_a_backup_ahead_of_the_store(tmp_path: Path, roots: list[CA]) -> None:
    """A backup whose counter is past the live store's: past that one too."""
    other = new_store(tmp_path, "other.db")
    for i in range(7):
        other.put(Tenant(f"o{i}", (f"o{i}.test",), (roots[i].cert,)))
    backup = tmp_path / "other-backup.db"
    other.backup(backup)
    store = new_store(tmp_path)
    store.put(Tenant("t0", ("t0.test",), (roots[0].cert,)))
    store.restore(backup)
    assert store.change_position() == 8
    assert store.count() == 7
    assert store.changes_since(1) == (8, None)
    assert store.changes_since(8) == (8, frozenset())
    store.put(Tenant("t9", ("t9.test",), (roots[7].cert,)))
    assert store.changes_since(8) == (9, frozenset({"t9"}))
