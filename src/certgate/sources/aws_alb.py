"""AWS Application Load Balancer mTLS: ``X-Amzn-Mtls-Clientcert``.

Passthrough mode: the whole chain the client presented, leaf first, as
URL-encoded PEM in which ``+``, ``=`` and ``/`` are left as they are.
Decoded with ``urllib.parse.unquote``, never ``unquote_plus`` (a literal
``+`` is base64). ALB does not verify in passthrough mode and sends no
status; certgate verifies against the tenant's roots. In verify mode ALB
sends the leaf (same encoding) in ``X-Amzn-Mtls-Clientcert-Leaf``: use
``cert_header = "x-amzn-mtls-clientcert-leaf"`` and configure the tenant's
intermediates. Option: ``cert_header``.
"""

from __future__ import annotations

from .base import OneHeaderSource, register
from .decode import ders_from_urlencoded_pem


class AwsAlbSource(OneHeaderSource):
    """Header source for AWS ALB's forwarded client certificate chain."""

    name = "aws-alb"
    default_header = "x-amzn-mtls-clientcert"

    def decode_value(self, value: str) -> list[bytes]:
        return ders_from_urlencoded_pem(value)


register(AwsAlbSource.name, AwsAlbSource)
