"""Azure App Service: ``X-ARR-ClientCert``.

Certificate: the leaf only, standard base64 of its DER (configure the
tenant's intermediates). App Service does not validate the certificate and
forwards no status: certgate's own verification against the tenant's roots
is the only check. Option: ``cert_header``.
"""

from __future__ import annotations

from .base import OneHeaderSource, register
from .decode import der_from_base64


class AzureSource(OneHeaderSource):
    """Header source for Azure App Service's forwarded client certificate."""

    name = "azure"
    default_header = "x-arr-clientcert"

    def decode_value(self, value: str) -> list[bytes]:
        return [der_from_base64(value)]


register(AzureSource.name, AzureSource)
