"""Where client certificates come from. One module per source.

Transport sources read the certificate the TLS server itself received:

* :mod:`~certgate.sources.asgi_tls` - the ASGI ``tls`` extension;
* :mod:`~certgate.sources.wsgi_environ` - ``SSL_CLIENT_CERT*`` and the peer
  certificate of ``gunicorn.socket`` / ``werkzeug.socket``;
* :mod:`~certgate.sources.ssl_socket` - the chain of an ``ssl`` socket/object.

Header sources read a certificate forwarded by a trusted edge; they implement
:class:`~certgate.sources.base.HeaderSource` and register by name (the
presets): ``cloudflare``, ``rfc9440``, ``nginx``, ``ingress-nginx``,
``envoy`` (``xfcc``, ``istio``), ``traefik``, ``aws-alb``, ``azure``,
``gcp``, ``caddy``, ``haproxy``, ``apache`` - one module each.

The public API for writing a custom header source is exported here: the
:class:`HeaderSource` protocol, :func:`register` and :func:`header_source`,
the header readers (:func:`single_value`, :func:`one_line`,
:func:`list_value`), the decoders of :mod:`~certgate.sources.decode`
(:func:`der_from_base64`, :func:`ders_from_pem_text`,
:func:`ders_from_urlencoded_pem`, :func:`sf_binary`, ...) and
:func:`material` / :func:`status_refusal`.
"""

from __future__ import annotations

from .base import (
    MAX_HEADER_CHARS,
    HeaderSource,
    header_source,
    list_value,
    one_line,
    register,
    registered_names,
    single_value,
)
from .decode import (
    der_from_base64,
    der_from_pem_text,
    ders_from_base64_concatenated,
    ders_from_pem_text,
    ders_from_urlencoded_pem,
    material,
    sf_binary,
    sf_binary_list,
    status_refusal,
)

__all__ = [
    "MAX_HEADER_CHARS",
    "HeaderSource",
    "der_from_base64",
    "der_from_pem_text",
    "ders_from_base64_concatenated",
    "ders_from_pem_text",
    "ders_from_urlencoded_pem",
    "header_source",
    "list_value",
    "material",
    "one_line",
    "register",
    "registered_names",
    "sf_binary",
    "sf_binary_list",
    "single_value",
    "status_refusal",
]
