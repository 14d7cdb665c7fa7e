"""Fetching tenants' CRLs from HTTP(S) URLs, off the request path.

A :class:`CrlRefresher` watches an :class:`~certgate.registry.InMemoryRegistry`
(the TOML registry starts one by itself when a tenant has ``crl_urls``). In
a daemon thread it fetches each URL of each tenant every ``crl_refresh``
seconds with ``urllib`` (at most :data:`~certgate.crl.MAX_CRL_BYTES` bytes,
``timeout`` seconds for the whole download, ``http``/``https`` only,
redirects included), vets the CRL against the tenant's CAs, and when it
changed swaps in a new tenant (:meth:`Tenant.with_fetched_crls
<certgate.tenant.Tenant.with_fetched_crls>`) with
:meth:`~certgate.registry.InMemoryRegistry.swap`: a new immutable trust
snapshot, a new ``trust_id`` and a new registry change token, so no cached
verification or remembered decision of the old CRL is used again.

A failed fetch (network error, HTTP status other than 200, too large, not a
CRL, failed vetting, or a CRL Number lower than the last good one's - a
replayed old CRL) is logged and the last good CRL is kept; once that CRL is
past its nextUpdate, requests fail closed (``revocation_unavailable``)
unless the tenant says ``crl_stale = "warn"``. Nothing here runs on a
request: requests only read the tenant snapshot the registry holds.

Each process fetches for itself: after a ``fork()`` a started refresher
starts its thread again in the child (gunicorn workers, say).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import logging
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Iterable
from typing import IO, Any

from cryptography import x509

from .crl import MAX_CRL_BYTES, load_crls, vet_crl
from .errors import ConfigError
from .registry import InMemoryRegistry
from .tenant import Tenant

logger = logging.getLogger("certgate")

Fetch = Callable[[str], bytes]
"""Fetches a URL's bytes or raises (any exception is a failed fetch)."""

DEFAULT_TIMEOUT = 10.0
"""Seconds one CRL download may take, in all."""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: object,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise ValueError("a CRL URL redirected to a scheme other than http/https")
        return super().redirect_request(req, fp, code, msg, headers, newurl)  # type: ignore[arg-type]


class _Watchdog:
    """Shuts down every socket of one download when its deadline passes.

    A socket timeout bounds each read, not the download: a server that
    sends a byte every few seconds (headers or body) would hold the refresh
    thread - and so every tenant's CRL refresh - for days. ``shutdown()``
    from the timer thread makes the blocked read return at once.
    """

    def __init__(self, timeout: float) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.fired = False
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket | None) -> None:
        """Shut ``sock`` down at the deadline (at once if it has passed)."""
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:
            _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed: nothing to stop
        sock.shutdown(socket.SHUT_RDWR)


class _WatchedHTTP(http.client.HTTPConnection):
    def __init__(self, watchdog: _Watchdog, host: str, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._watchdog = watchdog

    def connect(self) -> None:
        super().connect()
        self._watchdog.watch(self.sock)


class _WatchedHTTPS(http.client.HTTPSConnection):
    def __init__(self, watchdog: _Watchdog, host: str, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._watchdog = watchdog

    def connect(self) -> None:  # TCP connect and TLS handshake: bounded by the timeout
        super().connect()
        self._watchdog.watch(self.sock)


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self._watchdog = watchdog

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_WatchedHTTP, self._watchdog), req)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self._watchdog = watchdog

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_WatchedHTTPS, self._watchdog), req)


def fetch_url(url: str, *, timeout: float = DEFAULT_TIMEOUT, limit: int = MAX_CRL_BYTES) -> bytes:
    """The body of ``url`` (HTTP 200 only), at most ``limit`` bytes, read
    within ``timeout`` seconds in all (connection, redirects, headers and
    body: a server trickling bytes is cut off at the deadline); raises
    otherwise. Not bounded by ``timeout``: the DNS look-up (the system
    resolver's own timeouts apply)."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("a CRL URL must be http:// or https://")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url, headers={"User-Agent": "certgate-crl-fetch"}
    )
    with _Watchdog(timeout) as watchdog:
        opener = urllib.request.build_opener(
            _HttpOnlyRedirects, _WatchedHTTPHandler(watchdog), _WatchedHTTPSHandler(watchdog)
        )
        try:
            body = _read(opener, request, timeout, limit)
        except Exception:
            if watchdog.fired:
                raise TimeoutError(f"download took more than {timeout:g} s") from None
            raise
        if watchdog.fired:  # a shut-down socket reads as the end of the body
            raise TimeoutError(f"download took more than {timeout:g} s")
    return body


def _read(
    opener: urllib.request.OpenerDirector,
    request: urllib.request.Request,
    timeout: float,
    limit: int,
) -> bytes:
    with opener.open(request, timeout=timeout) as response:
        if response.status != 200:
            raise ValueError(f"HTTP status {response.status}")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = response.read1(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise ValueError(f"more than {limit} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def shown_url(url: str) -> str:
    """``url`` without user information, for logs."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


