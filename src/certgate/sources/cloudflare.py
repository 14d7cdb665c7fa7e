"""Cloudflare certificate forwarding: ``Cf-Client-Cert-Der-Base64``.

Format: standard base64 of the leaf certificate's DER, no chain (Cloudflare
sends the leaf only, so intermediates must be configured on the tenant).
``Cf-Client-Cert-Sha256``, when present, must be the hex SHA-256 of that DER
(either case); a mismatch rejects with ``fingerprint_mismatch``.

Trust: these headers are believed only from a socket peer inside
``trusted_proxies`` (Cloudflare's egress ranges, or better the address of your
own proxy that receives Authenticated Origin Pulls); from any other peer they
are deleted before the application runs. Cloudflare's own verification
result is not trusted: certgate verifies the chain against the tenant's roots
itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ..errors import Rejected
from ..facts import Presented
from ..pem import b64_to_der
from ..reasons import Reason
from .base import register, single_value

CERT_HEADER = "cf-client-cert-der-base64"
SHA256_HEADER = "cf-client-cert-sha256"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class CloudflareSource:
    """Header source for Cloudflare's forwarded client certificate."""

    name = "cloudflare"
    header_names: tuple[str, ...] = (CERT_HEADER, SHA256_HEADER)

    def extract(self, headers: Mapping[str, Sequence[str]]) -> Presented | None:
        value = single_value(headers, CERT_HEADER)
        digest = single_value(headers, SHA256_HEADER)
        if value is None:
            return None
        if digest is not None and not _HEX64.fullmatch(digest):
            raise Rejected(Reason.MALFORMED_HEADER, f"{SHA256_HEADER} is not 64 hex digits")
        return Presented(
            source=self.name,
            material=value.encode("latin-1"),
            decode=lambda: [b64_to_der(value)],
            expected_sha256=digest.lower() if digest else None,
        )


register(CloudflareSource.name, CloudflareSource)
