"""Where client certificates come from. One module per source.

Transport sources read the certificate the TLS server itself received:

* :mod:`~certgate.sources.asgi_tls` - the ASGI ``tls`` extension;
* :mod:`~certgate.sources.wsgi_environ` - ``SSL_CLIENT_CERT*`` and the peer
  certificate of ``gunicorn.socket`` / ``werkzeug.socket``;
* :mod:`~certgate.sources.ssl_socket` - the chain of an ``ssl`` socket/object.

Header sources read a certificate forwarded by a trusted edge; they implement
:class:`~certgate.sources.base.HeaderSource`:

* :mod:`~certgate.sources.cloudflare` - ``Cf-Client-Cert-Der-Base64``.
"""

from __future__ import annotations

from .base import HeaderSource, header_source

__all__ = ["HeaderSource", "header_source"]
