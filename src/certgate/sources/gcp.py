"""Google Cloud Application Load Balancer mTLS: custom request headers.

GCP forwards nothing by default: the operator adds custom request headers
with variables, under names of their choice. certgate's defaults follow the
names Google's documentation uses in its examples::

    X-Client-Cert-Present:        {client_cert_present}
    X-Client-Cert-Chain-Verified: {client_cert_chain_verified}
    X-Client-Cert-Leaf:           {client_cert_leaf}
    X-Client-Cert-Chain:          {client_cert_chain}      (optional)

Leaf and chain are taken to be in RFC 9440 form (``:base64(DER):``, the
chain an sf-list), as Google documents them; this has not been tested
against a real Google load balancer.

Status (``verify_status``, on by default): with a leaf, both
``X-Client-Cert-Present`` and ``X-Client-Cert-Chain-Verified`` must be
``true`` (exactly); anything else, or a missing header, refuses with
``proxy_verify_failed`` - and so does ``present = true`` with
``chain-verified`` not ``true`` even without a leaf (the load balancer's
"allow invalid" mode). Options: ``cert_header``, ``chain_header`` (``""``:
none), ``present_header``, ``verified_header``, ``verify_status``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import Rejected
from ..facts import Presented
from ..reasons import Reason
from .base import bool_option, header_option, list_value, one_line, register, single_value
from .rfc9440 import presented


class GcpSource:
    """Header source for a Google Cloud load balancer's mTLS headers."""

    name = "gcp"

    def __init__(
        self,
        *,
        cert_header: str = "x-client-cert-leaf",
        chain_header: str = "x-client-cert-chain",
        present_header: str = "x-client-cert-present",
        verified_header: str = "x-client-cert-chain-verified",
        verify_status: bool = True,
    ) -> None:
        self.cert_header = header_option(cert_header, "cert_header")
        self.chain_header = header_option(chain_header, "chain_header") if chain_header else None
        self.present_header = header_option(present_header, "present_header")
        self.verified_header = header_option(verified_header, "verified_header")
        self.verify_status = bool_option(verify_status, "verify_status")
        names = [self.cert_header]
        if self.chain_header:
            names.append(self.chain_header)
        if self.verify_status:
            names += [self.present_header, self.verified_header]
        self.header_names: tuple[str, ...] = tuple(dict.fromkeys(names))

    def _refusal(self, headers: Mapping[str, Sequence[str]], leaf: bool) -> Presented | None:
        present = one_line(headers, self.present_header)
        verified = one_line(headers, self.verified_header)
        if not leaf and present in (None, "false"):
            return None  # no certificate
        if present == "true" and verified == "true":
            return None
        detail = (
            f"{self.present_header}: {'missing' if present is None else 'not true'}"
            if present != "true"
            else f"{self.verified_header}: {'missing' if verified is None else 'not true'}"
        )
        return Presented.refused(self.name, Rejected(Reason.PROXY_VERIFY_FAILED, detail))

    def extract(self, headers: Mapping[str, Sequence[str]]) -> Presented | None:
        leaf = single_value(headers, self.cert_header)
        chain = list_value(headers, self.chain_header) if self.chain_header else None
        if self.verify_status:
            refusal = self._refusal(headers, leaf is not None)
            if refusal is not None:
                return refusal
        return presented(self.name, leaf, chain)


register(GcpSource.name, GcpSource)
