"""Per-tenant handshakes: choose the server's ``SSLContext`` by the SNI.

One listener context loaded with the union of every tenant's CAs makes the
handshake prove only "chains to *some* tenant" and must load every root at
start-up (3,002 roots take about half a second; a million cannot be loaded).
:class:`TenantContexts` instead installs an ``sni_callback`` that looks up
the tenant serving the requested name (``registry.tenant_for_host``) and
switches the connection to a context that trusts **that tenant's** roots and
intermediates only. A device of tenant A connecting to tenant B's host name
then fails in the handshake (TLS alert ``unknown_ca``), before any HTTP.
certgate still verifies every request against the tenant of its Host (the
handshake decides nothing on its own).

What each per-tenant context holds: the server certificate and key (loaded
from ``certfile``/``keyfile``), the tenant's roots and intermediates, and the
ALPN protocols (``alpn_protocols``). The verify mode, verify flags
(``VERIFY_X509_PARTIAL_CHAIN``, deferred time checks), the session-ticket
setting and the cipher list are those of the *listener* context: OpenSSL
keeps them on the connection when the context is switched, so
:meth:`TenantContexts.install` prepares the listener with
:func:`~certgate.servers.tls.prepare_server_context` (and the per-tenant
contexts get the same settings, for consistency). ALPN is not kept: OpenSSL
asks the context switched to, so a server that offers HTTP/2 (hypercorn,
gunicorn's ``http_protocols``) must name its protocols here, or every
connection falls back to HTTP/1.1 (the ``ssl`` module cannot read them back
from the listener; the hypercorn and gunicorn adapters pass them).

The registry is read through its source: with a ``CertGate`` (or a TOML
path, loaded into one), the gate's current registry, so tenants a reload
added or changed are found on their next handshake.

Contexts are built on first use and kept in a bounded LRU
(``max_contexts``), keyed by tenant id; an entry is rebuilt when the
tenant's :attr:`~certgate.tenant.Tenant.trust_id` (its id, roots and
intermediates) differs from the one it was built for, so a tenant whose
anchors changed gets a fresh context on its next handshake.

**Authenticated proxies** (``proxy_ca``): the proxy's own client
certificate must pass the handshake before certgate can check it, so the
proxy CA (``proxy_cas``; by default the ``proxy_ca`` of the ``CertGate`` or
certgate TOML file given as source) is loaded into every per-tenant context
and the no-anchors one: a proxy connects whatever SNI it sends (nginx sends
none unless ``proxy_ssl_server_name on``). Only certificates of that CA
gain from it, and only as proxies: as a client identity certgate verifies
them against the addressed tenant, which never trusts the proxy CA (the
gate refuses such a configuration).

**Unknown or missing SNI** (``unknown_sni``; also a name that is not a valid
host name):

* ``"no_anchors"`` (default): the connection switches to a context that
  trusts no CA (but the proxy CA, see above). A client that sends no
  certificate completes the handshake
  and reaches certgate (403 ``unknown_tenant`` / ``no_certificate``, and
  exempt paths such as health checks still answer); a client that sends one
  fails the handshake (``unknown_ca``), since no tenant was chosen.
* ``"refuse"``: the handshake is aborted with the ``unrecognized_name``
  alert.
* ``"listener"``: the connection stays on the listener context and trusts
  what was loaded into it (for example the union bundle via uvicorn's
  ``ssl_ca_certs``, for devices that connect by IP address and send no SNI).

A registry lookup that raises (an outage) aborts the handshake with the
``internal_error`` alert (logged once until the store answers a lookup
again; cache hits in between do not count).

**Lookups in the handshake.** ``sni_callback`` is synchronous and runs
inside the handshake: under uvicorn and hypercorn on the event loop thread,
under Werkzeug on the thread that accepts connections, under gunicorn in the
worker. It cannot await, so a lookup that waits on I/O (a database) blocks
that thread - every other connection of the event loop waits with it.
certgate keeps that rare and bounded:

* a registry with a cache (:class:`~certgate.registry.CachedTrustRegistry`,
  such as :func:`certgate.stores.open_registry`'s) answers from memory
  through ``peek_tenant_for_host`` - tenants and known-unknown hosts (its
  negative cache) alike - with no thread hop and no I/O; TenantContexts keeps
  no host memory of its own then (the cache is the one memory, bounded by
  its own settings, and invalidated by its change feed);
* a miss, and every lookup of any other registry that may block, runs on a
  small pool of lookup threads while the handshake waits at most
  ``lookup_timeout`` seconds (default: the gate's ``registry_timeout``, or
  5 s for a bare registry). A timeout aborts the handshake
  (``internal_error``) like an outage; while the lookup that timed out is
  still running (a hung store), further misses are aborted at once rather
  than block the thread again, and so they are after a lookup failed, until
  the cache's own poller reaches the store again (a registry without such
  a cache: for ``RETRY_AFTER``, 1 s) - whatever ``max_stale`` is (each
  outage blocks the thread for one failed lookup, not one per connection);
* other registries' answers are remembered here (at most ``max_hosts``;
  valid while the registry's ``change_token`` is the same object, or for
  ``host_ttl`` seconds for a registry without one), and an in-memory
  registry (``blocking = False``) is called inline.

Only synchronous registries are accepted
(:class:`~certgate.registry.TrustRegistry`): a coroutine cannot be awaited
inside a handshake. An asynchronous registry with a blocking view of the
same cache (``sync_registry``: ``open_registry(url, asynchronous=True)``)
is read through that view: hits from the shared cache, misses through the
blocking store on the lookup threads.
"""

