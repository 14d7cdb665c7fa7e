"""Header trust: whose forwarded certificate headers certgate believes.

:class:`HeaderTrust` is the whole contract between the gate and the ASGI /
WSGI adapters about forwarded headers:

* :attr:`HeaderTrust.header_names` - the certificate headers certgate reads
  from a trusted proxy (lowercase);
* :attr:`HeaderTrust.strip_names` - every header removed from the requests
  of any other peer (the ones read, plus by default every well-known proxy
  certificate header), so neither certgate nor the app sees a forged one;
* :meth:`HeaderTrust.peer_is_trusted` - whether the socket peer (never a
  forwarded address) is a trusted proxy;
* :attr:`HeaderTrust.transport` / :attr:`HeaderTrust.trust_reported_peer`
  and the two ``note_*`` log helpers.

What is **not** decided here: whether the certificate is valid (that is
:mod:`certgate.verification`), or which tenant it is for.

Trust is by the socket peer's IP only: a peer inside ``trusted_proxies``
may set the configured headers; nothing else can. Out of the box the list is
empty and only the TLS transport certificate counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .errors import ConfigError
from .facts import Presented, RequestFacts
from .proxies import TrustedProxies
from .sources.base import HeaderSource, header_source
from .sources.known_headers import KNOWN_CERTIFICATE_HEADERS

logger = logging.getLogger("certgate")


class HeaderTrust:
    """Which peers may forward a client certificate, and in which headers.

    See :class:`~certgate.gate.CertGate` for the meaning of the arguments.
    """

    def __init__(
        self,
        trusted_proxies: Iterable[str] = (),
        header_sources: Iterable[HeaderSource | str] = (),
        *,
        transport: bool = True,
        strip_known_headers: bool = True,
        trust_reported_peer: bool = False,
    ) -> None:
        self.proxies = TrustedProxies(trusted_proxies)
        self.header_sources: tuple[HeaderSource, ...] = tuple(
            header_source(s) if isinstance(s, str) else s for s in header_sources
        )
        if self.header_sources and not self.proxies:
            raise ConfigError(
                "header sources are configured but trusted_proxies is empty: the headers "
                "would never be believed. List the CIDR ranges of the proxies that set them."
            )
        if self.proxies and not self.header_sources:
            raise ConfigError(
                "trusted_proxies is set but no header source is configured: requests from "
                "those proxies could never carry a client certificate. Add header_sources."
            )
        self.transport = transport
        """Whether the TLS transport certificate counts (for untrusted peers)."""
        self.trust_reported_peer = trust_reported_peer
        """Whether adapters may take the server-reported client address as the
        socket peer when they cannot see the socket (see
        :func:`certgate.asgi.socket_peer`)."""
        self._warned_unknown_peer = False
        names: list[str] = []
        for source in self.header_sources:
            names.extend(n.lower() for n in source.header_names)
        self.header_names: tuple[str, ...] = tuple(dict.fromkeys(names))
        """The forwarded-certificate headers certgate reads, lowercase."""
        strip = set(self.header_names)
        if strip_known_headers:
            strip |= KNOWN_CERTIFICATE_HEADERS
        self.strip_names: frozenset[str] = frozenset(strip)
        """Every header removed from requests of untrusted peers: the ones read,
        plus (by default) every well-known proxy certificate header."""

    def peer_is_trusted(self, peer: str | None) -> bool:
        """Whether ``peer`` (the socket peer's IP) may set certificate headers."""
        return self.proxies.contains(peer)

    def select(self, facts: RequestFacts) -> Presented | None:
        """The certificate this request presents: from a trusted proxy, the
        first configured header source that finds one (the transport
        certificate on such a connection is the proxy's own); from anyone
        else, the TLS transport's (their headers were stripped)."""
        trusted = facts.trusted
        if trusted is None:
            trusted = self.proxies.contains(facts.peer)
        if trusted:
            for source in self.header_sources:
                presented = source.extract(facts.headers)
                if presented is not None:
                    return presented
            return None
        return facts.transport if self.transport else None

    def note_unknown_peer(self, where: str) -> None:
        """Warn (once) that forwarded headers are ignored because the socket
        peer cannot be known."""
        if self._warned_unknown_peer or not self.proxies:
            return
        self._warned_unknown_peer = True
        logger.warning(
            "certgate: trusted_proxies is set but the socket peer is unknown (%s), so no "
            "forwarded certificate header is believed. Under uvicorn use certgate's protocol "
            "classes (python -m certgate.servers.uvicorn, or certgate.servers.uvicorn.run); if "
            "the reported client address really is the TCP peer (no X-Forwarded-For "
            "rewriting), set trust_reported_peer = true.",
            where,
        )

    def note_stripped(self, peer: str | None, names: Iterable[str]) -> None:
        """Log that certificate headers from an untrusted peer were removed
        (a forgery attempt, or a proxy missing from ``trusted_proxies``)."""
        removed = sorted(set(names))
        logger.warning(
            "certgate: removed forwarded certificate header(s) %r from untrusted peer %r",
            removed,
            peer,
            extra={"certgate": {"stripped": removed, "peer": peer}},
        )
