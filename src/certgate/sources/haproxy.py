"""HAProxy: ``%[ssl_c_der,base64]``, ``%[ssl_c_chain_der,base64]``, ``%[ssl_c_verify]``.

Headers (defaults): ``X-SSL-Client-Cert`` (the leaf: standard base64 of its
DER), ``X-SSL-Client-Chain`` (optional: ONE base64 blob of the presented
chain's DER certificates concatenated back to back, split by their DER
lengths; a copy of the leaf at its start is dropped) and
``X-SSL-Client-Verify`` (``ssl_c_verify``: ``0`` means verified).

Status (``verify_status``, on by default): with a certificate the verify
header must be ``0``; a missing header or any other value (an OpenSSL
verify error code, as ``crt-ignore-err`` lets through) refuses with
``proxy_verify_failed``; a non-zero code without a certificate refuses too.
``verify_status = false`` for an HAProxy that forwards unverified
certificates on purpose (``verify optional`` without ``ca-file``).
Options: ``cert_header``, ``chain_header`` (``""`` to read none),
``verify_header``, ``verify_status``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import Rejected
from ..facts import Presented
from ..pem import MAX_PRESENTED_CERTIFICATES
from ..reasons import Reason
from .base import bool_option, header_option, one_line, register, single_value
from .decode import der_from_base64, ders_from_base64_concatenated, material, status_refusal


def _verified(status: str) -> bool:
    return status == "0"


class HAProxySource:
    """Header source for HAProxy's forwarded client certificate and chain."""

    name = "haproxy"

    def __init__(
        self,
        *,
        cert_header: str = "x-ssl-client-cert",
        chain_header: str = "x-ssl-client-chain",
        verify_header: str = "x-ssl-client-verify",
        verify_status: bool = True,
    ) -> None:
        self.cert_header = header_option(cert_header, "cert_header")
        self.chain_header = header_option(chain_header, "chain_header") if chain_header else None
        self.verify_header = header_option(verify_header, "verify_header")
        self.verify_status = bool_option(verify_status, "verify_status")
        names = [self.cert_header]
        if self.chain_header:
            names.append(self.chain_header)
        if self.verify_status:
            names.append(self.verify_header)
        self.header_names: tuple[str, ...] = tuple(dict.fromkeys(names))

    def extract(self, headers: Mapping[str, Sequence[str]]) -> Presented | None:
        leaf = single_value(headers, self.cert_header)
        chain = single_value(headers, self.chain_header) if self.chain_header else None
        if self.verify_status:
            refusal = status_refusal(
                self.name,
                self.verify_header,
                one_line(headers, self.verify_header),
                certificate=leaf is not None,
                passes=_verified,
            )
            if refusal is not None:
                return refusal
        if leaf is None:
            return None

        def decode() -> list[bytes]:
            der = der_from_base64(leaf)
            if chain is None:
                return [der]
            rest = ders_from_base64_concatenated(chain)
            if rest and rest[0] == der:  # a chain that starts with the leaf
                rest = rest[1:]
            if len(rest) >= MAX_PRESENTED_CERTIFICATES:
                raise Rejected(
                    Reason.MALFORMED_CERTIFICATE,
                    f"more than {MAX_PRESENTED_CERTIFICATES} certificates presented",
                )
            return [der, *rest]

        return Presented(source=self.name, material=material(leaf, chain), decode=decode)


register(HAProxySource.name, HAProxySource)
