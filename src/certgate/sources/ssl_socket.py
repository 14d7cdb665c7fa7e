"""The client chain of a server-side ``ssl.SSLSocket`` or ``ssl.SSLObject``.

Python 3.13 added ``get_unverified_chain()``; on 3.11 and 3.12 the same call
exists only on the private ``_sslobj``, which is used when present (the result
is re-verified by certgate anyway, so nothing here is trusted). Without
either, only the leaf is available and intermediates must come from the
tenant's configuration.

A TLS session resumed from a session ticket carries the client's leaf but
not the intermediates it sent on the full handshake, so such a connection
shows only the leaf. certgate's server helpers turn tickets off
(:func:`certgate.servers.tls.prepare_server_context`); on a context certgate
did not prepare (one that still allows tickets), :func:`peer_chain_der` logs
one ``WARNING`` per process the first time a resumed session yields only a
leaf. On a context with tickets off a resumed session comes from the
server's session cache, which keeps the chain, so a leaf alone there is what
the client sent (a device whose tenant configures its intermediates) and is
not logged.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

_log = logging.getLogger("certgate")
_warned = threading.Event()


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
    if (
        len(chain) == 1
        and not _warned.is_set()
        and getattr(conn, "session_reused", False) is True
        and _tickets_possible(getattr(conn, "context", None))
    ):
        _warned.set()
        _log.warning(
            "a resumed TLS session showed only the client's leaf certificate: intermediates "
            "the client sent on its full handshake are lost on resumption, so its requests "
            "may be refused as untrusted_chain. Turn session tickets off on the server "
            "context (certgate.servers.tls.prepare_server_context). Logged once."
        )
    return chain


def _tickets_possible(context: object) -> bool:
    """Whether ``context`` may issue or accept session tickets (the only
    resumption that loses the chain). ``True`` when it cannot be told. With
    tickets off a resumed session comes from the server's session cache,
    which keeps the chain: a leaf alone is then all the client sent."""
    if not isinstance(context, ssl.SSLContext):
        return True
    return not (context.options & ssl.OP_NO_TICKET and context.num_tickets == 0)


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
