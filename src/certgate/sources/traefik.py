"""Traefik ``passTLSClientCert`` (``pem: true``): ``X-Forwarded-Tls-Client-Cert``.

Each certificate is the base64 of its DER (a PEM body without armour or
newlines), leaf first, joined with commas; before Traefik v2.9.4 the whole
value was also URL-escaped (``%2B``, ``%2F``, ``%3D``, ``%2C``), which is
decoded first (``unquote``, never ``unquote_plus``). The header must be
sent once (a second line is ``malformed_header``). Traefik forwards no
verify status (it depends on ``clientAuthType``; ``RequestClientCert``
passes unverified certificates); certgate verifies against the tenant's
roots. Option: ``cert_header``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import unquote

from ..errors import Rejected
from ..facts import Presented
from ..pem import MAX_PRESENTED_CERTIFICATES
from ..reasons import Reason
from .base import header_option, one_line, register
from .decode import der_from_base64, material


def decode_traefik(value: str) -> list[bytes]:
    """The DER certificates of a Traefik header value, leaf first."""
    text = unquote(value) if "%" in value else value
    parts = text.split(",", MAX_PRESENTED_CERTIFICATES)
    if len(parts) > MAX_PRESENTED_CERTIFICATES:
        raise Rejected(
            Reason.MALFORMED_CERTIFICATE,
            f"more than {MAX_PRESENTED_CERTIFICATES} certificates presented",
        )
    return [der_from_base64(part.strip()) for part in parts]


class TraefikSource:
    """Header source for Traefik's forwarded client certificates."""

    name = "traefik"

    def __init__(self, *, cert_header: str = "x-forwarded-tls-client-cert") -> None:
        self.cert_header = header_option(cert_header, "cert_header")
        self.header_names: tuple[str, ...] = (self.cert_header,)

    def extract(self, headers: Mapping[str, Sequence[str]]) -> Presented | None:
        value = one_line(headers, self.cert_header)
        if value is None:
            return None
        return Presented(
            source=self.name, material=material(value), decode=lambda: decode_traefik(value)
        )


register(TraefikSource.name, TraefikSource)
