"""Reloading a gate's TOML file without a restart, and watching CA expiry.

A gate made by :meth:`CertGate.from_toml <certgate.gate.CertGate.from_toml>`
has a :class:`Reloader`. A reload

1. reads the TOML file and every file it names (CA and CRL files, the proxy
   CA) into a new :class:`~certgate.config.TomlRegistry` and new
   :class:`~certgate.gate.GateSettings` - or, for a file whose
   ``[certgate].registry`` names a tenant store, keeps the registry it has
   when the URL and ``[certgate.registry_cache]`` are the same (same
   connections, same cache), else opens the new store (the old one is
   closed after the swap; see :func:`~certgate.config.load_gate_config`);
2. builds a new :class:`~certgate.gate.GateSnapshot` from them - every
   check of a first load runs again (unknown keys, CA and CRL vetting,
   shared anchors, header-trust combinations, routes, ...);
3. swaps it in with one assignment. A request reads its gate's snapshot
   once, so it is decided wholly under the old configuration or wholly
   under the new one. The CRL refresher moves to the new registry with the
   CRLs it fetched.

Any failure in 1-2 leaves the gate as it was: the error is logged
(``ERROR``), observed as a :class:`~certgate.events.ReloadEvent` with
``ok=False``, and raised by :meth:`CertGate.reload
<certgate.gate.CertGate.reload>` (never by the file watch or a signal).

**What is kept across a reload.** When ``[certgate]`` is unchanged (the
table as parsed, and no ``proxy_ca`` file whose contents could have
changed), the settings' parts are kept as they are - header trust, rollout
(with its run-time changes), policy, refusal format and the verification
cache, whose entries are keyed by each tenant's ``trust_id`` (its CAs, CRLs
and CRL settings) and so never answer for changed trust. When it changed,
every part is new, the verification cache starts empty, and the run-time
changes made on the old rollout (``gate.rollout.set_route(...)``) are
applied again on top of the file's routes. The decision memo is per
snapshot: it always starts empty. Overrides passed to ``from_toml`` and
values assigned on the gate (``gate.policy = ...``) stay in force.

**When.** :meth:`Reloader.reload` on request (``gate.reload()``); a file
watch (``watch_interval``): every interval certgate's monitor thread
compares the size, mtime and inode of the TOML file and every file it named
at the last good load (as named: symbolic links followed), and reloads when
one differs or was modified too recently to trust its stamp
(:data:`RACY_SECONDS`); a set of files that failed to load - with every
file the broken TOML names - is not tried again until one changes; a signal
(``gate.reload_on_signal()``, main thread only): the handler only queues
the reload for the monitor thread. The monitor thread - one per process, a
daemon, started by the first gate that needs it and again in a child after
``fork()`` - also checks tenant CA and CRL expiry every
``expiry_check_interval`` seconds (and at every load and reload) with
:func:`certgate.expiry.ca_expiry`, handing a
:class:`~certgate.events.TrustExpiryEvent` to the gate's observers. No file
check, watched or signalled reload or periodic expiry check runs on a
request or the event loop (``gate.reload()`` runs where it is called:
``await gate.areload()`` from a coroutine; the first expiry check runs when
a middleware is built: at start-up, or for Starlette's ``add_middleware``
at the app's first ASGI call - a request when there is no lifespan); each
process (gunicorn or uvicorn worker) watches for itself. The expiry checks
of a tenant store (a paged scan of the whole store,
:mod:`certgate.stores.scan`) always run on a thread the monitor thread
starts for them (one scan at a time per gate), the load-time and reload
ones included: neither start-up, nor a reload, nor the monitor thread's
file watches and signal reloads wait for them.
A file watch never looks at a store's database: tenants changed there
reach the gate through the store's change feed, without a reload.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import logging
import math
import os
import queue
import signal
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from . import config as _config
from .config import TomlRegistry
from .errors import ConfigError
from .events import ReloadEvent, TrustExpiry, TrustExpiryEvent
from .expiry import ExpiryItem, ca_expiry

if TYPE_CHECKING:
    from .gate import CertGate, GateSnapshot

logger = logging.getLogger("certgate")

DEFAULT_EXPIRY_CHECK_INTERVAL = 86400.0
"""Seconds between periodic CA and CRL expiry checks (a day)."""

MIN_INTERVAL = 0.1
MAX_INTERVAL = 31 * 86400.0

INTERVAL_KEYS = ("watch_interval", "expiry_check_interval")
"""``[certgate]`` keys the reloader reads (not settings of a snapshot)."""

_NOT_COMPARED = frozenset(
    {
        *INTERVAL_KEYS,
        "expiry_critical_days",
        "crl_warning_days",
        "crl_critical_days",
        "registry",  # where the tenants are, not a part of the settings
        "registry_cache",
    }
)
"""``[certgate]`` keys whose change keeps the settings' parts (see the module docs)."""

