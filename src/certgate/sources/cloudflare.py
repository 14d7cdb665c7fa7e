"""Cloudflare certificate forwarding: ``Cf-Client-Cert-Der-Base64``.

Format: standard base64 of the leaf certificate's DER, no chain (Cloudflare
sends the leaf only, so intermediates must be configured on the tenant).
``Cf-Client-Cert-Sha256``, when present, must be the hex SHA-256 of that DER
(either case); a mismatch rejects with ``fingerprint_mismatch``.

Trust: these headers are believed only from a socket peer inside
``trusted_proxies`` (Cloudflare's egress ranges, or better the address of your
own proxy that receives Authenticated Origin Pulls); from any other peer they
are deleted before the application runs. certgate verifies the chain
against the tenant's roots itself.

Status (``verify_status``, **off** by default): plain certificate forwarding
sends no verify status at all. Cloudflare's separate managed transform "Add
TLS client auth headers" adds ``cf-cert-verified`` and ``cf-cert-revoked``;
with ``verify_status = true`` a forwarded certificate also needs
``cf-cert-verified: true`` and ``cf-cert-revoked: false`` (a missing header
or any other value: ``proxy_verify_failed``). It is opt-in because turning
it on without that transform would refuse every request, and because
Cloudflare verifies against the zone's CA, not the tenant's roots: its
useful addition is the revocation verdict. Options: ``cert_header``,
``sha256_header``, ``verify_status``, ``verified_header``,
``revoked_header``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ..errors import Rejected
from ..facts import Presented
from ..pem import b64_to_der
from ..reasons import Reason
from .base import bool_option, header_option, one_line, register, single_value
from .decode import status_refusal

CERT_HEADER = "cf-client-cert-der-base64"
SHA256_HEADER = "cf-client-cert-sha256"
VERIFIED_HEADER = "cf-cert-verified"
REVOKED_HEADER = "cf-cert-revoked"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class CloudflareSource:
    """Header source for Cloudflare's forwarded client certificate."""

    name = "cloudflare"

    def __init__(
        self,
        *,
        cert_header: str = CERT_HEADER,
        sha256_header: str = SHA256_HEADER,
        verify_status: bool = False,
        verified_header: str = VERIFIED_HEADER,
        revoked_header: str = REVOKED_HEADER,
    ) -> None:
        self.cert_header = header_option(cert_header, "cert_header")
        self.sha256_header = header_option(sha256_header, "sha256_header")
        self.verify_status = bool_option(verify_status, "verify_status")
        self.verified_header = header_option(verified_header, "verified_header")
        self.revoked_header = header_option(revoked_header, "revoked_header")
        names = [self.cert_header, self.sha256_header]
        if self.verify_status:
            names += [self.verified_header, self.revoked_header]
        self.header_names: tuple[str, ...] = tuple(dict.fromkeys(names))

    def extract(self, headers: Mapping[str, Sequence[str]]) -> Presented | None:
        value = single_value(headers, self.cert_header)
        digest = single_value(headers, self.sha256_header)
        if self.verify_status:
            for header, passing in ((self.verified_header, "true"), (self.revoked_header, "false")):
                refusal = status_refusal(
                    self.name,
                    header,
                    one_line(headers, header),
                    certificate=value is not None,
                    passes=passing.__eq__,
                    no_certificate=lambda _: True,
                )
                if refusal is not None:
                    return refusal
        if value is None:
            return None
        if digest is not None and not _HEX64.fullmatch(digest):
            raise Rejected(Reason.MALFORMED_HEADER, f"{self.sha256_header} is not 64 hex digits")
        return Presented(
            source=self.name,
            material=value.encode("utf-8", "surrogatepass"),
            decode=lambda: [b64_to_der(value)],
            expected_sha256=digest.lower() if digest else None,
        )


register(CloudflareSource.name, CloudflareSource)
