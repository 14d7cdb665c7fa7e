"""Caddy: ``header_up X-Client-Cert {http.request.tls.client.certificate_der_base64}``.

Certificate: the leaf only, standard base64 of its DER (configure the
tenant's intermediates). Caddy forwards no verify status: whether it
verified the certificate depends on its ``client_auth`` mode, and certgate
verifies the chain against the tenant's roots either way. Option:
``cert_header``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..facts import Presented
from .base import header_option, register, single_value
from .decode import der_from_base64, material


class CaddySource:
    """Header source for Caddy's forwarded client certificate."""

    name = "caddy"

    def __init__(self, *, cert_header: str = "x-client-cert") -> None:
        self.cert_header = header_option(cert_header, "cert_header")
        self.header_names: tuple[str, ...] = (self.cert_header,)

    def extract(self, headers: Mapping[str, Sequence[str]]) -> Presented | None:
        value = single_value(headers, self.cert_header)
        if value is None:
            return None
        return Presented(
            source=self.name, material=material(value), decode=lambda: [der_from_base64(value)]
        )


register(CaddySource.name, CaddySource)
