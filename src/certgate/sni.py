"""The TLS server name (SNI) a client asked for, as the server adapters see it.

Python's ``ssl`` module tells a *server* the requested name only inside an
``SSLContext.sni_callback``; afterwards neither ``SSLSocket`` nor
``SSLObject`` exposes it. certgate's server helpers install a callback that
records the name on the connection's TLS object with :func:`remember`, and
the adapters read it back with :func:`server_name`:

* ASGI: certgate's uvicorn/hypercorn adapters put it in every scope of the
  connection under ``scope["certgate.sni"]`` (:data:`SCOPE_KEY`);
* WSGI: the middleware reads it from ``environ["gunicorn.socket"]`` /
  ``environ["werkzeug.socket"]``.

``None`` means "not known": the client sent no SNI (a connection to an IP
address), or the server's context has no certgate callback. Only a value
recorded by certgate's own callback is ever returned: a name is an
ASCII host name (IDNA A-label form, as it arrives on the wire), lowercased,
at most 253 characters.
"""

from __future__ import annotations

import contextlib
from typing import Any

SCOPE_KEY = "certgate.sni"
"""ASGI scope key holding the connection's SNI (``str``) or ``None``."""

_ATTRIBUTE = "_certgate_sni"
_MAX = 253


def remember(conn: Any, name: str | None) -> None:
    """Record ``name`` (from an ``sni_callback``) on ``conn``, the server-side
    ``ssl.SSLSocket`` or ``ssl.SSLObject``. Names that are not plain ASCII
    host names of at most 253 characters are recorded as ``None``."""
    value: str | None = None
    if isinstance(name, str) and 0 < len(name) <= _MAX and name.isascii():
        value = name.lower().rstrip(".") or None
    with contextlib.suppress(AttributeError, TypeError):  # no __dict__: stays unknown
        setattr(conn, _ATTRIBUTE, value)


def server_name(conn: Any) -> str | None:
    """The SNI recorded on ``conn`` by :func:`remember`, or ``None``."""
    value = getattr(conn, _ATTRIBUTE, None)
    return value if isinstance(value, str) else None