from __future__ import annotations

import inspect
import logging
import os
import queue
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .. import sni
from ..errors import RegistryTimeout, Rejected, ServerSetupError, TrustStoreUnavailable
from ..hosts import normalize_host
from ..lookups import DEFAULT_REGISTRY_TIMEOUT, LookupPool, check_timeout, wait_for
from ..registry import Miss, TrustRegistry
from ..tenant import Tenant
from .tls import (
    SNICallback,
    SNIRecorder,
    accept_intermediate_anchors,
    defer_time_checks,
    disable_stateless_resumption,
    prepare_server_context,
    trust_bundle_pem,
)

UnknownSNIRule = Literal["no_anchors", "refuse", "listener"]
UNKNOWN_SNI_RULES: tuple[UnknownSNIRule, ...] = ("no_anchors", "refuse", "listener")

_log = logging.getLogger("certgate")
_NO_TOKEN = object()


def registry_of(source: Any) -> TrustRegistry:
    """The synchronous registry of ``source``: a registry, or an object with
    a ``registry`` attribute (a :class:`~certgate.gate.CertGate`).

    Raises :class:`ServerSetupError` for an asynchronous registry."""
    registry = getattr(source, "registry", source)
    registry = getattr(registry, "sync_registry", None) or registry
    lookup = getattr(registry, "tenant_for_host", None)
    if lookup is None or not callable(lookup):
        raise ServerSetupError(f"{type(source).__name__} is not a trust registry or a CertGate")
    if inspect.iscoroutinefunction(lookup):
        raise ServerSetupError(
            "per-tenant handshakes need a synchronous registry: tenant_for_host is looked up "
            "inside the TLS handshake, where a coroutine cannot be awaited"
        )
    return registry  # type: ignore[no-any-return]


def proxy_cas_of(source: Any) -> tuple[x509.Certificate, ...]:
    """The proxy CA certificates of ``source``: a ``CertGate`` with
    ``proxy_ca`` (its ``trust.proxy_auth.roots``); none for anything else."""
    auth = getattr(getattr(source, "trust", None), "proxy_auth", None)
    roots = getattr(auth, "roots", ())
    return tuple(c for c in roots if isinstance(c, x509.Certificate))


RETRY_AFTER = 1.0
"""Seconds misses of a registry without a polling cache are aborted at once
after one of its lookups failed in a handshake."""


def _polls_of(registry: object) -> int | None:
    """The successful polls of ``registry``'s cache (``stats().polls`` of a
    :class:`~certgate.stores.caching.CachingRegistry`), or ``None``."""
    stats = getattr(registry, "stats", None)
    polls = getattr(stats(), "polls", None) if callable(stats) else None
    return polls if isinstance(polls, int) else None


def _recovered(registry: object, polls: int | None, failed_at: float) -> bool:
    """Whether a miss may ask ``registry`` again after a lookup failed:
    once its cache's poller has reached the store since (its own thread,
    not the handshake's, finds out), or, without such a cache,
    :data:`RETRY_AFTER` seconds later. Until then an outage costs the
    thread of the handshake nothing per connection - whatever ``max_stale``
    is (with ``None`` the cache never goes stale, so staleness cannot be
    the signal)."""
    if polls is None:
        return time.monotonic() - failed_at >= RETRY_AFTER
    now = _polls_of(registry)
    return now is None or now > polls