_MAX_EXPIRY_DAYS = 36500.0

RACY_SECONDS = 2.0
"""A watched file modified less than this long before its stamp was taken
may be rewritten in place, with the same size, within the same tick of the
file system's timestamps (a jiffy on ext4, a second on ext3 and some NFS
servers, two on FAT): size, mtime and inode would all stay the same. The
watch then reloads once more when the newest file is this old."""

Stamp = tuple[int, int, int, int] | tuple[str]
"""A file's (device, inode, size, mtime in ns), or ``(error name,)``."""


def file_stamps(paths: Iterable[Path]) -> dict[Path, Stamp]:
    """The :data:`Stamp` of each of ``paths`` (``os.stat``, symbolic links
    followed: a ConfigMap's swapped ``..data`` link changes the inode)."""
    stamps: dict[Path, Stamp] = {}
    for path in paths:
        try:
            info = os.stat(path)
        except OSError as exc:
            stamps[path] = (type(exc).__name__,)
        else:
            stamps[path] = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    return stamps


def recheck_time(stamps: Mapping[Path, Stamp]) -> int | None:
    """When (``time.time_ns()``) a watch should reload ``stamps``' files
    once more although they look unchanged (see :data:`RACY_SECONDS`), or
    ``None`` when none was modified that recently."""
    newest = max((s[3] for s in stamps.values() if len(s) == 4), default=None)
    if newest is None:
        return None
    at = newest + int(RACY_SECONDS * 1e9)
    return at if time.time_ns() < at else None


