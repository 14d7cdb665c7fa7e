"""nginx and ingress-nginx: ``$ssl_client_escaped_cert`` and ``$ssl_client_verify``.

Presets ``nginx`` (headers ``X-SSL-Client-Cert`` / ``X-SSL-Client-Verify``)
and ``ingress-nginx`` (``ssl-client-cert`` / ``ssl-client-verify``, what
``nginx.ingress.kubernetes.io/auth-tls-pass-certificate-to-upstream`` sets).

Certificate: the leaf only, as URL-encoded PEM (``$ssl_client_escaped_cert``);
the deprecated ``$ssl_client_cert`` (PEM with a tab after each newline, which
HTTP servers unfold into spaces) decodes too. Exactly one certificate:
configure the tenant's intermediates.

Status (``verify_status``, on by default): the verify header must be
``SUCCESS`` when a certificate is forwarded; ``FAILED:<reason>``, a missing
header or any other value refuses with ``proxy_verify_failed``; ``NONE``
without a certificate is "no certificate". Turn it off only for an nginx
that deliberately forwards unverified certificates (``ssl_verify_client
optional_no_ca``, the per-tenant CAs being known to certgate alone):
certgate verifies every chain against the tenant's roots either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..facts import Presented
from .base import bool_option, header_option, one_line, register, single_value
from .decode import der_from_pem_text, material, status_refusal


def _success(status: str) -> bool:
    return status == "SUCCESS"


def _none(status: str) -> bool:
    return status == "NONE"


class NginxSource:
    """Header source for nginx's forwarded client certificate."""

    name = "nginx"
    default_cert_header = "x-ssl-client-cert"
    default_verify_header = "x-ssl-client-verify"

    def __init__(
        self,
        *,
        cert_header: str | None = None,
        verify_header: str | None = None,
        verify_status: bool = True,
    ) -> None:
        self.cert_header = header_option(cert_header or self.default_cert_header, "cert_header")
        self.verify_header = header_option(
            verify_header or self.default_verify_header, "verify_header"
        )
        self.verify_status = bool_option(verify_status, "verify_status")
        self.header_names: tuple[str, ...] = (
            (self.cert_header, self.verify_header) if self.verify_status else (self.cert_header,)
        )

    def extract(self, headers: Mapping[str, Sequence[str]]) -> Presented | None:
        value = single_value(headers, self.cert_header)
        if self.verify_status:
            refusal = status_refusal(
                self.name,
                self.verify_header,
                one_line(headers, self.verify_header),
                certificate=value is not None,
                passes=_success,
                no_certificate=_none,
            )
            if refusal is not None:
                return refusal
        if value is None:
            return None
        return Presented(
            source=self.name,
            material=material(value),
            decode=lambda: [der_from_pem_text(value)],
        )


class IngressNginxSource(NginxSource):
    """ingress-nginx: the same variables under its own header names."""

    name = "ingress-nginx"
    default_cert_header = "ssl-client-cert"
    default_verify_header = "ssl-client-verify"


register(NginxSource.name, NginxSource)
register(IngressNginxSource.name, IngressNginxSource)
