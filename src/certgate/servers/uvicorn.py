"""uvicorn: fill the ASGI ``tls`` extension from the TLS connection.

uvicorn does not implement the ``tls`` extension (uvicorn #400, #745,
#2306). These protocol classes subclass uvicorn's own and, once per
connection, wrap the app so that every HTTP and WebSocket scope on that
connection gets ``scope["extensions"]["tls"]`` with ``client_cert_chain``
(PEM, leaf first, the client's intermediates included where the ``ssl``
module exposes them), and ``scope["certgate.socket_peer"]``: the TCP peer
*before* uvicorn's proxy-headers middleware rewrites ``scope["client"]``
from ``X-Forwarded-For``.

Three ways to use it::

    # 1. certgate's run(): TLS-aware protocols and deferred time checks
    from certgate.servers.uvicorn import run
    run(app, host="0.0.0.0", port=8443, ssl_certfile="server.pem",
        ssl_keyfile="server.key", ssl_ca_certs="tenants-bundle.pem")

    # 2. the uvicorn command line, through certgate's wrapper (same flags)
    python -m certgate.servers.uvicorn app:app --ssl-certfile server.pem \\
        --ssl-keyfile server.key --ssl-ca-certs tenants-bundle.pem --ssl-cert-reqs 1

    # 3. plain uvicorn, naming the protocol classes
    uvicorn app:app --http certgate.servers.uvicorn:AutoTLSProtocol \\
        --ws certgate.servers.uvicorn:AutoWebSocketsTLSProtocol --ssl-cert-reqs 1 ...

(1) and (2) prepare uvicorn's server context with
:func:`certgate.servers.tls.prepare_server_context` through uvicorn's
``ssl_context_factory`` (wrapping one you pass), in every worker process
(``--workers``, ``--reload``): validity times are left to certgate,
issuing-CA anchors are accepted, and session tickets are off (a session
resumed from a ticket loses the client's intermediates). Without
``ssl_certfile`` they serve plain HTTP (behind a trusted proxy), still
recording the socket peer. With
(3) the handshake checks validity times itself, so an expired client
certificate gets a TLS alert instead of a 403 ``expired``, and a tenant
anchored at an issuing CA fails the handshake; the protocol classes still
turn session tickets off on the context of the first connection they see.
HTTP/2 (``zttp``) is not covered.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509

from .. import sni
from ..asgi import SOCKET_PEER_KEY, ASGIApp, Receive, Scope, Send
from ..errors import ServerSetupError
from ..sources.ssl_socket import peer_chain_der
from .tenant_contexts import UNKNOWN_SNI_RULES, TenantContexts, UnknownSNIRule, registry_of
from .tls import disable_stateless_resumption, prepare_server_context, warn_no_client_certificates

_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


CLIENT_CERT_REQUESTED_KEY = "certgate.client_cert_requested"
"""Key in the ``tls`` dict certgate's adapters build: whether the server
context asked the client for a certificate (``verify_mode != CERT_NONE``)."""

UNIX_SOCKET_PEER = ("unix:", 0)
"""``scope["certgate.socket_peer"]`` of a connection on a Unix socket."""


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
    """The ASGI ``tls`` extension dict for one TLS connection, plus
    ``"certgate.client_cert_requested"`` (see :data:`CLIENT_CERT_REQUESTED_KEY`)."""
    chain = peer_chain_der(ssl_object) or []
    name: str | None = None
    if chain:
        try:
            name = x509.load_der_x509_certificate(chain[0]).subject.rfc4514_string()
        except ValueError:
            name = None
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der) for der in chain],
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version or ""),
        "cipher_suite": None,
        CLIENT_CERT_REQUESTED_KEY: _asks_for_certificate(ssl_object),
    }


def _asks_for_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> bool:
    context = getattr(ssl_object, "context", None)
    return isinstance(context, ssl.SSLContext) and context.verify_mode != ssl.CERT_NONE


class _ConnectionApp:
    """Wraps the app for one connection, adding the connection's TLS facts:
    the ``tls`` extension and ``scope["certgate.sni"]`` (TLS connections
    only), and ``scope["certgate.socket_peer"]`` (``("unix:", 0)`` on a Unix
    socket)."""

    __slots__ = ("app", "sni", "tls", "unix")

    def __init__(
        self, app: ASGIApp, tls: dict[str, Any] | None, sni_name: str | None, unix: bool
    ) -> None:
        self.app = app
        self.tls = tls
        self.sni = sni_name
        self.unix = unix

    def apply(self, scope: Scope) -> None:
        """Put the connection's facts into an http/websocket ``scope``."""
        if scope["type"] in ("http", "websocket"):
            scope[SOCKET_PEER_KEY] = UNIX_SOCKET_PEER if self.unix else scope.get("client")
            if self.tls is not None:
                extensions = dict(scope.get("extensions") or {})
                extensions["tls"] = self.tls
                scope["extensions"] = extensions
                scope[sni.SCOPE_KEY] = self.sni

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.apply(scope)
        await self.app(scope, receive, send)


