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

from collections.abc import Mapping, Sequence

from ..facts import Presented
from .base import header_option, register, single_value
from .decode import ders_from_urlencoded_pem, material


class AwsAlbSource:
    """Header source for AWS ALB's forwarded client certificate chain."""

    name = "aws-alb"

    def __init__(self, *, cert_header: str = "x-amzn-mtls-clientcert") -> None:
        self.cert_header = header_option(cert_header, "cert_header")
        self.header_names: tuple[str, ...] = (self.cert_header,)

    def extract(self, headers: Mapping[str, Sequence[str]]) -> Presented | None:
        value = single_value(headers, self.cert_header)
        if value is None:
            return None
        return Presented(
            source=self.name,
            material=material(value),
            decode=lambda: ders_from_urlencoded_pem(value),
        )


register(AwsAlbSource.name, AwsAlbSource)