class _TenantSNI:
    """The ``sni_callback`` of a listener context (records the SNI too)."""

    __slots__ = ("owner", "previous")
    records_sni = True

    def __init__(self, owner: TenantContexts, previous: SNICallback | None) -> None:
        self.owner = owner
        self.previous = previous

    def __call__(self, conn: Any, server_name: str | None, context: ssl.SSLContext) -> int | None:
        sni.remember(conn, server_name)
        if self.previous is not None:
            answer = self.previous(conn, server_name, context)
            if answer is not None:
                return answer
        return self.owner.select(conn)


class TenantContexts:
    """Per-tenant ``SSLContext`` s chosen by SNI; see the module docstring.

    ``registry``: a synchronous trust registry, or a ``CertGate`` (its
    registry is used). ``certfile``/``keyfile``/``password``: the server's
    certificate, loaded into every context. ``max_contexts`` bounds the
    per-tenant contexts kept (least recently used dropped first);
    ``max_hosts`` and ``host_ttl`` bound the host -> tenant memory (of a
    registry without a cache). ``lookup_timeout``: seconds a handshake waits
    for a registry lookup (``None``: the gate's ``registry_timeout``).
    ``require_certificate`` makes the handshake refuse clients without a
    certificate (``CERT_REQUIRED``; default ``CERT_OPTIONAL``, certgate
    answers 403). ``defer_time`` leaves validity times to certgate.
    ``alpn_protocols``: the listener's ALPN protocols (``["h2",
    "http/1.1"]``), set on every per-tenant context (see the module
    docstring). ``proxy_cas``: the authenticated proxies' CA, trusted by
    every context (``None``: the ``proxy_ca`` of ``registry`` when it is a
    ``CertGate``, as it is when the contexts are made - a reload of the gate
    that changes ``proxy_ca`` does not reach them).
    """

    def __init__(
        self,
        registry: Any,
        certfile: str | os.PathLike[str],
        keyfile: str | os.PathLike[str] | None = None,
        *,
        password: str | None = None,
        max_contexts: int = 1024,
        unknown_sni: UnknownSNIRule = "no_anchors",
        require_certificate: bool = False,
        defer_time: bool = True,
        max_hosts: int = 16384,
        host_ttl: float = 60.0,
        alpn_protocols: Iterable[str] = (),
        proxy_cas: Iterable[x509.Certificate] | None = None,
        lookup_timeout: float | None = None,
    ) -> None:
        if unknown_sni not in UNKNOWN_SNI_RULES:
            raise ServerSetupError(
                f"unknown_sni must be one of {', '.join(UNKNOWN_SNI_RULES)}, not {unknown_sni!r}"
            )
        if max_contexts < 1 or max_hosts < 1:
            raise ServerSetupError("max_contexts and max_hosts must be at least 1")
        registry_of(registry)  # refuse an async registry now
        self.source = registry
        """What the registry is taken from: a registry, or a gate (whose
        current registry is used, so tenants a reload added are found)."""
        self.certfile = certfile
        self.keyfile = keyfile
        self.password = password
        self.max_contexts = max_contexts
        self.max_hosts = max_hosts
        self.host_ttl = host_ttl
        self.unknown_sni: UnknownSNIRule = unknown_sni
        self.verify_mode = ssl.CERT_REQUIRED if require_certificate else ssl.CERT_OPTIONAL
        self.defer_time = defer_time
        self.alpn_protocols: tuple[str, ...] = tuple(alpn_protocols)
        cas = proxy_cas_of(registry) if proxy_cas is None else tuple(proxy_cas)
        self.proxy_cas_pem = "".join(c.public_bytes(Encoding.PEM).decode() for c in cas)
        """PEM of the proxy CA loaded into every context (empty: none)."""
        self.built = 0
        """How many per-tenant contexts were built (a rebuild counts again)."""
        self._lock = threading.Lock()
        self._contexts: OrderedDict[str, tuple[bytes, ssl.SSLContext]] = OrderedDict()
        self._hosts: OrderedDict[str, tuple[object, float, Tenant | None]] = OrderedDict()
        self._no_anchors: ssl.SSLContext | None = None
        self._failing = False
        self.lookup_timeout = None if lookup_timeout is None else check_timeout(lookup_timeout)
        self._pool = LookupPool(name="certgate-handshake")
        self._stuck: Future[Tenant | None] | None = None
        self._down: tuple[object, int | None, float] | None = None
        """After a failed lookup: the registry, its cache's successful polls
        then (``None``: no cache) and when (see :func:`_recovered`)."""
        self.lookups = 0
        """Registry lookups made off the thread of the handshake (misses)."""

    @property
    def registry(self) -> TrustRegistry:
        """The registry looked up now (a gate's current one: it changes
        with each reload of the gate)."""
        registry = getattr(self.source, "registry", self.source)
        return getattr(registry, "sync_registry", None) or registry  # type: ignore[no-any-return]

    # -- contexts ---------------------------------------------------------

    def _base(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.certfile, self.keyfile, self.password)
        context.verify_mode = self.verify_mode
        if self.defer_time:
            defer_time_checks(context)
        accept_intermediate_anchors(context)
        if self.alpn_protocols:
            context.set_alpn_protocols(list(self.alpn_protocols))
        if self.proxy_cas_pem:
            context.load_verify_locations(cadata=self.proxy_cas_pem)
        return disable_stateless_resumption(context)

    def server_context(self) -> ssl.SSLContext:
        """A new listener context (server certificate, no CAs) with the
        per-tenant ``sni_callback`` installed."""
        return self.install(self._base())

    @classmethod
    def for_listener(
        cls,
        source: Any,
        listener: ssl.SSLContext,
        certfile: str | os.PathLike[str],
        keyfile: str | os.PathLike[str] | None = None,
        *,
        password: str | None = None,
        max_contexts: int = 1024,
        unknown_sni: UnknownSNIRule = "no_anchors",
        alpn_protocols: Iterable[str] = (),
    ) -> TenantContexts:
        """The contexts for a server whose listening context is ``listener``
        (its ``CERT_REQUIRED`` carries over). ``source``: a registry, a
        ``CertGate``, or the path of a certgate TOML file (loaded here into a
        gate that is reloaded when the file changes, if its ``[certgate]``
        sets ``watch_interval``: see :func:`certgate.reload.handshake_gate`;
        its ``proxy_ca`` is the proxy CA). ``alpn_protocols``: those the
        server set on ``listener``."""
        if isinstance(source, str | os.PathLike):
            from ..reload import handshake_gate  # noqa: PLC0415 - only for this form

            source = handshake_gate(source)
        return cls(
            source,
            certfile,
            keyfile,
            password=password,
            max_contexts=max_contexts,
            unknown_sni=unknown_sni,
            require_certificate=listener.verify_mode == ssl.CERT_REQUIRED,
            alpn_protocols=alpn_protocols,
        )

    def install(self, context: ssl.SSLContext) -> ssl.SSLContext:
        """Prepare ``context`` (a listener context that asks for client
        certificates) and install the per-tenant ``sni_callback``, chaining
        to a callback already set (it runs first; an alert it returns ends
        the handshake). Raises :class:`ServerSetupError` for a context with
        ``CERT_NONE``: the connection keeps the listener's verify mode, so
        no client certificate would ever be requested."""
        if context.verify_mode == ssl.CERT_NONE:
            raise ServerSetupError(
                "per-tenant handshakes need a listener context that asks for client "
                "certificates (CERT_OPTIONAL or CERT_REQUIRED; uvicorn: ssl_cert_reqs=1, "
                "gunicorn: cert_reqs = 1)"
            )
        prepare_server_context(context, defer_time=self.defer_time)
        previous = context.sni_callback
        if isinstance(previous, SNIRecorder | _TenantSNI):
            previous = previous.previous
        context.sni_callback = _TenantSNI(self, previous)
        return context

    def context_for(self, tenant: Tenant) -> ssl.SSLContext:
        """The context for ``tenant`` (built now unless a current one is kept)."""
        with self._lock:
            kept = self._contexts.get(tenant.id)
            if kept is not None and kept[0] == tenant.trust_id:
                self._contexts.move_to_end(tenant.id)
                return kept[1]
            context = self._base()
            context.load_verify_locations(cadata=trust_bundle_pem([tenant]))
            self.built += 1
            self._contexts[tenant.id] = (tenant.trust_id, context)
            self._contexts.move_to_end(tenant.id)
            while len(self._contexts) > self.max_contexts:
                self._contexts.popitem(last=False)
            return context

    def cached_tenants(self) -> list[str]:
        """The tenant ids whose contexts are kept, least recently used first."""
        with self._lock:
            return list(self._contexts)

    def __len__(self) -> int:
        return len(self._contexts)

    def _no_anchor_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._no_anchors is None:
                self._no_anchors = self._base()
            return self._no_anchors

    # -- lookups ----------------------------------------------------------

    def tenant_for(self, host: str) -> Tenant | None:
        """The tenant serving normalised ``host``: from the registry's cache
        or this object's host memory when they know, else looked up with a
        deadline (see the module docstring). Raises what the registry
        raises, :class:`~certgate.errors.RegistryTimeout` after
        ``lookup_timeout``."""
        registry = self.registry
        peek = getattr(registry, "peek_tenant_for_host", None)  # a cache (not isinstance: slow)
        if peek is not None:
            found = peek(host)
            if not isinstance(found, Miss):
                return found  # type: ignore[no-any-return]
            return self._look_up(registry, host)
        token = getattr(registry, "change_token", _NO_TOKEN)
        now = time.monotonic()
        with self._lock:
            entry = self._hosts.get(host)
            fresh = entry is not None and (token is not _NO_TOKEN or now < entry[1])
            if entry is not None and fresh and entry[0] is token:
                self._hosts.move_to_end(host)
                return entry[2]
        tenant = self._look_up(registry, host)
        with self._lock:
            self._hosts[host] = (token, now + self.host_ttl, tenant)
            self._hosts.move_to_end(host)
            while len(self._hosts) > self.max_hosts:
                self._hosts.popitem(last=False)
        return tenant

    def _timeout(self) -> float:
        if self.lookup_timeout is not None:
            return self.lookup_timeout
        timeout = getattr(self.source, "registry_timeout", None)
        return DEFAULT_REGISTRY_TIMEOUT if not isinstance(timeout, int | float) else float(timeout)

    def _look_up(self, registry: TrustRegistry, host: str) -> Tenant | None:
        """``registry.tenant_for_host(host)``: inline for a registry that
        never blocks, else on the lookup threads, waiting at most the
        timeout; at once :class:`RegistryTimeout` while an earlier lookup
        that timed out is still running (a hung store must not block the
        thread of the handshake once per connection)."""
        if not getattr(registry, "blocking", True):
            return registry.tenant_for_host(host)
        timeout = self._timeout()
        stuck = self._stuck
        if stuck is not None:
            if not stuck.done():
                raise RegistryTimeout(
                    timeout, "an earlier handshake lookup that timed out is still running"
                )
            self._stuck = None
            if stuck.exception() is None:
                self._failing = False  # it answered in the end: a new failure is logged
        down = self._down
        if down is not None and down[0] is registry:
            if not _recovered(registry, down[1], down[2]):
                raise TrustStoreUnavailable(
                    "the tenant store failed a handshake lookup and has not been reached since"
                )
            self._down = None
            self._failing = False  # reached again: a failure now is a new outage (logged)
        self.lookups += 1
        try:
            future = self._pool.submit(lambda: registry.tenant_for_host(host))
        except queue.Full:
            raise RegistryTimeout(timeout, "every handshake lookup thread is busy") from None
        try:
            return wait_for(future, timeout)
        except RegistryTimeout:
            self._stuck = future
            raise
        except Exception:
            self._down = (registry, _polls_of(registry), time.monotonic())
            raise

    def select(self, conn: Any) -> int | None:
        """Switch ``conn`` (in its ``sni_callback``) to the context of the
        tenant its recorded SNI names; returns a TLS alert to abort, or
        ``None`` to go on."""
        name = sni.server_name(conn)
        tenant: Tenant | None = None
        if name is not None:
            try:
                host = normalize_host(name)
            except Rejected:
                host = None
            if host is not None:
                try:
                    tenant = self.tenant_for(host)
                    context = self.context_for(tenant) if tenant is not None else None
                except Exception as exc:  # noqa: BLE001 - an outage: abort the handshake
                    if not self._failing:
                        self._failing = True
                        _log.warning(
                            "certgate: per-tenant handshake aborted: tenant lookup for SNI %r "
                            "failed (%s); further failures are not logged until a lookup "
                            "succeeds",
                            host,
                            type(exc).__name__,
                        )
                    return int(ssl.ALERT_DESCRIPTION_INTERNAL_ERROR)
                if self._down is None and self._stuck is None:
                    self._failing = False  # the store answered (not only the cache)
                if context is not None:
                    conn.context = context
                    return None
        if self.unknown_sni == "refuse":
            return int(ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME)
        if self.unknown_sni == "no_anchors":
            conn.context = self._no_anchor_context()
        return None
