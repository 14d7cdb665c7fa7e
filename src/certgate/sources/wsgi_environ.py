"""Certificates a WSGI server put in the environ.

Looked up in this order (the first that yields a certificate wins):

1. the TLS socket: ``environ["gunicorn.socket"]`` or
   ``environ["werkzeug.socket"]`` - leaf plus the client's chain where the
   ``ssl`` module exposes it (see :mod:`certgate.sources.ssl_socket`);
2. ``SSL_CLIENT_CERT`` (PEM leaf: Werkzeug, Apache mod_wsgi with
   ``SSLOptions +ExportCertData``) with ``SSL_CLIENT_CERT_CHAIN_0``,
   ``_1``, ... (the leaf's issuer first).

These keys are set by the server, not by the client (client headers arrive
as ``HTTP_*``), so they are trusted as *transport facts*; the chain itself is
still verified against the addressed tenant.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Mapping
from typing import Any

from ..errors import Rejected
from ..facts import Presented
from ..pem import MAX_PRESENTED_CERTIFICATES, pem_list_to_ders
from ..reasons import Reason
from .ssl_socket import peer_chain_der

SOURCE = "wsgi_environ"
SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")


def tls_socket(environ: Mapping[str, Any]) -> ssl.SSLSocket | None:
    """The server's TLS socket for this request, if the server exposes one."""
    for key in SOCKET_KEYS:
        sock = environ.get(key)
        if isinstance(sock, ssl.SSLSocket):
            return sock
    return None


def from_environ(environ: Mapping[str, Any]) -> Presented | None:
    """The client certificate of this request, or ``None``."""
    sock = tls_socket(environ)
    if sock is not None:
        ders = peer_chain_der(sock)
        if ders:
            ders = ders[: MAX_PRESENTED_CERTIFICATES + 1]
            material = b"".join(ders)
            return Presented(
                source=SOURCE,
                material=material,
                decode=lambda: ders,
                digest=hashlib.sha256(material).digest(),
            )
    leaf = environ.get("SSL_CLIENT_CERT")
    if not leaf:
        return None
    pems: list[str] = [leaf] if isinstance(leaf, str) else []
    if not pems:
        return Presented.refused(
            SOURCE, Rejected(Reason.MALFORMED_CERTIFICATE, "SSL_CLIENT_CERT is not a string")
        )
    for index in range(MAX_PRESENTED_CERTIFICATES + 1):
        extra = environ.get(f"SSL_CLIENT_CERT_CHAIN_{index}")
        if not extra:
            break
        if not isinstance(extra, str):
            return Presented.refused(
                SOURCE,
                Rejected(
                    Reason.MALFORMED_CERTIFICATE, f"SSL_CLIENT_CERT_CHAIN_{index} is not a string"
                ),
            )
        pems.append(extra)
    material = "\n".join(pems).encode("latin-1", "replace")
    return Presented(
        source=SOURCE,
        material=material,
        decode=lambda: pem_list_to_ders(pems, "SSL_CLIENT_CERT_CHAIN_n"),
        digest=hashlib.sha256(material).digest(),
    )
