"""The plain facts about a request that certgate decides on.

Adapters (ASGI, WSGI, CLI) turn their framework's request into
:class:`RequestFacts`; :class:`~certgate.gate.CertGate` never sees a scope or
an environ. This is what makes the core testable without a server, and what
new sources and servers plug into.

Both types are immutable ``NamedTuple``s: one is built per request, and a
tuple is three times cheaper to build than a frozen dataclass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from .errors import Rejected


class Presented(NamedTuple):
    """A certificate chain as it reached the server, not yet decoded.

    ``material`` is the exact presented bytes (header value, PEM text, DER),
    hashed into the cache key so a warm request never decodes anything.
    ``decode`` returns the DER certificates, leaf first, or raises
    :class:`~certgate.errors.Rejected`. ``expected_sha256`` is a fingerprint
    forwarded next to the certificate, checked against the leaf.
    ``verdict`` is a rejection the source already reached (for example the
    TLS server reported a verification error). ``digest``, when set, must be
    ``sha256(material).digest()``.
    """

    source: str
    material: bytes
    decode: Callable[[], Sequence[bytes]]
    expected_sha256: str | None = None
    verdict: Rejected | None = None
    digest: bytes | None = None
    """SHA-256 of ``material``, when the source already computed it (a TLS
    connection's chain is hashed once per connection, not per request)."""

    @classmethod
    def refused(cls, source: str, rejection: Rejected) -> Presented:
        """A presentation the source already judged (decoding raises a copy:
        raising the shared object would tie it to each caller's frames)."""

        def fail() -> Sequence[bytes]:
            raise Rejected(rejection.reason, rejection.detail, rejection.fingerprint)

        return cls(source=source, material=b"", decode=fail, verdict=rejection)


class RequestFacts(NamedTuple):
    """What certgate knows about one request.

    ``host``: the raw Host header (``None`` if absent). ``path``: the decoded
    request path. ``peer``: the IP of the socket peer (not a forwarded
    address). ``headers``: lowercase name -> every value received, holding only
    the header names certgate asked for. ``transport``: the certificate from
    the TLS connection, if any. ``trusted``: whether ``peer`` is a trusted
    proxy, when the adapter already asked the gate's header trust
    (``None``: the gate asks). ``sni``: the TLS server name the client asked
    for on this connection, when the server adapter knows it
    (:mod:`certgate.sni`; ``None``: unknown or not sent). With a trusted
    proxy as the peer it is the proxy's connection's, not the client's.
    """

    host: str | None
    path: str
    peer: str | None
    headers: Mapping[str, Sequence[str]]
    transport: Presented | None
    trusted: bool | None = None
    sni: str | None = None