def check_interval(name: str, value: object) -> float:
    """``value`` as seconds: 0 (off) or from 0.1 to 31 days, else
    :class:`ConfigError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(f"{name} must be a number of seconds, not {value!r:.40}")
    seconds = float(value)
    if seconds != 0 and not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        raise ConfigError(
            f"{name} must be 0 (off) or from {MIN_INTERVAL:g} to {MAX_INTERVAL:.0f} seconds, "
            f"not {value!r:.40}"
        )
    return seconds


def _pop_intervals(kwargs: dict[str, Any], where: str) -> tuple[float, float]:
    watch = check_interval(f"{where}watch_interval", kwargs.pop("watch_interval", 0))
    expiry = check_interval(
        f"{where}expiry_check_interval",
        kwargs.pop("expiry_check_interval", DEFAULT_EXPIRY_CHECK_INTERVAL),
    )
    return watch, expiry


def _compared(section: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k not in _NOT_COMPARED}


def _trust_expiry(item: ExpiryItem) -> TrustExpiry:
    return TrustExpiry(
        tenant=item.tenant_id,
        kind=item.kind,
        subject=item.subject,
        fingerprint=item.fingerprint_sha256,
        not_after=item.not_after.isoformat(),
        not_after_ts=item.not_after.timestamp(),
        days_left=round(item.days_left, 2),
        level=item.level,
    )


MAX_STORE_EXPIRY_ITEMS = 10_000
"""Most late items an expiry check of a tenant store hands to the observers
(the soonest; the rest are counted in ``omitted``): a CA shared by a
million tenants must not make a million log lines and metric series."""


class ExpiryLevels(Protocol):
    """The four expiry thresholds of a gate (a :class:`~certgate.gate.CertGate`
    or one of its snapshots)."""

    @property
    def expiry_warning_days(self) -> float: ...

    @property
    def expiry_critical_days(self) -> float: ...

    @property
    def crl_warning_days(self) -> float: ...

    @property
    def crl_critical_days(self) -> float: ...


@dataclass(frozen=True)
class ExpiryReport:
    """What :func:`expiry_report` found: ``items`` soonest first,
    ``omitted`` late items left out, and the CA thresholds used."""

    items: list[ExpiryItem]
    omitted: int
    warning_days: float
    critical_days: float


def expiry_report(
    registry: object, levels: ExpiryLevels, *, now: dt.datetime | None = None
) -> ExpiryReport:
    """The CAs and CRLs of ``registry``'s tenants at ``levels``' thresholds
    (:func:`~certgate.expiry.ca_expiry`), soonest first.

    A registry that lists its tenants (``tenants()``: TOML, in memory) gives
    every item, ``ok`` ones included. A tenant store (directly or behind a
    :class:`~certgate.stores.caching.CachingRegistry`) is scanned in pages
    (:func:`certgate.stores.scan.store_expiry`) and gives only the late
    items, at most :data:`MAX_STORE_EXPIRY_ITEMS`. Any other registry:
    :class:`ConfigError`."""
    warning = min(levels.expiry_warning_days, _MAX_EXPIRY_DAYS)
    critical = min(levels.expiry_critical_days, warning)
    thresholds: dict[str, Any] = {
        "now": now,
        "warning_days": warning,
        "critical_days": critical,
        "crl_warning_days": levels.crl_warning_days,
        "crl_critical_days": levels.crl_critical_days,
    }
    tenants = getattr(registry, "tenants", None)
    if callable(tenants):
        items = ca_expiry(list(tenants()), **thresholds)
        return ExpiryReport(items, 0, warning, critical)
    from .stores.scan import store_expiry, store_of  # noqa: PLC0415 - stores only

    store = store_of(registry)
    if store is None:
        raise ConfigError(
            "an expiry check needs a registry that lists its tenants (tenants()) or a tenant "
            f"store; {type(registry).__name__} is neither"
        )
    seen = 0

    def counted() -> Iterator[ExpiryItem]:
        nonlocal seen
        for item in store_expiry(store, **thresholds):
            seen += 1
            yield item

    soonest = heapq.nsmallest(MAX_STORE_EXPIRY_ITEMS, counted(), key=_expiry_order)
    return ExpiryReport(soonest, seen - len(soonest), warning, critical)


def _expiry_order(item: ExpiryItem) -> tuple[dt.datetime, str, str]:
    return item.not_after, item.tenant_id, item.kind


def check_expiry(snapshot: GateSnapshot, trigger: str, config: str = "") -> TrustExpiryEvent:
    """Check every CA of ``snapshot``'s tenants at the levels of its
    ``expiry_warning_days`` and ``expiry_critical_days``, and every CRL's
    nextUpdate at ``crl_warning_days`` and ``crl_critical_days``
    (:func:`expiry_report`); observe and return the result. A tenant store
    is scanned in pages in the calling thread (for the load-time, reload
    and periodic checks: a scan thread of the gate's reloader): see
    :mod:`certgate.stores.scan`."""
    report = expiry_report(snapshot.registry, snapshot)
    items = sorted(report.items, key=_expiry_order)
    event = TrustExpiryEvent(
        items=tuple(_trust_expiry(item) for item in items),
        warning_days=report.warning_days,
        critical_days=report.critical_days,
        trigger=trigger,
        config=config,
        at=time.time(),
        omitted=report.omitted,
    )
    snapshot.observers.trust_expiry(event)
    return event


class Reloader:
    """Reloads one gate from its TOML file (see the module docstring).

    Made by :meth:`load` (what ``CertGate.from_toml`` calls); reached
    through the gate (``gate.reload()``, ``gate.watch()``,
    ``gate.reload_on_signal()``, ``gate.close()``).
    """

    def __init__(  # noqa: PLR0917 - made by load() only
        self,
        gate: CertGate,
        path: Path,
        overrides: Mapping[str, Any],
        files: Iterable[Path],
        section: Mapping[str, Any],
        stamps: Mapping[Path, Stamp],
        intervals: tuple[float, float],
    ) -> None:
        self.gate = gate
        self.path = path
        self.overrides = {k: v for k, v in overrides.items() if k != "observers"}
        """What ``from_toml`` was given (and what was assigned on the gate
        since), applied over every reloaded file."""
        self.files: tuple[Path, ...] = tuple(files)
        self._section = _compared(section)
        self._proxy_ca = "proxy_ca" in section
        self._stamps = dict(stamps)
        self._failed: dict[Path, Stamp] | None = None
        self._recheck_at = recheck_time(self._stamps)
        self._lock = threading.RLock()  # an observer of a reload may call reload()
        self.watch_interval, self.expiry_interval = intervals
        now = time.monotonic()
        self._next_watch = now + self.watch_interval
        self._next_expiry = now + self.expiry_interval
        self._closed = False
        self._signals = set()
        self._started = False

    @classmethod
    def load(
        cls, gate_class: type[CertGate], path: str | os.PathLike[str], overrides: Mapping[str, Any]
    ) -> CertGate:
        """Load ``path`` into a new gate of ``gate_class`` with its reloader,
        and observe the load. Monitoring starts with :meth:`start`."""
        start = time.perf_counter()
        file = Path(path)
        before = file_stamps((file,))
        config = _config.load_gate_config(file)
        kwargs: dict[str, Any] = {**config.gate_kwargs, **overrides}
        try:
            intervals = _pop_intervals(kwargs, f"{file}: [certgate].")
            gate = gate_class(config.registry, **kwargs)
        except BaseException:
            _config.close_registry(config.registry)
            raise
        stamps = {**file_stamps(config.files), **before}
        reloader = cls(gate, file, overrides, config.files, config.section, stamps, intervals)
        gate._reloader = reloader
        reloader._observe(True, "load", None, True, start)
        return gate

    def start(self, *, expiry: bool = True) -> None:
        """Start monitoring (once; later calls do nothing): check expiry now
        (with ``expiry``; else never) and hand the file watch and periodic
        expiry checks to the monitor thread. certgate's middlewares call it
        (through :meth:`CertGate.start_monitor
        <certgate.gate.CertGate.start_monitor>`) when they are built around
        the gate, so tools that only load a file start no thread."""
        if self._started:
            return
        self._started = True
        if not expiry:
            self._expiry_on = False
            self.expiry_interval = 0.0
        else:
            self._check_expiry("load")
        self._next_watch = time.monotonic() + self.watch_interval
        self._next_expiry = time.monotonic() + self.expiry_interval
        if self.watch_interval or self.expiry_interval or self._expiry_pending:
            MONITOR.add(self)

    # -- reloading --------------------------------------------------------

    def reload(self, trigger: str) -> ReloadEvent:
        """Reload now (see the module docstring); raises
        :class:`ConfigError` when the files do not load."""
        with self._lock:
            start = time.perf_counter()
            before = file_stamps(self.files)
            try:
                snapshot, files, section, changed = self._build()
            except Exception as exc:  # any failure keeps the last good state
                self._failed = self._failed_stamps(before)
                self._recheck_at = recheck_time(self._failed)
                why = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, ConfigError):
                    logger.error("certgate: reload of %s raised", self.path, exc_info=exc)
                self._observe(False, trigger, why[:2000], False, start)
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(f"{self.path}: reload failed: {why}") from exc
            old = self.gate.snapshot
            self.gate.snapshot = snapshot  # the swap: the next request reads the new snapshot
            if snapshot.registry is not old.registry:
                if isinstance(snapshot.registry, TomlRegistry) and isinstance(
                    old.registry, TomlRegistry
                ):
                    snapshot.registry.adopt(old.registry)
                # another store (URL or cache options changed), or TOML <-> store: the
                # old one's poller and connections go (a TOML registry's CRL refresher
                # was adopted above, or stops here)
                _config.close_registry(old.registry)
            self.files = files
            self._section = _compared(section)
            self._proxy_ca = "proxy_ca" in section
            self._stamps = {**file_stamps(files), **{p: s for p, s in before.items() if p in files}}
            self._failed = None
            self._recheck_at = recheck_time(self._stamps)
            event = self._observe(True, trigger, None, changed, start)
        if self._expiry_wanted:
            self._check_expiry("reload")
        return event

    @property
    def _expiry_wanted(self) -> bool:
        """Whether this gate reports expiry (started, and not a handshake gate)."""
        return self._started and self._expiry_on

    _expiry_on = True

    def _build(self) -> tuple[GateSnapshot, tuple[Path, ...], Mapping[str, Any], bool]:
        """The new snapshot (not yet swapped in), the files it was read from,
        its ``[certgate]`` table, and whether the settings changed."""
        from .gate import GateSettings, GateSnapshot  # noqa: PLC0415 - gate imports this module

        old = self.gate.snapshot
        config = _config.load_gate_config(self.path, successor_of=old.registry)
        try:
            kwargs: dict[str, Any] = {**config.gate_kwargs, **self.overrides}
            intervals = _pop_intervals(kwargs, f"{self.path}: [certgate].")
            verification = kwargs.pop("verification", None)
            settings = GateSettings(**kwargs)
            changed = self._proxy_ca or _compared(config.section) != self._section
            snapshot = GateSnapshot(
                config.registry,
                settings,
                observers=self.gate.observers,
                observed_allows=old._observed_allows,
                version=old.version + 1,
                reuse=None if changed else old,
                handle=self.gate,
            )
            if changed:
                snapshot.rollout.replay(old.rollout)
            if verification is not None:
                snapshot.verification = verification
        except BaseException:
            if config.registry is not old.registry:  # never the registry in use
                _config.close_registry(config.registry)
            raise
        self.set_watch(intervals[0])
        if self._expiry_on:
            self._set_expiry_interval(intervals[1])
        return snapshot, config.files, config.section, changed

    def override(self, **changes: Any) -> None:
        """Apply ``changes`` (assigned on the gate) to its current snapshot,
        and keep them over every reloaded file."""
        with self._lock:
            self.overrides.update(changes)
            self.gate.snapshot = self.gate.snapshot.derive(**changes)

    def _observe(
        self, ok: bool, trigger: str, error: str | None, changed: bool, start: float
    ) -> ReloadEvent:
        state = self.gate.snapshot
        tenants = getattr(state.registry, "tenants", None)
        event = ReloadEvent(
            ok=ok,
            trigger=trigger,
            config=str(self.path),
            version=state.version,
            error=error,
            settings_changed=changed,
            tenants=len(tenants()) if callable(tenants) else 0,
            duration_s=time.perf_counter() - start,
            at=time.time(),
        )
        state.observers.reloaded(event)
        return event

    _expiry_pending: str | None = None
    """The trigger of an expiry check of a tenant store queued for the
    monitor thread (``None``: none)."""

    _scan: threading.Thread | None = None
    """The thread scanning a tenant store for expiry (``None``: none)."""

    _scan_again: str | None = None
    """The trigger of a store check asked for while :attr:`_scan` runs."""

    def _check_expiry(self, trigger: str, *, queued: bool = False) -> None:
        """Check expiry now - or, for a tenant store (a scan of the whole
        store: about a minute of CPU at a million tenants, or a wait on a
        locked table), queue it for the monitor thread, which runs it on a
        thread of its own (:meth:`_scan_store`): neither start-up, nor a
        reload, nor the file watches and signal reloads the monitor thread
        runs wait for it."""
        if not callable(getattr(self.gate.snapshot.registry, "tenants", None)):
            if queued:
                self._scan_store(trigger)
            else:
                self._expiry_pending = trigger
                MONITOR.add(self)
            return
        self._run_expiry(trigger)

    def _scan_store(self, trigger: str) -> None:
        """Start the expiry scan of a tenant store on a daemon thread, one at
        a time per gate (asked for while one runs: once more after it)."""
        with _SCAN_LOCK:
            running = self._scan
            if running is not None and running.is_alive():
                self._scan_again = trigger
                return
            thread = threading.Thread(
                target=self._scan_loop, args=(trigger,), name="certgate-expiry-scan", daemon=True
            )
            self._scan = thread
        thread.start()

    def _scan_loop(self, trigger: str) -> None:
        next_trigger: str | None = trigger
        while next_trigger is not None and not self._closed:
            self._run_expiry(next_trigger)
            with _SCAN_LOCK:
                next_trigger, self._scan_again = self._scan_again, None

    def _run_expiry(self, trigger: str) -> None:
        snapshot = self.gate.snapshot
        try:
            check_expiry(snapshot, trigger, str(self.path))
        except Exception as exc:  # monitoring never breaks a load
            if self._closed or snapshot.registry is not self.gate.snapshot.registry:
                return  # the store was closed under the scan: gate.close(), or a reload
                # that replaced it (and queued a check of the new one)
            logger.error("certgate: CA expiry check failed: %r", exc, exc_info=exc)

    # -- watching ---------------------------------------------------------

    def set_watch(self, interval: float) -> None:
        """Check the files every ``interval`` seconds (0: stop)."""
        seconds = check_interval("watch_interval", interval)
        if seconds != self.watch_interval:
            self.watch_interval = seconds
            self._next_watch = time.monotonic() + seconds
            self._schedule()

    def _set_expiry_interval(self, interval: float) -> None:
        if interval != self.expiry_interval:
            self.expiry_interval = interval
            self._next_expiry = time.monotonic() + interval
            self._schedule()

    def _schedule(self) -> None:
        if self._started and not self._closed and (self.watch_interval or self.expiry_interval):
            MONITOR.add(self)
        else:
            MONITOR.wake()

    def _failed_stamps(self, before: Mapping[Path, Stamp]) -> dict[Path, Stamp]:
        """The stamps of a set of files that failed to load: ``before`` (the
        last good load's files, taken before the attempt) and every file the
        TOML file names now - a file it names that was missing or broken is
        watched too, so its appearing or changing triggers the next try."""
        try:
            named = _config.referenced_files(self.path, _config._read_toml(self.path))
        except Exception:  # noqa: BLE001 - an unreadable TOML file names nothing
            named = ()
        return {**file_stamps(p for p in named if p not in before), **before}

    def changed(self) -> bool:
        """Whether a watched file differs from the last good load (after a
        failed load: from the files that failed, the newly named ones
        included), or was modified so shortly before it was stamped that an
        unseen rewrite is possible (see :data:`RACY_SECONDS`)."""
        failed = self._failed
        if failed is not None:
            differs = file_stamps(failed) != failed
        else:
            differs = file_stamps(self.files) != self._stamps
        recheck = self._recheck_at
        return differs or (recheck is not None and time.time_ns() >= recheck)

    def due(self) -> float:
        """When :meth:`tick` has work next (``math.inf``: never)."""
        if self._expiry_pending is not None:
            return -math.inf
        due = math.inf
        if self.watch_interval:
            due = self._next_watch
        if self.expiry_interval:
            due = min(due, self._next_expiry)
        return due

    def tick(self, now: float) -> None:
        """The monitor thread's turn: check the files and expiry when due."""
        if self._closed:
            return
        pending, self._expiry_pending = self._expiry_pending, None
        if pending is not None:
            self._check_expiry(pending, queued=True)
        if self.watch_interval and now >= self._next_watch:
            self._next_watch = now + self.watch_interval
            if self.changed():
                self.reload_quietly("watch")
        if self.expiry_interval and now >= self._next_expiry:
            self._next_expiry = now + self.expiry_interval
            self._check_expiry("periodic", queued=True)

    def reload_quietly(self, trigger: str) -> None:
        """:meth:`reload`, a failure only logged and observed (the monitor's way)."""
        with contextlib.suppress(ConfigError):  # logged and observed by reload()
            self.reload(trigger)

    _signals: set[int]

    def on_signal(self, signum: int | None) -> None:
        """Reload on ``signum`` (default ``SIGHUP``; again for the same
        signal: nothing more); see
        :meth:`CertGate.reload_on_signal <certgate.gate.CertGate.reload_on_signal>`."""
        number = signum if signum is not None else getattr(signal, "SIGHUP", None)
        if number is None:
            raise ConfigError("this platform has no SIGHUP: pass another signal number")
        if threading.current_thread() is not threading.main_thread():
            raise ConfigError(
                "reload_on_signal must be called from the main thread (Python installs "
                "signal handlers there only); under a server that loads the app elsewhere, "
                "use the file watch (watch_interval) instead"
            )
        if number in self._signals:
            return  # already reloading on it: a second handler would reload twice
        self._signals.add(number)
        previous = signal.getsignal(number)
        ref = weakref.ref(self)

        def handler(sig: int, frame: FrameType | None) -> None:
            MONITOR.request(ref)  # reentrant-safe: the reload runs in the monitor thread
            if callable(previous):
                previous(sig, frame)

        signal.signal(number, handler)
        MONITOR.start()

    def close(self) -> None:
        """Stop the file watch and the periodic expiry checks."""
        self._closed = True
        MONITOR.discard(self)

    def _after_fork(self) -> None:
        self._lock = threading.RLock()


def handshake_gate(path: str | os.PathLike[str]) -> CertGate:
    """A gate loaded from ``path`` only for its registry - what per-tenant
    handshakes given a TOML path use (:mod:`certgate.servers.tenant_contexts`):
    it follows the file like the app's gate (``watch_interval``) but does
    not check expiry (the app's gate reports that)."""
    from .gate import CertGate  # noqa: PLC0415 - gate imports this module

    gate = Reloader.load(CertGate, path, {})
    assert gate._reloader is not None
    gate._reloader.start(expiry=False)
    return gate


_SCAN_LOCK = threading.Lock()
"""Guards :attr:`Reloader._scan` and :attr:`Reloader._scan_again` (held briefly)."""


def _new_scan_lock() -> None:
    global _SCAN_LOCK  # noqa: PLW0603 - a forked child must not inherit a held lock
    _SCAN_LOCK = threading.Lock()


class _Monitor:
    """certgate's one monitor thread per process: file watches, queued
    signal reloads and periodic expiry checks of every :class:`Reloader`
    that has any (held weakly: a gate that is gone is forgotten)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[weakref.ref[Reloader] | None] = queue.SimpleQueue()
        self._items: weakref.WeakSet[Reloader] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, reloader: Reloader) -> None:
        with self._lock:
            self._items.add(reloader)
        self.start()
        self.wake()

    def discard(self, reloader: Reloader) -> None:
        with self._lock:
            self._items.discard(reloader)

    def wake(self) -> None:
        """Have the thread look at the schedules again."""
        self._queue.put(None)

    def request(self, ref: weakref.ref[Reloader]) -> None:
        """Queue a reload (``SimpleQueue.put`` may be called from a signal handler)."""
        self._queue.put(ref)

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="certgate-monitor", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            due = self._turn()
            wait = None if due == math.inf else max(0.0, due - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            self._requested(item)

    def _turn(self) -> float:
        """Run what is due; when the next task is (a function, so no
        reloader stays referenced while the thread waits)."""
        now = time.monotonic()
        with self._lock:
            items = list(self._items)
        due = math.inf
        for reloader in items:
            try:
                if reloader.due() <= now:
                    reloader.tick(now)
                due = min(due, reloader.due())
            except Exception:  # a bug: log it, keep monitoring
                logger.exception("certgate: monitor task failed")
        return due

    def _requested(self, item: weakref.ref[Reloader] | None) -> None:
        target = item() if item is not None else None
        if target is not None and not target._closed:
            try:
                target.reload_quietly("signal")
            except Exception:  # a bug: log it, keep monitoring
                logger.exception("certgate: signal reload failed")

    def _after_fork(self) -> None:
        """In a child: new lock, queue and thread (the parent's are not ours)."""
        self._lock = threading.Lock()
        self._queue = queue.SimpleQueue()
        self._thread = None
        for reloader in list(self._items):
            reloader._after_fork()
        if len(self._items):
            self.start()


MONITOR = _Monitor()
"""The process's monitor (see :class:`_Monitor`)."""

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=MONITOR._after_fork)
    os.register_at_fork(after_in_child=_new_scan_lock)


__all__ = [
    "DEFAULT_EXPIRY_CHECK_INTERVAL",
    "MAX_STORE_EXPIRY_ITEMS",
    "MONITOR",
    "ExpiryReport",
    "Reloader",
    "check_expiry",
    "check_interval",
    "expiry_report",
    "file_stamps",
    "handshake_gate",
]
