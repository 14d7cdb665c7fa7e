"""RFC 9440: ``Client-Cert`` and ``Client-Cert-Chain``.

``Client-Cert`` is one structured-field byte sequence ``:base64(DER):`` (the
leaf); ``Client-Cert-Chain`` an sf-list of byte sequences (the intermediates,
normally without the root; may be sent as several lines, which HTTP joins
with commas). Anything that is not a valid byte sequence - missing colons,
characters outside base64, parameters - is ``malformed_header``. A chain
without a ``Client-Cert`` is ignored ("no certificate"). RFC 9440 carries
no verify status. Options: ``cert_header``, ``chain_header`` (``""``: read
no chain).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import Rejected
from ..facts import Presented
from ..pem import MAX_PRESENTED_CERTIFICATES
from ..reasons import Reason
from .base import header_option, list_value, register, single_value
from .decode import material, sf_binary, sf_binary_list


def leaf_and_chain(leaf: str, chain: str | None, what: str) -> list[bytes]:
    """Decode an RFC 9440 leaf and its optional chain, leaf first."""
    ders = [sf_binary(leaf, what)]
    if chain is not None:
        ders.extend(sf_binary_list(chain, what))
    if len(ders) > MAX_PRESENTED_CERTIFICATES:
        raise Rejected(
            Reason.MALFORMED_CERTIFICATE,
            f"more than {MAX_PRESENTED_CERTIFICATES} certificates presented",
        )
    return ders


def presented(name: str, leaf: str | None, chain: str | None) -> Presented | None:
    """What an RFC 9440-form leaf and chain present (``None``: no leaf),
    decoded only when the gate needs the certificates."""
    if leaf is None:
        return None
    return Presented(
        source=name,
        material=material(leaf, chain),
        decode=lambda: leaf_and_chain(leaf, chain, name),
    )


class RFC9440Source:
    """Header source for RFC 9440 ``Client-Cert`` / ``Client-Cert-Chain``."""

    name = "rfc9440"

    def __init__(
        self, *, cert_header: str = "client-cert", chain_header: str = "client-cert-chain"
    ) -> None:
        self.cert_header = header_option(cert_header, "cert_header")
        self.chain_header = header_option(chain_header, "chain_header") if chain_header else None
        self.header_names: tuple[str, ...] = tuple(
            dict.fromkeys(n for n in (self.cert_header, self.chain_header) if n)
        )

    def extract(self, headers: Mapping[str, Sequence[str]]) -> Presented | None:
        leaf = single_value(headers, self.cert_header)
        chain = list_value(headers, self.chain_header) if self.chain_header else None
        return presented(self.name, leaf, chain)


register(RFC9440Source.name, RFC9440Source)
