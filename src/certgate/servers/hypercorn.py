"""hypercorn (asyncio worker): the ASGI ``tls`` extension, the socket peer and the SNI.

hypercorn does not implement the ``tls`` extension (hypercorn #62, #324).
This adapter replaces ``hypercorn.asyncio.run.TCPServer`` - the class the
asyncio worker instantiates for every connection - with a subclass that reads
the connection's ``ssl_object`` once and wraps the app, so every HTTP and
WebSocket scope of the connection (HTTP/1.1 and HTTP/2 streams alike) gets
the same keys as under certgate's uvicorn adapter: ``extensions["tls"]``
(with ``"certgate.client_cert_requested"``), ``scope["certgate.sni"]`` and
``scope["certgate.socket_peer"]`` (``("unix:", 0)`` on a Unix socket)::

    from certgate.servers.hypercorn import config, serve
    cfg = config(certfile="server.pem", keyfile="server.key",
                 ca_certs="tenants-bundle.pem")     # verify_mode CERT_OPTIONAL
    asyncio.run(serve(app, cfg))                    # or run(app, cfg)

:func:`config` returns a :class:`CertgateConfig` (a ``hypercorn.config.Config``
subclass) whose SSL context is prepared with
:func:`~certgate.servers.tls.prepare_server_context` (deferred time checks,
issuing-CA anchors, no session tickets, SNI recorded), and which can do
per-tenant handshakes (``per_tenant=registry, gate or TOML path``).

Not covered: the ``hypercorn`` command line and ``workers > 1`` (hypercorn
starts worker processes that import nothing of certgate, so the class
replacement does not reach them; run one process per core under a
supervisor instead), the trio worker (``worker_class = "trio"``), HTTP/3
(QUIC), and ``hypercorn.run`` with a non-asyncio worker. :func:`serve`
refuses a config with ``worker_class`` other than asyncio or uvloop.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from ..errors import ServerSetupError
from .tenant_contexts import TenantContexts, UnknownSNIRule
from .tls import prepare_server_context, warn_no_client_certificates
from .uvicorn import connection_app

_NO_CERT_FIX = "pass verify_mode=ssl.CERT_OPTIONAL (the default of certgate's hypercorn config())"

try:
    import hypercorn.asyncio.run as _hypercorn_run
    from hypercorn.asyncio.tcp_server import TCPServer as _TCPServer
    from hypercorn.config import Config as _Config
except ImportError:  # pragma: no cover - optional dependency
    _hypercorn_run = None  # type: ignore[assignment]
    _TCPServer = object  # type: ignore[assignment, misc]
    _Config = object  # type: ignore[assignment, misc]


class _ConnectionAppWrapper:
    """hypercorn's app wrapper for one connection, adding its TLS facts."""

    __slots__ = ("app", "facts")

    def __init__(self, app: Any, writer: Any) -> None:
        self.app = app
        self.facts = connection_app(None, writer)

    async def __call__(
        self, scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any
    ) -> None:
        self.facts.apply(scope)
        await self.app(scope, receive, send, sync_spawn, call_soon)


class TLSTCPServer(_TCPServer):  # type: ignore[misc, valid-type, unused-ignore]
    """hypercorn's ``TCPServer`` with the connection's TLS facts in every scope.

    ``TCPServer.__init__`` gained a ``state`` argument in hypercorn 0.17; the
    app is the first argument and the stream writer the last in every
    version since, so the arguments are passed through as they are."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = _ConnectionAppWrapper(self.app, self.writer)


def install() -> None:
    """Make hypercorn's asyncio worker use :class:`TLSTCPServer` in this
    process (idempotent)."""
    if _hypercorn_run is None:
        raise ServerSetupError("hypercorn is not installed")
    _hypercorn_run.__dict__["TCPServer"] = TLSTCPServer


class CertgateConfig(_Config):  # type: ignore[misc, valid-type, unused-ignore]
    """``hypercorn.config.Config`` whose SSL context certgate prepares.

    ``per_tenant`` (a synchronous registry, a ``CertGate`` or a certgate TOML
    path), ``per_tenant_max_contexts`` and ``per_tenant_unknown_sni`` turn on
    per-tenant handshakes (:mod:`certgate.servers.tenant_contexts`)."""

    per_tenant: Any = None
    per_tenant_max_contexts: int = 1024
    per_tenant_unknown_sni: UnknownSNIRule = "no_anchors"
    tenant_contexts: TenantContexts | None = None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        context: ssl.SSLContext | None = super().create_ssl_context()
        if context is None:
            return None
        warn_no_client_certificates(context, _NO_CERT_FIX)
        prepare_server_context(context)
        if self.per_tenant is None:
            return context
        if self.tenant_contexts is None:
            if self.certfile is None:
                raise ServerSetupError("per_tenant needs certfile and keyfile")
            self.tenant_contexts = TenantContexts.for_listener(
                self.per_tenant,
                context,
                self.certfile,
                self.keyfile,
                password=self.keyfile_password,
                max_contexts=self.per_tenant_max_contexts,
                unknown_sni=self.per_tenant_unknown_sni,
                alpn_protocols=self.alpn_protocols,
            )
        return self.tenant_contexts.install(context)


def config(**settings: Any) -> CertgateConfig:
    """A :class:`CertgateConfig` with ``settings`` set as attributes
    (``bind``, ``certfile``, ``keyfile``, ``ca_certs``, ``per_tenant``, ...);
    ``verify_mode`` defaults to ``ssl.CERT_OPTIONAL`` (certgate answers 403
    without a certificate)."""
    if _hypercorn_run is None:
        raise ServerSetupError("hypercorn is not installed")
    cfg = CertgateConfig()
    settings.setdefault("verify_mode", ssl.CERT_OPTIONAL)
    for key, value in settings.items():
        if key != "bind" and not hasattr(cfg, key):
            raise ServerSetupError(f"hypercorn has no setting {key!r}")
        setattr(cfg, key, [value] if key == "bind" and isinstance(value, str) else value)
    return cfg


async def serve(app: Any, cfg: Any, **kwargs: Any) -> None:
    """``hypercorn.asyncio.serve`` with :func:`install` done first."""
    from hypercorn.asyncio import serve as hypercorn_serve  # noqa: PLC0415

    if getattr(cfg, "worker_class", "asyncio") not in ("asyncio", "uvloop"):
        raise ServerSetupError("certgate's hypercorn adapter covers the asyncio worker only")
    if getattr(cfg, "workers", 1) != 1:
        raise ServerSetupError(
            "certgate's hypercorn adapter reaches this process only: use workers = 1"
        )
    install()
    await hypercorn_serve(app, cfg, **kwargs)


def run(app: Any, cfg: Any) -> None:
    """Serve ``app`` with ``cfg`` until interrupted (``asyncio.run(serve(...))``)."""
    asyncio.run(serve(app, cfg))
