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
from ..pem import MAX_PRESENTED_CERTIFICATES, pem_to_der
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
        return _verdict(Rejected(Reason.UNTRUSTED_CHAIN, f"server reported: {str(error)[:200]}"))
    if not chain:
        return None
    if isinstance(chain, str | bytes) or not hasattr(chain, "__iter__"):
        return _verdict(Rejected(Reason.MALFORMED_CERTIFICATE, "client_cert_chain is not a list"))
    items = list(chain)[: MAX_PRESENTED_CERTIFICATES + 1]
    pems: list[str] = []
    for item in items:
        text = item.decode("latin-1") if isinstance(item, bytes) else item
        if not isinstance(text, str):
            return _verdict(Rejected(Reason.MALFORMED_CERTIFICATE, "non-PEM chain entry"))
        pems.append(text)
    material = "\n".join(pems).encode("latin-1", "replace")
    return Presented(
        source=SOURCE,
        material=material,
        decode=lambda: _decode(pems),
    )


def _decode(pems: list[str]) -> list[bytes]:
    if len(pems) > MAX_PRESENTED_CERTIFICATES:
        raise Rejected(Reason.MALFORMED_CERTIFICATE, "too many certificates in the TLS chain")
    return [pem_to_der(pem) for pem in pems]


def _verdict(rejection: Rejected) -> Presented:
    def fail() -> list[bytes]:
        raise rejection

    return Presented(source=SOURCE, material=b"", decode=fail, verdict=rejection)
