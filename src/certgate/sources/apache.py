"""Apache httpd mod_ssl: ``SSL_CLIENT_CERT``, ``SSL_CLIENT_CERT_CHAIN_n``, ``SSL_CLIENT_VERIFY``.

Headers (defaults), set with ``RequestHeader set`` and ``SSLOptions
+ExportCertData``: ``X-SSL-Client-Cert`` (the leaf as PEM), optional
``X-SSL-Client-Chain-0`` ... ``-6`` (``SSL_CLIENT_CERT_CHAIN_0..``, one PEM
each, read in index order, absent ones skipped) and ``X-SSL-Client-Verify``
(``SSL_CLIENT_VERIFY``).

PEM is decoded robustly: httpd turns the newlines into spaces, and a value
URL-escaped with ``expr=%{escape:%{SSL_CLIENT_CERT}}`` decodes too. The
value httpd writes for an unset variable, ``(null)``, means "absent".

Status (``verify_status``, on by default): with a certificate the verify
header must be ``SUCCESS``; ``GENEROUS`` (``SSLVerifyClient
optional_no_ca``), ``FAILED:<reason>``, ``NONE``, or no header at all refuse
with ``proxy_verify_failed``; ``NONE`` without a certificate is "no
certificate". Options: ``cert_header``, ``chain_header_prefix`` (``""`` to
read no chain), ``verify_header``, ``verify_status``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..facts import Presented
from ..pem import MAX_PRESENTED_CERTIFICATES
from .base import bool_option, header_option, one_line, register, single_value
from .decode import der_from_pem_text, material, status_refusal

CHAIN_HEADERS = MAX_PRESENTED_CERTIFICATES - 1
"""How many ``<chain_header_prefix>N`` headers are read (N = 0 .. 6)."""

_UNSET = "(null)"


def _success(status: str) -> bool:
    return status == "SUCCESS"


def _none(status: str) -> bool:
    return status == "NONE"


def _value(headers: Mapping[str, Sequence[str]], name: str) -> str | None:
    value = single_value(headers, name)
    return None if value == _UNSET else value


class ApacheSource:
    """Header source for Apache httpd mod_ssl's exported certificate."""

    name = "apache"

    def __init__(
        self,
        *,
        cert_header: str = "x-ssl-client-cert",
        chain_header_prefix: str = "x-ssl-client-chain-",
        verify_header: str = "x-ssl-client-verify",
        verify_status: bool = True,
    ) -> None:
        self.cert_header = header_option(cert_header, "cert_header")
        self.chain_headers: tuple[str, ...] = (
            tuple(
                header_option(f"{chain_header_prefix}{n}", "chain_header_prefix")
                for n in range(CHAIN_HEADERS)
            )
            if chain_header_prefix
            else ()
        )
        self.verify_header = header_option(verify_header, "verify_header")
        self.verify_status = bool_option(verify_status, "verify_status")
        names = [self.cert_header, *self.chain_headers]
        if self.verify_status:
            names.append(self.verify_header)
        self.header_names: tuple[str, ...] = tuple(dict.fromkeys(names))

    def extract(self, headers: Mapping[str, Sequence[str]]) -> Presented | None:
        leaf = _value(headers, self.cert_header)
        if self.verify_status:
            status = one_line(headers, self.verify_header)
            refusal = status_refusal(
                self.name,
                self.verify_header,
                None if status == _UNSET else status,
                certificate=leaf is not None,
                passes=_success,
                no_certificate=_none,
            )
            if refusal is not None:
                return refusal
        if leaf is None:
            return None
        chain = [_value(headers, name) for name in self.chain_headers]
        pems = [leaf, *(pem for pem in chain if pem is not None)]
        return Presented(
            source=self.name,
            material=material(*pems),
            decode=lambda: [der_from_pem_text(pem) for pem in pems],
        )


register(ApacheSource.name, ApacheSource)