def connection_app(app: Any, transport: Any) -> _ConnectionApp:
    """``app`` wrapped for one connection of an asyncio ``transport`` (or
    stream writer: anything with ``get_extra_info``)."""
    ssl_object = transport.get_extra_info("ssl_object")
    tls = tls_extension(ssl_object) if ssl_object is not None else None
    name = sni.server_name(ssl_object) if ssl_object is not None else None
    return _ConnectionApp(app, tls, name, _is_unix(transport))


def _is_unix(transport: Any) -> bool:
    sock = transport.get_extra_info("socket")
    family = getattr(sock, "family", None)
    return family is not None and family == getattr(socket, "AF_UNIX", object())


_NO_CERT_FIX = (
    "ask for client certificates with --ssl-cert-reqs 1 (uvicorn CLI and "
    "python -m certgate.servers.uvicorn), ssl_cert_reqs=ssl.CERT_OPTIONAL "
    "(uvicorn.Config / certgate.servers.uvicorn.run), or cert_reqs = 1 (gunicorn)"
)


class TLSScopeMixin:
    """Mix into a uvicorn protocol class ahead of it: ``class P(TLSScopeMixin, H11Protocol)``."""

    app: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        context = transport.get_extra_info("sslcontext")
        _no_tickets(context)
        warn_no_client_certificates(context, _NO_CERT_FIX)
        self.app = connection_app(self.app, transport)


def _no_tickets(context: object) -> None:
    """Turn session tickets off on a server context certgate did not build
    (plain uvicorn naming these protocol classes). Takes effect from the
    next connection on; the tickets of earlier connections are then refused,
    so their clients do a full handshake."""
    if (
        isinstance(context, ssl.SSLContext)
        and context.verify_mode != ssl.CERT_NONE
        and context.num_tickets != 0
    ):
        disable_stateless_resumption(context)


def _subclass(module: str, name: str, public_name: str) -> type[asyncio.Protocol] | None:
    try:
        base = getattr(__import__(module, fromlist=[name]), name)
    except ImportError:  # the optional dependency is not installed
        return None
    cls: type[asyncio.Protocol] = type(
        public_name, (TLSScopeMixin, base), {"__module__": _MODULE, "__qualname__": public_name}
    )
    return cls


_MODULE = "certgate.servers.uvicorn"  # also when run as ``python -m``

H11TLSProtocol = _subclass("uvicorn.protocols.http.h11_impl", "H11Protocol", "H11TLSProtocol")
HttpToolsTLSProtocol = _subclass(
    "uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol", "HttpToolsTLSProtocol"
)
AutoTLSProtocol = HttpToolsTLSProtocol or H11TLSProtocol

WebSocketsSansIOTLSProtocol = _subclass(
    "uvicorn.protocols.websockets.websockets_sansio_impl",
    "WebSocketsSansIOProtocol",
    "WebSocketsSansIOTLSProtocol",
)
WSProtoTLSProtocol = _subclass(
    "uvicorn.protocols.websockets.wsproto_impl", "WSProtocol", "WSProtoTLSProtocol"
)
AutoWebSocketsTLSProtocol = WebSocketsSansIOTLSProtocol or WSProtoTLSProtocol


_HTTP_CLASSES = {c for c in (H11TLSProtocol, HttpToolsTLSProtocol) if c is not None}
_WS_CLASSES = {c for c in (WebSocketsSansIOTLSProtocol, WSProtoTLSProtocol) if c is not None}


def _require_wrapped(option: str, value: object, allowed: set[type[asyncio.Protocol]]) -> None:
    """Refuse protocol classes that would not record the TLS facts and the
    socket peer: certgate would then see neither (and refuse every request)."""
    if value is None or value == "none" or value in allowed:
        return
    if isinstance(value, str):
        module, _, name = value.partition(":")
        if module == _MODULE and globals().get(name) in allowed:
            return
    names = ", ".join(sorted(f"{_MODULE}:{c.__name__}" for c in allowed))
    raise ServerSetupError(
        f"{option}={value!r} is not one of certgate's TLS-aware protocol classes ({names}); "
        "requests on it would carry no client certificate and no socket peer"
    )


def ssl_context_factory(
    config: Any, default_factory: Callable[[], ssl.SSLContext]
) -> ssl.SSLContext:
    """uvicorn ``ssl_context_factory``: uvicorn's own context, prepared with
    :func:`~certgate.servers.tls.prepare_server_context` (and a start-up
    ``WARNING`` when it asks for no client certificate)."""
    context = prepare_server_context(default_factory())
    warn_no_client_certificates(context, _NO_CERT_FIX)
    return context