class CrlRefresher:
    """Keeps the ``crl_urls`` CRLs of a registry's tenants fresh.

    :meth:`refresh` fetches what is due (every URL with ``force=True``) and
    swaps in updated tenants; :meth:`start` runs it in a daemon thread;
    :meth:`apply` gives tenants (of a reload, say) the last good CRLs
    already fetched for them. ``fetch``: how a URL is read (default:
    :func:`fetch_url` with ``timeout``).
    """

    def __init__(
        self,
        registry: InMemoryRegistry,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        fetch: Fetch | None = None,
    ) -> None:
        self.registry = registry
        self.fetch: Fetch = fetch or (lambda url: fetch_url(url, timeout=timeout))
        self._good: dict[tuple[str, str], tuple[bytes, x509.CertificateRevocationList]] = {}
        self._due: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        _REFRESHERS.add(self)

    # -- the last good CRLs --------------------------------------------------

    def fetched_for(self, tenant: Tenant) -> tuple[tuple[str, x509.CertificateRevocationList], ...]:
        """The last good CRL of each of ``tenant``'s URLs that has one."""
        out = []
        for url in tenant.crl_urls:
            good = self._good.get((tenant.id, url))
            if good is not None:
                out.append((url, good[1]))
        return tuple(out)

    def apply(self, tenants: Iterable[Tenant]) -> list[Tenant]:
        """``tenants`` with the last good CRLs of their URLs attached (a
        tenant whose CRL no longer vets, its CA changed say, is left
        without it and logged)."""
        out = []
        for tenant in tenants:
            fetched = self.fetched_for(tenant) if tenant.crl_urls else ()
            updated = tenant
            if fetched and fetched != tenant.fetched_crls:
                try:
                    updated = tenant.with_fetched_crls(fetched)
                except ConfigError as exc:
                    logger.warning("certgate: a fetched CRL no longer applies: %s", exc)
            out.append(updated)
        return out

    # -- fetching --------------------------------------------------------------

    def refresh(self, *, force: bool = True) -> int:
        """Fetch every due URL (all with ``force``) of every tenant and swap
        in the tenants whose CRLs changed; returns how many were swapped.
        Never raises for a failed fetch (it is logged)."""
        swapped = 0
        with self._lock:
            for tenant in self.registry.tenants():
                if tenant.crl_urls and self._refresh_tenant(tenant, force=force):
                    swapped += 1
        return swapped

    def _refresh_tenant(self, tenant: Tenant, *, force: bool) -> bool:
        now = time.monotonic()
        for url in tenant.crl_urls:
            key = (tenant.id, url)
            if not force and now < self._due.get(key, 0.0):
                continue
            self._due[key] = now + tenant.crl_refresh
            self._fetch_one(tenant, url)
        fetched = self.fetched_for(tenant)
        if fetched == tenant.fetched_crls:
            return False
        try:
            updated = tenant.with_fetched_crls(fetched)
        except ConfigError as exc:  # vetted one by one already: a race with the CAs
            logger.warning("certgate: tenant %r: fetched CRLs not applied: %s", tenant.id, exc)
            return False
        return self.registry.swap(tenant, updated)

    def _fetch_one(self, tenant: Tenant, url: str) -> None:
        """Fetch, parse and vet one URL's CRL; keep it as the last good one
        if it is new and not older than the last good one."""
        where = f"tenant {tenant.id!r}: CRL from {shown_url(url)}"
        try:
            data = self.fetch(url)
            crls = load_crls(data, where)
            if len(crls) != 1:
                raise ConfigError(f"{where}: {len(crls)} CRLs (a CRL URL serves one)")
            key = (tenant.id, url)
            good = self._good.get(key)
            if good is not None and good[0] == data:
                return
            record = vet_crl(crls[0], tenant.roots + tenant.intermediates, where)
            if good is not None:
                previous = vet_crl(good[1], tenant.roots + tenant.intermediates, where)
                if record.number < previous.number:
                    raise ConfigError(
                        f"{where}: CRL Number {record.number} is lower than the last good "
                        f"one's ({previous.number}): an old CRL replayed?"
                    )
        except Exception as exc:  # noqa: BLE001 - any failure keeps the last good CRL
            logger.warning(
                "certgate: %s: fetch failed, keeping the last good CRL: %s",
                where,
                exc if isinstance(exc, ConfigError) else repr(exc),
            )
            return
        self._good[key] = (data, crls[0])
        logger.info("certgate: %s: new CRL (number %d)", where, record.number)

    # -- the thread ------------------------------------------------------------

    def start(self) -> None:
        """Refresh in a daemon thread: at once, then as URLs fall due."""
        self._started = True
        self._stop.clear()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="certgate-crl-refresh", daemon=True
            )
            self._thread.start()

    def wake(self) -> None:
        """Have the thread look for due URLs now (after a reload, say)."""
        self._wake.set()

    def follow(self, registry: InMemoryRegistry) -> None:
        """Fetch for ``registry``'s tenants from now on (a reload made a new
        registry), keeping the CRLs fetched so far; the thread is woken so a
        CRL fetched while the reload ran reaches the new tenants at once."""
        self.registry = registry
        self.wake()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread (waits up to ``timeout`` seconds for it)."""
        self._started = False
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh(force=False)
            except Exception:  # a bug: log it, keep refreshing
                logger.exception("certgate: CRL refresh failed")
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def _next_wait(self) -> float:
        if not self._due:
            return 1.0
        return min(60.0, max(1.0, min(self._due.values()) - time.monotonic()))

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._thread = None
        if self._started:
            self.start()


_REFRESHERS: weakref.WeakSet[CrlRefresher] = weakref.WeakSet()


def _restart_after_fork() -> None:
    for refresher in list(_REFRESHERS):
        refresher._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_after_fork)
