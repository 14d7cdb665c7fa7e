"""Caddy: ``header_up X-Client-Cert {http.request.tls.client.certificate_der_base64}``.

Certificate: the leaf only, standard base64 of its DER (configure the
tenant's intermediates). Caddy forwards no verify status: whether it
verified the certificate depends on its ``client_auth`` mode, and certgate
verifies the chain against the tenant's roots either way. Option:
``cert_header``.
"""

from __future__ import annotations

from .base import OneHeaderSource, register
from .decode import der_from_base64


class CaddySource(OneHeaderSource):
    """Header source for Caddy's forwarded client certificate."""

    name = "caddy"
    default_header = "x-client-cert"

    def decode_value(self, value: str) -> list[bytes]:
        return [der_from_base64(value)]


register(CaddySource.name, CaddySource)
