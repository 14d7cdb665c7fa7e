"""Registry lookups with a deadline.

A trust registry backed by a database or a service can hang (a lost
connection, a lock, a dead peer without a TCP reset). certgate must then
refuse the request - ``503 trust_store_unavailable`` - instead of hanging
with it. :func:`bind_registry` turns a registry's two methods into callables
that give up after ``timeout`` seconds by raising
:class:`~certgate.errors.RegistryTimeout`:

* **in-memory registries** (``blocking = False``) are called inline, with no
  deadline and no overhead: they never wait;
* **caching registries** (:class:`~certgate.registry.CachedTrustRegistry`,
  such as :class:`~certgate.stores.caching.CachingRegistry`) answer a
  cache hit inline through their ``peek_*`` methods; only a miss takes the
  blocking path below;
* **blocking registries** (plain methods, the default for custom ones) run
  on a :class:`LookupPool` - a small pool of daemon threads owned by the
  gate - and the caller (a WSGI thread, or the event loop through
  ``asyncio.wrap_future``) waits at most ``timeout``;
* **coroutine registries** run under ``asyncio.timeout``: awaited directly
  by the ASGI path, through ``asgiref``'s ``async_to_sync`` by the WSGI path
  - unless the registry offers a ``sync_registry`` (a blocking view of the
  same data, :class:`~certgate.stores.async_caching.AsyncCachingRegistry`),
  which the sync path then runs on a :class:`LookupPool`; cache hits of
  either are answered inline through ``peek_*``.

What a deadline cannot do is stop the lookup itself. A thread stuck in a
blocking call stays stuck: the pool holds at most ``LOOKUP_THREADS`` of them,
so a hung store ties up that many threads and no more. While all of them are
stuck, up to ``MAX_BACKLOG`` further lookups wait in the pool's queue and
time out in turn (a 503 after ``timeout``: fail closed); past that a request
gets its 503 at once, so a flood cannot grow the queue, and a lookup whose
caller gave up before it started is dropped, not run. The threads are
daemon threads, so a stuck one never blocks the process from exiting, and
an idle one ends after ``IDLE_TIMEOUT`` seconds. A coroutine is cancelled
at the deadline; one that ignores cancellation, or blocks the event loop
without awaiting, cannot be bounded.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import math
import os
import queue
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import TypeVar, cast

from asgiref.sync import async_to_sync

from .errors import ConfigError, RegistryTimeout
from .registry import CachedTrustRegistry, Miss
from .tenant import Tenant

T = TypeVar("T")

DEFAULT_REGISTRY_TIMEOUT = 5.0
"""Seconds a registry lookup may take before the request gets a 503."""

MAX_REGISTRY_TIMEOUT = 3600.0
"""Upper bound of ``registry_timeout``: longer is a misconfiguration (no
client waits an hour), and far larger values overflow thread waits."""

LOOKUP_THREADS = 16
"""Threads of a gate's :class:`LookupPool`: concurrent blocking lookups."""

MAX_BACKLOG = 4 * LOOKUP_THREADS
"""Most lookups of one gate waiting for a free thread; beyond, a request gets
its 503 at once (see :class:`LookupPool`)."""

IDLE_TIMEOUT = 30.0
"""Seconds a lookup thread waits for work before it ends."""

SyncLookup = Callable[[str], Tenant | None]
AsyncLookup = Callable[[str], Awaitable[Tenant | None]]


def check_timeout(value: object) -> float:
    """``value`` as seconds; :class:`ConfigError` unless a number in
    (0, ``MAX_REGISTRY_TIMEOUT``]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"registry_timeout must be a number of seconds, not {value!r}")
    seconds = float(value)
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_REGISTRY_TIMEOUT):
        raise ConfigError(
            f"registry_timeout must be > 0 and <= {MAX_REGISTRY_TIMEOUT:g} seconds, not {value!r}"
        )
    return seconds


class _PoolState:
    """One process's view of a pool: queued lookups and thread counts, all
    guarded by ``cond``. Replaced whole after ``fork``."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.cond = threading.Condition(threading.Lock())
        self.jobs: deque[tuple[Future[object], Callable[[], object]]] = deque()
        self.threads = 0
        self.idle = 0


