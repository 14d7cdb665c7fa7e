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
import ssl
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509

from ..asgi import SOCKET_PEER_KEY, ASGIApp, Receive, Scope, Send
from ..errors import ServerSetupError
from ..sources.ssl_socket import peer_chain_der
from .tls import disable_stateless_resumption, prepare_server_context

_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
    """The ASGI ``tls`` extension dict for one TLS connection."""
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
    }


class _ConnectionApp:
    """Wraps the app for one connection, adding the connection's TLS facts."""

    __slots__ = ("app", "tls")

    def __init__(self, app: ASGIApp, tls: dict[str, Any] | None) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[SOCKET_PEER_KEY] = scope.get("client")
            if self.tls is not None:
                extensions = dict(scope.get("extensions") or {})
                extensions["tls"] = self.tls
                scope["extensions"] = extensions
        await self.app(scope, receive, send)


class TLSScopeMixin:
    """Mix into a uvicorn protocol class ahead of it: ``class P(TLSScopeMixin, H11Protocol)``."""

    app: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        _no_tickets(transport.get_extra_info("sslcontext"))
        ssl_object = transport.get_extra_info("ssl_object")
        tls = tls_extension(ssl_object) if ssl_object is not None else None
        self.app = _ConnectionApp(self.app, tls)


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
    :func:`~certgate.servers.tls.prepare_server_context`."""
    return prepare_server_context(default_factory())


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
        return prepare_server_context(self.factory(config, default_factory))


def _with_context_factory(kwargs: dict[str, Any]) -> None:
    """Set (or wrap) ``ssl_context_factory`` when the server speaks TLS.

    Only with ``ssl_certfile`` or a factory of the caller's: without either
    uvicorn serves plain HTTP (behind a trusted proxy), and a factory alone
    would make it try TLS without a certificate."""
    given = kwargs.get("ssl_context_factory")
    if given is not None:
        if not isinstance(given, PreparedContextFactory) and given is not ssl_context_factory:
            kwargs["ssl_context_factory"] = PreparedContextFactory(given)
    elif kwargs.get("ssl_certfile"):
        kwargs["ssl_context_factory"] = ssl_context_factory


def config(app: Any, **kwargs: Any) -> Any:
    """A ``uvicorn.Config`` with certgate's protocols and context factory.

    ``ssl_cert_reqs`` defaults to ``CERT_OPTIONAL`` (certgate answers 403
    without a certificate). Any uvicorn ``Config`` argument may be passed;
    an ``ssl_context_factory`` of yours is wrapped so its context is
    prepared too. Without ``ssl_certfile`` (and without a factory) the
    server speaks plain HTTP.
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
    _with_context_factory(kwargs)
    return uvicorn.Config(app, **kwargs)


def run(app: Any, **kwargs: Any) -> None:
    """``uvicorn.run`` with certgate's TLS-aware protocols (see :func:`config`)."""
    import uvicorn  # noqa: PLC0415

    uvicorn.Server(config(app, **kwargs)).run()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m certgate.servers.uvicorn``: uvicorn's CLI, certgate's protocols.

    Adds ``--http``/``--ws`` defaults naming the TLS-aware classes, and defers
    validity-time checks of the handshake to certgate.
    """
    import importlib  # noqa: PLC0415

    import click  # noqa: PLC0415 - uvicorn's own dependency

    command = importlib.import_module("uvicorn.main").main
    assert isinstance(command, click.Command)

    args = list(sys.argv[1:] if argv is None else argv)
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
        _with_context_factory(k)
        original_run(*a, **k)

    uvicorn_main.__dict__["run"] = run_prepared  # this process only; called once
    command.main(args=args, prog_name="python -m certgate.servers.uvicorn")


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
