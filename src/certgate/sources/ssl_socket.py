"""The client chain of a server-side ``ssl.SSLSocket`` or ``ssl.SSLObject``.

Python 3.13 added ``get_unverified_chain()``; on 3.11 and 3.12 the same call
exists only on the private ``_sslobj``, which is used when present (the result
is re-verified by certgate anyway, so nothing here is trusted). Without
either, only the leaf is available and intermediates must come from the
tenant's configuration.
"""

from __future__ import annotations

import ssl
from typing import Any


def peer_chain_der(conn: ssl.SSLSocket | ssl.SSLObject | Any) -> list[bytes] | None:
    """DER certificates the client sent, leaf first; ``None`` without one."""
    try:
        leaf = conn.getpeercert(binary_form=True)
    except (ValueError, OSError, AttributeError):  # not connected / not TLS
        return None
    if not leaf:
        return None
    chain = [leaf]
    for der in _unverified_chain(conn):
        if der != leaf:
            chain.append(der)
    return chain


def _unverified_chain(conn: Any) -> list[bytes]:
    try:
        getter = getattr(conn, "get_unverified_chain", None)
        if getter is not None:
            return [bytes(der) for der in getter() or []]
        inner = getattr(conn, "_sslobj", None)
        raw = inner.get_unverified_chain() if inner is not None else None
        if not raw:
            return []
        return [cert.public_bytes(ssl_encoding_der()) for cert in raw]
    except (AttributeError, ValueError, TypeError, ssl.SSLError):
        return []


def ssl_encoding_der() -> int:
    import _ssl  # noqa: PLC0415 - private module, only for Python < 3.13

    return int(getattr(_ssl, "ENCODING_DER", 1))