class LookupPool:
    """A bounded pool of daemon threads for blocking registry lookups.

    Threads start on demand, up to ``size``, and end after
    :data:`IDLE_TIMEOUT` seconds without work, so a gate that is dropped (a
    configuration reload, a test) leaves no thread behind. Unlike
    :class:`concurrent.futures.ThreadPoolExecutor` its threads are daemons,
    which are not joined at interpreter exit: a lookup stuck forever must not
    keep a server from shutting down.

    At most :data:`MAX_BACKLOG` lookups wait for a thread. A lookup whose
    caller gave up is dropped when the backlog is full; if it is still full
    of live lookups (every thread stuck on a hung store), :meth:`submit`
    raises :class:`queue.Full` at once rather than queue without bound -
    each queued lookup holds a copy of its request's context. A pool
    inherited through ``fork`` (a gunicorn worker of a preloading master)
    starts afresh, since the parent's threads do not exist in the child.
    """

    def __init__(
        self, size: int = LOOKUP_THREADS, name: str = "certgate-registry", *, backlog: int = 0
    ) -> None:
        self.size = size
        self.name = name
        self.backlog = backlog or MAX_BACKLOG
        self._fork_lock = threading.Lock()
        self._state = _PoolState()

    def _current(self) -> _PoolState:
        state = self._state
        if state.pid != os.getpid():
            with self._fork_lock:
                if self._state.pid != os.getpid():
                    self._state = _PoolState()
                state = self._state
        return state

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn()`` on a pool thread; its future. :class:`queue.Full`
        when :data:`MAX_BACKLOG` live lookups already wait for a thread."""
        future: Future[T] = Future()
        state = self._current()
        with state.cond:
            jobs = state.jobs
            if len(jobs) >= self.backlog:
                live = [job for job in jobs if not job[0].cancelled()]
                jobs.clear()
                jobs.extend(live)
                if len(jobs) >= self.backlog:
                    raise queue.Full
            jobs.append((cast("Future[object]", future), fn))
            if len(jobs) > state.idle and state.threads < self.size:
                state.threads += 1
                threading.Thread(
                    target=_work,
                    args=(state,),
                    name=f"{self.name}-{state.threads}",
                    daemon=True,
                ).start()
            state.cond.notify()
        return future


def _work(state: _PoolState) -> None:
    cond, jobs = state.cond, state.jobs
    while True:
        with cond:
            while not jobs:
                state.idle += 1
                cond.wait(IDLE_TIMEOUT)
                state.idle -= 1
                if not jobs:  # idle for IDLE_TIMEOUT (or woken for a job another took)
                    state.threads -= 1
                    return
            future, fn = jobs.popleft()
        if future.set_running_or_notify_cancel():  # False: the caller gave up already
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)
            else:
                future.set_result(result)
        del future, fn  # hold nothing of a finished lookup while idle


def wait_for(future: Future[T], timeout: float) -> T:
    """``future``'s result, waiting at most ``timeout`` seconds
    (:class:`RegistryTimeout` after; a future not started yet is cancelled)."""
    try:
        return future.result(timeout)
    except TimeoutError:
        # Either our wait ran out, or the lookup itself raised TimeoutError.
        if future.cancel() or not future.done():
            raise RegistryTimeout(timeout) from None
        return future.result()  # finished meanwhile: its result or its own error


def bound_blocking(
    fn: SyncLookup, pool: LookupPool, timeout: float
) -> tuple[SyncLookup, AsyncLookup]:
    """Sync and async callables running ``fn`` on ``pool``, each waiting at
    most ``timeout`` seconds."""

    def submit(key: str) -> Future[Tenant | None]:
        context = contextvars.copy_context()
        try:
            return pool.submit(functools.partial(context.run, fn, key))
        except queue.Full:  # every thread stuck, backlog full: no wait could end well
            raise RegistryTimeout(
                timeout,
                f"registry lookup refused without waiting: {pool.size} lookups stuck "
                f"and {pool.backlog} waiting",
            ) from None

    def call(key: str) -> Tenant | None:
        return wait_for(submit(key), timeout)

    async def acall(key: str) -> Tenant | None:
        return await _deadline(asyncio.wrap_future(submit(key)), timeout)

    return call, acall


def bound_coroutine(fn: AsyncLookup, timeout: float) -> tuple[SyncLookup, AsyncLookup]:
    """Sync (``async_to_sync``) and async callables awaiting ``fn`` for at
    most ``timeout`` seconds."""

    async def acall(key: str) -> Tenant | None:
        return await _deadline(fn(key), timeout)

    return async_to_sync(acall), acall


async def _deadline(awaitable: Awaitable[T], timeout: float) -> T:
    try:
        async with asyncio.timeout(timeout) as deadline:
            return await awaitable
    except TimeoutError:
        if deadline.expired():  # ours, not a TimeoutError the lookup raised itself
            raise RegistryTimeout(timeout) from None
        raise


def bind_registry(
    registry: object, timeout: float
) -> tuple[SyncLookup, SyncLookup, AsyncLookup | None, AsyncLookup | None]:
    """Sync callables for both lookups (by host, by tenant id), and async ones
    for the ASGI path - ``None`` where the registry says it never blocks (call
    it inline). A blocking registry gets a :class:`LookupPool` of its own."""
    by_host = getattr(registry, "tenant_for_host", None)
    by_id = getattr(registry, "tenant_by_id", None)
    if not callable(by_host) or not callable(by_id):
        raise ConfigError(
            "registry must implement tenant_for_host(host) and tenant_by_id(tenant_id)"
        )
    if inspect.iscoroutinefunction(by_host):
        s_host, a_host = bound_coroutine(cast("AsyncLookup", by_host), timeout)
        s_id, a_id = bound_coroutine(cast("AsyncLookup", by_id), timeout)
        blocking = getattr(registry, "sync_registry", None)
        if blocking is not None:  # a blocking view of the same cache (AsyncCachingRegistry)
            threads = LookupPool()
            s_host, _ = bound_blocking(blocking.tenant_for_host, threads, timeout)
            s_id, _ = bound_blocking(blocking.tenant_by_id, threads, timeout)
        if isinstance(registry, CachedTrustRegistry):
            s_host, a_host = _peeking(registry.peek_tenant_for_host, s_host, a_host)
            s_id, a_id = _peeking(registry.peek_tenant_by_id, s_id, a_id)
        return s_host, s_id, a_host, a_id
    if not getattr(registry, "blocking", True):
        return cast("SyncLookup", by_host), cast("SyncLookup", by_id), None, None
    threads = LookupPool()
    s_host, a_host = bound_blocking(cast("SyncLookup", by_host), threads, timeout)
    s_id, a_id = bound_blocking(cast("SyncLookup", by_id), threads, timeout)
    if isinstance(registry, CachedTrustRegistry):
        s_host, a_host = _peeking(registry.peek_tenant_for_host, s_host, a_host)
        s_id, a_id = _peeking(registry.peek_tenant_by_id, s_id, a_id)
    return s_host, s_id, a_host, a_id


def _peeking(
    peek: Callable[[str], Tenant | Miss | None], call: SyncLookup, acall: AsyncLookup
) -> tuple[SyncLookup, AsyncLookup]:
    """``call`` and ``acall`` answering from ``peek`` inline when it knows
    (a cache hit: no thread hop, nothing to wait for)."""

    def peeked(key: str) -> Tenant | None:
        found = peek(key)
        return call(key) if isinstance(found, Miss) else found

    async def apeeked(key: str) -> Tenant | None:
        found = peek(key)
        return await acall(key) if isinstance(found, Miss) else found

    return peeked, apeeked