class PreparedContextFactory:
    """Wraps a caller's ``ssl_context_factory`` so its context is prepared too.

    A class, not a closure: uvicorn pickles its ``Config`` into every worker
    process (``workers > 1``, ``reload``), so the factory must be picklable.
    """

    __slots__ = ("factory",)

    def __init__(
        self, factory: Callable[[Any, Callable[[], ssl.SSLContext]], ssl.SSLContext]
    ) -> None:
        self.factory = factory

    def __call__(
        self, config: Any, default_factory: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        context = prepare_server_context(self.factory(config, default_factory))
        warn_no_client_certificates(context, _NO_CERT_FIX)
        return context


class PerTenantContextFactory:
    """uvicorn ``ssl_context_factory`` for per-tenant handshakes.

    Takes uvicorn's listener context (or the one a wrapped ``factory``
    makes) and installs :class:`~certgate.servers.tenant_contexts.TenantContexts`
    on it, with the server certificate of the ``Config``. ``source`` is a
    synchronous registry, a ``CertGate``, or the path of a certgate TOML file
    (its registry is loaded in each server process: the only form that
    survives uvicorn's pickling into ``workers > 1`` / ``reload`` processes).
    The :class:`TenantContexts` made is kept in :attr:`contexts`.
    """

    def __init__(
        self,
        source: Any,
        *,
        max_contexts: int = 1024,
        unknown_sni: UnknownSNIRule = "no_anchors",
        factory: Callable[[Any, Callable[[], ssl.SSLContext]], ssl.SSLContext] | None = None,
    ) -> None:
        if isinstance(source, str | os.PathLike):
            source = os.fspath(source)
        else:
            registry_of(source)  # refuse an async registry now, not in the server
        self.source = source
        self.max_contexts = max_contexts
        self.unknown_sni: UnknownSNIRule = unknown_sni
        self.factory = factory
        self.contexts: TenantContexts | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "contexts": None}

    def __call__(
        self, config: Any, default_factory: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        context = (
            self.factory(config, default_factory) if self.factory is not None else default_factory()
        )
        warn_no_client_certificates(context, _NO_CERT_FIX)
        self.contexts = TenantContexts.for_listener(
            self.source,
            context,
            config.ssl_certfile,
            config.ssl_keyfile,
            password=config.ssl_keyfile_password,
            max_contexts=self.max_contexts,
            unknown_sni=self.unknown_sni,
        )
        return self.contexts.install(context)


def _with_context_factory(kwargs: dict[str, Any]) -> None:
    """Set (or wrap) ``ssl_context_factory`` when the server speaks TLS.

    Only with ``ssl_certfile`` or a factory of the caller's: without either
    uvicorn serves plain HTTP (behind a trusted proxy), and a factory alone
    would make it try TLS without a certificate."""
    given = kwargs.get("ssl_context_factory")
    if given is not None:
        if not isinstance(given, PreparedContextFactory | PerTenantContextFactory) and (
            given is not ssl_context_factory
        ):
            kwargs["ssl_context_factory"] = PreparedContextFactory(given)
    elif kwargs.get("ssl_certfile"):
        kwargs["ssl_context_factory"] = ssl_context_factory


def _with_per_tenant(kwargs: dict[str, Any]) -> None:
    """Turn ``per_tenant`` (and its options) into a
    :class:`PerTenantContextFactory` (wrapping a caller's factory)."""
    source = kwargs.pop("per_tenant", None)
    max_contexts = kwargs.pop("per_tenant_max_contexts", 1024)
    unknown_sni = kwargs.pop("per_tenant_unknown_sni", "no_anchors")
    if source is None:
        return
    if not kwargs.get("ssl_certfile"):
        raise ServerSetupError("per_tenant needs TLS: pass ssl_certfile (and ssl_keyfile)")
    kwargs["ssl_context_factory"] = PerTenantContextFactory(
        source,
        max_contexts=int(max_contexts),
        unknown_sni=unknown_sni,
        factory=kwargs.get("ssl_context_factory"),
    )


def config(app: Any, **kwargs: Any) -> Any:
    """A ``uvicorn.Config`` with certgate's protocols and context factory.

    ``ssl_cert_reqs`` defaults to ``CERT_OPTIONAL`` (certgate answers 403
    without a certificate). Any uvicorn ``Config`` argument may be passed;
    an ``ssl_context_factory`` of yours is wrapped so its context is
    prepared too. Without ``ssl_certfile`` (and without a factory) the
    server speaks plain HTTP.

    ``per_tenant`` (a synchronous registry, a ``CertGate`` or a certgate
    TOML path) turns on per-tenant handshakes
    (:class:`~certgate.servers.tenant_contexts.TenantContexts`), with
    ``per_tenant_max_contexts`` (default 1024) and ``per_tenant_unknown_sni``
    (``"no_anchors"``, ``"refuse"`` or ``"listener"``).
    """
    import uvicorn  # noqa: PLC0415 - optional dependency

    if AutoTLSProtocol is None:
        raise ServerSetupError("uvicorn's HTTP protocols could not be imported")
    kwargs.setdefault("http", AutoTLSProtocol)
    if AutoWebSocketsTLSProtocol is not None:
        kwargs.setdefault("ws", AutoWebSocketsTLSProtocol)
    for key, allowed in (("http", _HTTP_CLASSES), ("ws", _WS_CLASSES)):
        _require_wrapped(key, kwargs.get(key), allowed)
    kwargs.setdefault("ssl_cert_reqs", ssl.CERT_OPTIONAL)
    _with_per_tenant(kwargs)
    _with_context_factory(kwargs)
    return uvicorn.Config(app, **kwargs)


def run(app: Any, **kwargs: Any) -> None:
    """``uvicorn.run`` with certgate's TLS-aware protocols (see :func:`config`)."""
    import uvicorn  # noqa: PLC0415

    uvicorn.Server(config(app, **kwargs)).run()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m certgate.servers.uvicorn``: uvicorn's CLI, certgate's protocols.

    Adds ``--http``/``--ws`` defaults naming the TLS-aware classes, and defers
    validity-time checks of the handshake to certgate. certgate's own flags:
    ``--per-tenant CERTGATE.toml`` (per-tenant handshakes with the registry
    of that file, loaded in each server process),
    ``--per-tenant-max-contexts N`` and ``--per-tenant-unknown-sni RULE``.
    """
    import importlib  # noqa: PLC0415

    import click  # noqa: PLC0415 - uvicorn's own dependency

    command = importlib.import_module("uvicorn.main").main
    assert isinstance(command, click.Command)

    args = list(sys.argv[1:] if argv is None else argv)
    per_tenant = _pop_option(args, "--per-tenant")
    max_contexts = _pop_option(args, "--per-tenant-max-contexts")
    unknown_sni = _pop_option(args, "--per-tenant-unknown-sni")
    if per_tenant is None and (max_contexts is not None or unknown_sni is not None):
        raise SystemExit("python -m certgate.servers.uvicorn: --per-tenant-* need --per-tenant")
    if unknown_sni is not None and unknown_sni not in UNKNOWN_SNI_RULES:
        raise SystemExit(
            "python -m certgate.servers.uvicorn: --per-tenant-unknown-sni must be one of "
            + ", ".join(UNKNOWN_SNI_RULES)
        )
    for option, default, allowed in (
        ("--http", "AutoTLSProtocol", _HTTP_CLASSES),
        ("--ws", "AutoWebSocketsTLSProtocol", _WS_CLASSES),
    ):
        given = _option_value(args, option)
        if given is None:
            if globals()[default] is not None:
                args += [option, f"{_MODULE}:{default}"]
        else:
            try:
                _require_wrapped(option, given, allowed)
            except ValueError as exc:
                raise SystemExit(f"python -m certgate.servers.uvicorn: {exc}") from None
    # The CLI has no --ssl-context-factory: give uvicorn.main.run one. It is
    # stored on the Config, which uvicorn pickles into its worker and reload
    # processes, so every process prepares its own context (patching
    # create_ssl_context reached this process only: with --workers the
    # workers' contexts were uvicorn's unprepared ones).
    uvicorn_main = importlib.import_module("uvicorn.main")
    original_run = uvicorn_main.run

    def run_prepared(*a: Any, **k: Any) -> None:
        if per_tenant is not None:
            k["per_tenant"] = per_tenant
            k["per_tenant_max_contexts"] = int(max_contexts or 1024)
            k["per_tenant_unknown_sni"] = unknown_sni or "no_anchors"
            _with_per_tenant(k)
        _with_context_factory(k)
        original_run(*a, **k)

    uvicorn_main.__dict__["run"] = run_prepared  # this process only; called once
    command.main(args=args, prog_name="python -m certgate.servers.uvicorn")


def _pop_option(args: list[str], option: str) -> str | None:
    """Remove ``option VALUE`` / ``option=VALUE`` (certgate's own flags,
    unknown to uvicorn's CLI) from ``args``; return the value."""
    for index, arg in enumerate(args):
        if arg == option:
            if index + 1 >= len(args):
                raise SystemExit(f"python -m certgate.servers.uvicorn: {option} needs a value")
            value = args[index + 1]
            del args[index : index + 2]
            return value
        if arg.startswith(option + "="):
            del args[index]
            return arg.split("=", 1)[1]
    return None


def _option_value(args: list[str], option: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == option and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


if __name__ == "__main__":
    # Run the canonical module's main so uvicorn imports the same classes.
    from certgate.servers.uvicorn import main as canonical_main

    canonical_main()
