"""The ASGI ``tls`` extension (``scope["extensions"]["tls"]``).

Reads ``client_cert_chain`` (PEM strings, leaf first) - the only key the
asgiref spec is keeping. A non-empty ``client_cert_error`` from the server is
treated as a rejection (``untrusted_chain``), never ignored. The chain is
re-verified against the addressed tenant whatever the server checked during
the handshake. No released ASGI server fills this extension yet: use
:mod:`certgate.servers.uvicorn` under uvicorn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import Rejected
from ..facts import Presented
from ..pem import MAX_PRESENTED_CERTIFICATES, pem_list_to_ders
from ..reasons import Reason

SOURCE = "asgi_tls"


def from_scope(scope: Mapping[str, Any]) -> Presented | None:
    """The certificate of the connection, or ``None`` if the client sent none."""
    extensions = scope.get("extensions")
    tls = extensions.get("tls") if isinstance(extensions, Mapping) else None
    if not isinstance(tls, Mapping):
        return None
    error = tls.get("client_cert_error")
    chain = tls.get("client_cert_chain")
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
    )
