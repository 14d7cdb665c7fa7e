"""Azure App Service: ``X-ARR-ClientCert``.

Certificate: the leaf only, standard base64 of its DER (configure the
tenant's intermediates). App Service does not validate the certificate and
forwards no status: certgate's own verification against the tenant's roots
is the only check. Option: ``cert_header``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..facts import Presented
from .base import header_option, register, single_value
from .decode import der_from_base64, material


class AzureSource:
    """Header source for Azure App Service's forwarded client certificate."""

    name = "azure"

    def __init__(self, *, cert_header: str = "x-arr-clientcert") -> None:
        self.cert_header = header_option(cert_header, "cert_header")
        self.header_names: tuple[str, ...] = (self.cert_header,)

    def extract(self, headers: Mapping[str, Sequence[str]]) -> Presented | None:
        value = single_value(headers, self.cert_header)
        if value is None:
            return None
        return Presented(
            source=self.name, material=material(value), decode=lambda: [der_from_base64(value)]
        )


register(AzureSource.name, AzureSource)
