"""The ASGI ``tls`` extension (``scope["extensions"]["tls"]``).

Reads ``client_cert_chain`` (PEM strings, leaf first) - the only key the
asgiref spec is keeping. A non-empty ``client_cert_error`` from the server is
treated as a rejection (``untrusted_chain``), never ignored. The chain is
re-verified against the addressed tenant whatever the server checked during
the handshake. No released ASGI server fills this extension yet: use
:mod:`certgate.servers.uvicorn` under uvicorn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..errors import Rejected
from ..facts import Presented
from ..pem import MAX_PRESENTED_CERTIFICATES, pem_list_to_ders
from ..reasons import Reason

SOURCE = "asgi_tls"


_MEMO = "certgate.presented"
"""Key under which :func:`from_scope` remembers its answer in the ``tls``
dict: a server that keeps one dict per connection (certgate's uvicorn
adapter does) gets the chain joined and hashed once per connection."""


def from_scope(scope: Mapping[str, Any]) -> Presented | None:
    """The certificate of the connection, or ``None`` if the client sent none.

    The answer is remembered in the ``tls`` dict itself, together with the
    ``client_cert_error`` object and a copy of the ``client_cert_chain`` it
    was read from, and reused only while the dict still holds that error
    object and a chain equal to the copy (a list rewritten in place is a
    new chain)."""
    extensions = scope.get("extensions")
    tls = extensions.get("tls") if isinstance(extensions, Mapping) else None
    if not isinstance(tls, Mapping):
        return None
    error = tls.get("client_cert_error")
    chain = tls.get("client_cert_chain")
    memo = tls.get(_MEMO)
    # Compared by value: a list and its strings compare item by item, each
    # by identity first, so an unchanged chain costs a few pointer checks.
    if isinstance(memo, _Memo) and memo.error is error and memo.chain == chain:
        return memo.presented
    presented = _read(error, chain)
    if isinstance(tls, dict) and (chain is None or type(chain) in (list, tuple)):
        kept = chain.copy() if type(chain) is list else chain  # same type: == compares items
        tls[_MEMO] = _Memo(kept, error, presented)
    return presented


class _Memo(NamedTuple):
    chain: object
    """The chain the answer was read from (a list: a copy of it)."""
    error: object
    presented: Presented | None


def _read(error: object, chain: object) -> Presented | None:
    if error:
        return Presented.refused(
            SOURCE, Rejected(Reason.UNTRUSTED_CHAIN, f"server reported: {str(error)[:200]}")
        )
    if not chain:
        return None
    if isinstance(chain, str | bytes) or not hasattr(chain, "__iter__"):
        return Presented.refused(
            SOURCE, Rejected(Reason.MALFORMED_CERTIFICATE, "client_cert_chain is not a list")
        )
    items = list(chain)[: MAX_PRESENTED_CERTIFICATES + 1]
    pems: list[str] = []
    for item in items:
        text = item.decode("latin-1") if isinstance(item, bytes) else item
        if not isinstance(text, str):
            return Presented.refused(
                SOURCE, Rejected(Reason.MALFORMED_CERTIFICATE, "non-PEM chain entry")
            )
        pems.append(text)
    material = "\n".join(pems).encode("latin-1", "replace")
    return Presented(
        source=SOURCE,
        material=material,
        decode=lambda: pem_list_to_ders(pems, "the TLS chain"),
        digest=hashlib.sha256(material).digest(),
    )
