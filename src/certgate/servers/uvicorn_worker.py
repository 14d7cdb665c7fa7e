"""A gunicorn worker class running uvicorn with certgate's TLS-aware protocols.

    gunicorn -k certgate.servers.uvicorn_worker.UvicornWorker \\
        --certfile server.pem --keyfile server.key \\
        --ca-certs tenants-bundle.pem --cert-reqs 1 'app:create_app()'

uvicorn's own gunicorn worker (``uvicorn.workers.UvicornWorker``, or the
``uvicorn-worker`` package) uses uvicorn's plain protocol classes: the app
then sees no client certificate at all. This subclass (of the
``uvicorn-worker`` package's class when it is installed, else of uvicorn's
deprecated ``uvicorn.workers`` one) sets ``CONFIG_KWARGS`` to certgate's
HTTP and WebSocket protocol classes (:mod:`certgate.servers.uvicorn`) and,
on a TLS listener, uvicorn's ``ssl_context_factory`` to certgate's, so the
context gunicorn's settings describe is prepared in every worker
(:func:`~certgate.servers.tls.prepare_server_context`: deferred time checks,
issuing-CA anchors, no session tickets, SNI recorded). gunicorn's default
``ssl_version`` (the generic ``PROTOCOL_TLS``) is replaced by
``PROTOCOL_TLS_SERVER``, the only kind of context on which TLS 1.3 session
tickets can be turned off. Without
``--cert-reqs 1`` (gunicorn's default asks for no client certificate) each
worker logs one ``WARNING`` at start-up saying so.

Per-tenant handshakes (:mod:`certgate.servers.tenant_contexts`): subclass
and name the certgate TOML file whose registry the workers load::

    class PerTenantWorker(UvicornWorker):
        PER_TENANT = "/etc/certgate/certgate.toml"
        PER_TENANT_MAX_CONTEXTS = 1024
        PER_TENANT_UNKNOWN_SNI = "no_anchors"
"""

from __future__ import annotations

import ssl
import warnings
from typing import Any, ClassVar

from .tenant_contexts import UnknownSNIRule
from .uvicorn import (
    AutoTLSProtocol,
    AutoWebSocketsTLSProtocol,
    PerTenantContextFactory,
    ssl_context_factory,
)

try:
    from uvicorn_worker import (  # type: ignore[import-not-found, unused-ignore]
        UvicornWorker as _Base,
    )
except ImportError:
    with warnings.catch_warnings():  # uvicorn.workers warns that it is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        from uvicorn.workers import UvicornWorker as _Base


class UvicornWorker(_Base):  # type: ignore[misc, valid-type, unused-ignore]
    """gunicorn worker: uvicorn with certgate's protocols and TLS context."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        "http": AutoTLSProtocol,
        "ws": AutoWebSocketsTLSProtocol,
    }
    PER_TENANT: ClassVar[str | None] = None
    """Path of a certgate TOML file: per-tenant handshakes with its registry."""
    PER_TENANT_MAX_CONTEXTS: ClassVar[int] = 1024
    PER_TENANT_UNKNOWN_SNI: ClassVar[UnknownSNIRule] = "no_anchors"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.cfg.is_ssl:
            # gunicorn's default ssl_version is the generic PROTOCOL_TLS: its
            # contexts cannot turn TLS 1.3 session tickets off (num_tickets),
            # and tickets lose the client's intermediates on resumption.
            if self.config.ssl_version in (None, ssl.PROTOCOL_TLS):
                self.config.ssl_version = ssl.PROTOCOL_TLS_SERVER
            factory: Any = ssl_context_factory
            if self.PER_TENANT is not None:
                factory = PerTenantContextFactory(
                    self.PER_TENANT,
                    max_contexts=self.PER_TENANT_MAX_CONTEXTS,
                    unknown_sni=self.PER_TENANT_UNKNOWN_SNI,
                )
            self.config.ssl_context_factory = factory
