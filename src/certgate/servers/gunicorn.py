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
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from .tls import prepare_server_context


def ssl_context(
    config: Any, default_ssl_context_factory: Callable[[], ssl.SSLContext]
) -> ssl.SSLContext:
    """gunicorn's ``ssl_context`` server hook."""
    return prepare_server_context(default_ssl_context_factory())
