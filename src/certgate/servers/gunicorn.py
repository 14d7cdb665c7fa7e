"""gunicorn: the client certificate of a WSGI request.

gunicorn puts the ``ssl.SSLSocket`` in ``environ["gunicorn.socket"]``;
:mod:`certgate.sources.wsgi_environ` reads the peer certificate from it, so
the WSGI middleware needs nothing more. What gunicorn needs is a context that
*asks* for a client certificate. In ``gunicorn.conf.py``::

    from certgate.servers.gunicorn import ssl_context  # noqa: F401 (a hook)

    certfile = "server.pem"
    keyfile = "server.key"
    ca_certs = "tenants-bundle.pem"   # `certgate bundle --config certgate.toml`
    cert_reqs = 1                     # ssl.CERT_OPTIONAL: certgate answers 403

The hook keeps gunicorn's own context and prepares it with
:func:`certgate.servers.tls.prepare_server_context`: validity times are left
to certgate, a tenant anchored at an issuing CA passes the handshake, and
session tickets are off (a resumed session would lose the client's
intermediates).

**Underscore header aliases.** WSGI folds ``Cf-Client-Cert-Der-Base64`` and
``Cf_Client_Cert_Der_Base64`` into the same environ key, so certgate cannot
tell from the environ which spelling arrived. gunicorn (>= 22) drops header
names with an underscore by default (``header_map = "drop"``), unless
``header_map = "dangerous"``, or the peer is in ``forwarded_allow_ips`` and
the name is listed in ``forwarder_headers`` (or that list holds ``"*"``).
The :func:`on_starting` and :func:`post_worker_init` hooks refuse to start
gunicorn with any of those settings for a certificate header, and record in
each worker that its settings were checked; behind a trusted proxy, the WSGI
middleware believes a certificate header under gunicorn only after that
check (see :class:`certgate.wsgi.CertGateWSGIMiddleware`)::

    from certgate.servers.gunicorn import on_starting, post_worker_init  # noqa: F401

A configuration that defines its own ``post_worker_init`` calls
``certgate.servers.gunicorn.post_worker_init(worker)`` from it.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..sources.known_headers import KNOWN_CERTIFICATE_HEADERS
from .tenant_contexts import TenantContexts, UnknownSNIRule
from .tls import prepare_server_context, warn_no_client_certificates

_NO_CERT_FIX = "set cert_reqs = 1 (--cert-reqs 1) and ca_certs in gunicorn's configuration"


def ssl_context(
    config: Any, default_ssl_context_factory: Callable[[], ssl.SSLContext]
) -> ssl.SSLContext:
    """gunicorn's ``ssl_context`` server hook (logs one start-up ``WARNING``
    when ``cert_reqs`` asks for no client certificate)."""
    context = prepare_server_context(default_ssl_context_factory())
    warn_no_client_certificates(context, _NO_CERT_FIX)
    return context


class PerTenantSSLContext:
    """A gunicorn ``ssl_context`` hook for per-tenant handshakes
    (:class:`~certgate.servers.tenant_contexts.TenantContexts`)::

        # gunicorn.conf.py
        from certgate.servers.gunicorn import PerTenantSSLContext
        ssl_context = PerTenantSSLContext("/etc/certgate/certgate.toml")
        cert_reqs = 1        # required: the listener's verify mode is kept

    ``source``: a certgate TOML path (its registry is loaded in each worker
    the first time the hook runs), a synchronous registry or a ``CertGate``.
    gunicorn's ``certfile``/``keyfile`` are loaded into every per-tenant
    context; gunicorn's ``ca_certs`` (optional) is what the ``"listener"``
    rule for an unknown SNI trusts (unset, gunicorn's default context loads
    the system's CA store instead, which only that rule would use). The
    listener context is still gunicorn's, built for every connection: leave
    ``ca_certs`` unset unless the ``"listener"`` rule needs it.
    """

    def __init__(
        self, source: Any, *, max_contexts: int = 1024, unknown_sni: UnknownSNIRule = "no_anchors"
    ) -> None:
        self.source = source
        self.max_contexts = max_contexts
        self.unknown_sni: UnknownSNIRule = unknown_sni
        self.contexts: TenantContexts | None = None

    def __call__(
        self, config: Any, default_ssl_context_factory: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        context = default_ssl_context_factory()
        warn_no_client_certificates(context, _NO_CERT_FIX)
        if self.contexts is None:  # once per worker: gunicorn calls this per connection
            self.contexts = TenantContexts.for_listener(
                self.source,
                context,
                config.certfile,
                config.keyfile,
                max_contexts=self.max_contexts,
                unknown_sni=self.unknown_sni,
                alpn_protocols=_alpn_protocols(config),
            )
        return self.contexts.install(context)


def _alpn_protocols(config: Any) -> list[str]:
    """The ALPN protocols gunicorn sets on its listener for ``config``
    (``http_protocols`` with ``h2``); none for a gunicorn without HTTP/2."""
    if not getattr(config, "http_protocols", None):
        return []
    try:
        from gunicorn.sock import _get_alpn_protocols  # noqa: PLC0415 - gunicorn's own
    except ImportError:
        return []
    return list(_get_alpn_protocols(config))


# -- underscore aliases of certificate headers (header_map) -----------------

SAFE_HEADER_MAPS = frozenset({"drop", "refuse"})
"""gunicorn ``header_map`` values that never put an underscore-spelled header
into the environ (``drop`` discards it, ``refuse`` answers 400)."""


@dataclass(frozen=True)
class HeaderHandling:
    """How a gunicorn configuration maps header names with an underscore.

    ``header_map`` is gunicorn's setting (``"legacy"`` for a gunicorn without
    one: before 22.0 every underscore name was mapped). ``forwarder_headers``
    are the upper-case names gunicorn maps from peers in
    ``forwarded_allow_ips`` whatever ``header_map`` says.
    """

    header_map: str
    forwarder_headers: frozenset[str]

    @classmethod
    def from_config(cls, cfg: Any) -> HeaderHandling:
        """Read gunicorn's ``Config`` (``server.cfg``, ``worker.cfg``)."""
        header_map = getattr(cfg, "header_map", None)
        forwarder = getattr(cfg, "forwarder_headers", None) or ()
        if isinstance(forwarder, str):
            forwarder = forwarder.split(",")
        return cls(
            header_map=header_map.strip().lower() if isinstance(header_map, str) else "legacy",
            forwarder_headers=frozenset(str(name).strip().upper() for name in forwarder),
        )

    def problems(self, certificate_headers: Iterable[str]) -> list[str]:
        """Why an underscore spelling of one of ``certificate_headers``
        (lowercase, dashed) could reach the environ; empty when none can."""
        found: list[str] = []
        if self.header_map not in SAFE_HEADER_MAPS:
            found.append(
                f"header_map = {self.header_map!r} maps underscore-spelled headers into the "
                "environ (use the default 'drop', or 'refuse')"
            )
        if "*" in self.forwarder_headers:
            found.append(
                "forwarder_headers contains '*': every underscore-spelled header from "
                "forwarded_allow_ips is mapped into the environ"
            )
        wanted = {name.lower() for name in certificate_headers}
        aliased = sorted(
            name
            for name in self.forwarder_headers
            if "_" in name and name.replace("_", "-").lower() in wanted
        )
        if aliased:
            found.append(f"forwarder_headers names certificate header(s) {aliased}")
        return found


