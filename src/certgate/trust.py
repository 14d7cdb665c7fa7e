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

Who is a trusted proxy (all checked on the **socket peer**, never on a
forwarded address):

* ``trusted_proxies``: the peer's IP is inside one of these CIDR ranges
  (IPv4 and IPv6, see :class:`~certgate.proxies.TrustedProxies`);
* ``trust_unix_socket``: the peer is a unix socket (``"unix:"``) - an
  explicit opt-in; without it a unix-socket peer is never trusted, and
  certgate warns once when header sources are configured and requests
  arrive over one;
* ``proxy_ca`` (+ ``proxy_names``): the **authenticated-proxy** mode - the
  TLS connection from the peer presented a client certificate that verifies
  against the proxy CA and has an allowed name (see
  :class:`~certgate.proxies.ProxyAuthenticator`). With ``trusted_proxies``
  (or ``trust_unix_socket``) also set, both must hold; alone, any peer with
  a valid proxy certificate is trusted. That certificate is the proxy's, so
  it is never taken as a client identity.

Out of the box nothing is trusted and only the TLS transport certificate
counts. A peer that is not trusted - outside the ranges, or whose proxy
certificate fails - has its certificate headers stripped (and logged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from .errors import ConfigError
from .facts import Presented, RequestFacts
from .proxies import UNIX_PEER, ProxyAuthenticator, ProxyCA, TrustedProxies
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
        trust_unix_socket: bool = False,
        proxy_ca: ProxyCA | None = None,
        proxy_names: Iterable[str] = (),
    ) -> None:
        self.proxies = TrustedProxies(trusted_proxies, trust_unix_socket=trust_unix_socket)
        names_allowed = tuple(proxy_names)
        if names_allowed and proxy_ca is None:
            raise ConfigError(
                "proxy_names is set but proxy_ca is not: names are checked on the proxy's "
                "client certificate, which is verified against proxy_ca. Set proxy_ca."
            )
        self.proxy_auth: ProxyAuthenticator | None = (
            None if proxy_ca is None else ProxyAuthenticator(proxy_ca, names_allowed)
        )
        """The authenticated-proxy check, when ``proxy_ca`` is set."""
        self.header_sources: tuple[HeaderSource, ...] = tuple(
            header_source(s) if isinstance(s, str) else s for s in header_sources
        )
        if self.header_sources and not self.proxies and self.proxy_auth is None:
            raise ConfigError(
                "header sources are configured but trusted_proxies is empty (and neither "
                "proxy_ca nor trust_unix_socket is set): the headers would never be believed. "
                "List the CIDR ranges of the proxies that set them in trusted_proxies, or set "
                "proxy_ca (authenticated proxies), or trust_unix_socket = true for a proxy on "
                "a unix socket."
            )
        if (self.proxies or self.proxy_auth is not None) and not self.header_sources:
            what = (
                "trusted_proxies is set"
                if self.proxies.networks
                else "trust_unix_socket is on"
                if self.proxies
                else "proxy_ca is set"
            )
            raise ConfigError(
                f"{what} but no header source is configured: requests from those proxies "
                "could never carry a client certificate. Add header_sources."
            )
        self.transport = transport
        """Whether the TLS transport certificate counts (for untrusted peers)."""
        self.trust_reported_peer = trust_reported_peer
        """Whether adapters may take the server-reported client address as the
        socket peer when they cannot see the socket (see
        :func:`certgate.asgi.socket_peer`)."""
        self._warned_unknown_peer = False
        self._warned: set[str] = set()
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
        """Whether ``peer`` (the socket peer's IP, or ``"unix:"``) is inside
        ``trusted_proxies`` / the unix-socket opt-in. Only the address part
        of the decision: with ``proxy_ca`` set use :meth:`trusts`."""
        if peer == UNIX_PEER and not self.proxies.trust_unix_socket:
            self._note_unix_peer()
        return self.proxies.contains(peer)

    @property
    def reads_proxy_certificate(self) -> bool:
        """Whether the trust of a peer depends on its TLS client certificate
        (``proxy_ca``): adapters must then read the transport certificate of
        every request, and key the decision memo on it."""
        return self.proxy_auth is not None

    def trusts(self, peer: str | None, transport: Presented | None) -> bool:
        """Whether ``peer`` is a trusted proxy: its address is trusted (when
        any address or the unix socket is configured) and, with ``proxy_ca``,
        ``transport`` - the TLS client certificate of its connection - is a
        valid proxy certificate."""
        auth = self.proxy_auth
        if auth is None:
            return self.peer_is_trusted(peer)
        if self.proxies and not self.peer_is_trusted(peer):
            return False
        if peer == UNIX_PEER and transport is None:
            self._note_unix_peer()  # proxy_ca alone: no TLS, so never a proxy
        return auth.check(transport).ok

    def judge(
        self, peer: str | None, read_transport: Callable[[], Presented | None]
    ) -> tuple[bool, Presented | None]:
        """Whether ``peer`` is a trusted proxy, and the TLS transport
        certificate where it is needed (``read_transport`` reads it): always
        with ``proxy_ca`` (it decides the trust), otherwise only for an
        untrusted peer and with the transport source on."""
        if self.proxy_auth is not None:
            transport = read_transport()
            return self.trusts(peer, transport), transport
        if self.peer_is_trusted(peer):
            return True, None
        return False, read_transport() if self.transport else None

    def untrusted_why(self, peer: str | None, transport: Presented | None) -> str:
        """Why ``peer`` is not a trusted proxy (for the log)."""
        if peer is None:
            return "no socket peer known for this request"
        if self.proxies and not self.proxies.contains(peer):
            if peer == UNIX_PEER:
                return "a unix-socket peer (trust_unix_socket is off)"
            return "the peer is not in trusted_proxies"
        auth = self.proxy_auth
        if auth is not None:
            verdict = auth.check(transport)
            if not verdict.ok:
                shown = f" (sha256 {verdict.fingerprint})" if verdict.fingerprint else ""
                return f"proxy authentication failed: {verdict.why}{shown}"
        return "the peer is not a trusted proxy"

    def select(self, facts: RequestFacts) -> Presented | None:
        """The certificate this request presents: from a trusted proxy, the
        first configured header source that finds one (the transport
        certificate on such a connection is the proxy's own, never a client
        identity); from anyone else, the TLS transport's (their headers were
        stripped)."""
        trusted = facts.trusted
        if trusted is None:
            trusted = self.trusts(facts.peer, facts.transport)
        if trusted:
            for source in self.header_sources:
                presented = source.extract(facts.headers)
                if presented is not None:
                    return presented
            return None
        return facts.transport if self.transport else None

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        logger.warning(message, *args)

    def _note_unix_peer(self) -> None:
        if not self.header_sources:
            return
        if self.proxy_auth is not None:
            self._warn_once(
                "unix",
                "certgate: a request arrived over a unix socket, and proxy_ca is set: a peer "
                "is a trusted proxy only when its connection presents a proxy certificate "
                "(and, with trusted_proxies or trust_unix_socket, has a trusted address too), "
                "so forwarded certificate headers without one are removed and never "
                "believed. For a proxy on a plain unix socket that only it can connect to "
                "(check the socket file's owner and mode), remove proxy_ca and set "
                "trust_unix_socket = true in [certgate].",
            )
            return
        self._warn_once(
            "unix",
            "certgate: a request arrived over a unix socket, and unix-socket peers are not "
            "trusted proxies, so its forwarded certificate headers are removed and never "
            "believed. If only your proxy can connect to this socket (check the socket "
            "file's owner and mode), set trust_unix_socket = true in [certgate] "
            "(CertGate(trust_unix_socket=True)).",
        )

    def note_no_tls_info(self, where: str, fix: str) -> None:
        """Warn (once) that the transport source is on but the server gives
        certgate no TLS information: every client certificate would be absent."""
        if not self.transport:
            return
        self._warn_once(
            "no-tls",
            "certgate: the transport source is enabled and this request came over TLS (%s), "
            "but the server exposes no TLS information to the application, so no client "
            "certificate can ever be seen and every request gets 403 no_certificate. "
            "Fix: %s",
            where,
            fix,
        )

    def note_not_requested(self, where: str, fix: str) -> None:
        """Warn (once) that the TLS server does not ask clients for a certificate."""
        if not self.transport:
            return
        self._warn_once(
            "not-requested",
            "certgate: the TLS server does not request client certificates (%s), so clients "
            "never send one and every request gets 403 no_certificate. Fix: %s",
            where,
            fix,
        )

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

    def note_stripped(self, peer: str | None, names: Iterable[str], why: str = "") -> None:
        """Log that certificate headers from an untrusted peer were removed
        (a forgery attempt, a proxy missing from ``trusted_proxies``, or a
        proxy whose certificate failed; ``why`` says which)."""
        removed = sorted(set(names))
        logger.warning(
            "certgate: removed forwarded certificate header(s) %r from untrusted peer %r%s",
            removed,
            peer,
            f": {why}" if why else "",
            extra={"certgate": {"stripped": removed, "peer": peer, "why": why}},
        )