class UnsafeHeaderHandling(ConfigError):
    """gunicorn is configured to map underscore-spelled certificate headers
    into the WSGI environ, where certgate cannot tell them from the real ones."""


_checked: HeaderHandling | None = None


def check_header_handling(
    cfg: Any, certificate_headers: Iterable[str] = KNOWN_CERTIFICATE_HEADERS
) -> HeaderHandling:
    """Raise :class:`UnsafeHeaderHandling` if gunicorn's ``cfg`` would map an
    underscore spelling of one of ``certificate_headers`` into the environ;
    return the settings otherwise. Checks configuration only, no request."""
    handling = HeaderHandling.from_config(cfg)
    problems = handling.problems(certificate_headers)
    if problems:
        raise UnsafeHeaderHandling(
            "certgate: refusing to run under this gunicorn configuration: "
            + "; ".join(problems)
            + ". WSGI folds '-' and '_' into one environ key, so a client could smuggle a "
            "certificate header past the proxy in its underscore spelling."
        )
    return handling


def checked_header_handling() -> HeaderHandling | None:
    """The settings :func:`post_worker_init` checked in this process, or
    ``None`` when it did not run here (not gunicorn, or the hook is not
    loaded)."""
    return _checked


def on_starting(server: Any) -> None:
    """gunicorn's ``on_starting`` server hook: refuse to start the arbiter
    with an unsafe ``header_map`` / ``forwarder_headers``."""
    check_header_handling(server.cfg)


def post_worker_init(worker: Any) -> None:
    """gunicorn's ``post_worker_init`` server hook: check the worker's
    settings (a failing worker stops gunicorn: "Worker failed to boot") and
    record them for :class:`~certgate.wsgi.CertGateWSGIMiddleware`."""
    global _checked  # noqa: PLW0603 - one verdict per worker process, set before it serves
    _checked = check_header_handling(worker.cfg)
