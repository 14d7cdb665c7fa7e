"""Which socket peers may set forwarded certificate headers.

Trust is decided on the address of the **socket peer** - the host that opened
the TCP connection to this server - never on an address taken from
``X-Forwarded-For``/``Forwarded`` (uvicorn's ``ProxyHeadersMiddleware`` and
Werkzeug's ``ProxyFix`` rewrite the visible client address from those
headers; the adapters read the original). The list is empty by default: no
forwarded certificate header is believed until you name the proxies that set
it.

A unix-socket peer is the string ``"unix:"`` (:data:`UNIX_PEER`): certgate's
ASGI server adapters record it as ``scope["certgate.socket_peer"] =
("unix:", 0)`` and the WSGI middleware derives it from an ``AF_UNIX`` server
socket. It is trusted only with the explicit opt-in ``trust_unix_socket``:
whoever can connect to the socket file can then set the headers, so use it
only when the socket's permissions admit nothing but your proxy.

A list that trusts every address of IPv4 or of IPv6 (``0.0.0.0/0``,
``::/0``, ``::ffff:0:0/96``, or ranges that together cover a whole family) is
refused: any client could then forge the certificate headers. IPv4-mapped
IPv6 ranges (``::ffff:10.0.0.0/104``) are taken as the IPv4 ranges they map
(``10.0.0.0/8``), as peers are.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import MAX_PEM_FILE_BYTES, read_regular_file
from .errors import ConfigError, Rejected
from .facts import Presented
from .tenant import Tenant, load_pem_certificates, name_key
from .verifier import ChainVerifier

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


UNIX_PEER = "unix:"
"""The socket peer of a unix-socket connection."""


class TrustedProxies:
    """A set of CIDR ranges. ``"10.0.0.0/8"``, ``"::1"``, ``"127.0.0.1/32"``,
    and (``trust_unix_socket``) the unix-socket peer ``"unix:"``."""

    def __init__(self, cidrs: Iterable[str] = (), *, trust_unix_socket: bool = False) -> None:
        if not isinstance(trust_unix_socket, bool):
            raise ConfigError("trust_unix_socket must be true or false")
        networks: list[_Network] = []
        for cidr in cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr.strip(), strict=True))
            except ValueError as exc:
                raise ConfigError(
                    f"trusted_proxies: {cidr!r} is not a CIDR range ({exc})"
                ) from None
        networks = [_unmapped(network) for network in networks]
        _refuse_everyone(networks)
        self.networks: tuple[_Network, ...] = tuple(networks)
        self.trust_unix_socket = trust_unix_socket
        self._memo: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks) or self.trust_unix_socket

    def contains(self, peer: str | None) -> bool:
        """True when ``peer`` (an IP address string, or ``"unix:"``) is trusted.

        ``"unix:"`` only with ``trust_unix_socket``; ``None``, unix-socket
        paths and anything unparseable are untrusted.
        """
        if peer == UNIX_PEER:
            return self.trust_unix_socket
        if not self.networks or not peer:
            return False
        hit = self._memo.get(peer)
        if hit is not None:
            return hit
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        hit = any(address in network for network in self.networks)
        if len(peer) <= 64 and len(self._memo) < 4096:  # never keep long client text
            self._memo[peer] = hit
        return hit


_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _unmapped(network: _Network) -> _Network:
    """An IPv4-mapped IPv6 range as the IPv4 range it maps (peers are compared
    in their IPv4 form, so the IPv6 form would never match)."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_IPV4_MAPPED):
        address = network.network_address.ipv4_mapped
        if address is not None:  # always, inside ::ffff:0:0/96
            return ipaddress.IPv4Network((address, network.prefixlen - 96))
    return network


def _refuse_everyone(networks: list[_Network]) -> None:
    """Raise :class:`ConfigError` when ``networks`` cover all of IPv4 or IPv6."""
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    if any(n.prefixlen == 0 for n in ipaddress.collapse_addresses(v4)):
        raise ConfigError(_EVERYONE.format(family="IPv4"))
    if any(n.prefixlen == 0 for n in ipaddress.collapse_addresses(v6)):
        raise ConfigError(_EVERYONE.format(family="IPv6"))


_EVERYONE = (
    "trusted_proxies: the ranges trust every {family} address, so any client could forge "
    "the forwarded certificate headers. List only the addresses of your own proxies "
    "(e.g. '10.0.0.0/8', or your CDN's published ranges)."
)


# -- authenticated proxies ------------------------------------------------

ProxyCA = str | os.PathLike[str] | bytes | Sequence[x509.Certificate]
"""A proxy CA: a PEM file's path, PEM bytes, or parsed certificates."""

_PROXY_TENANT = "certgate-proxy-ca"
_VERDICTS_MAX = 1024
"""Most proxy-certificate verdicts remembered (the memo is emptied when full)."""
_RECHECK_FAILED_S = 60.0
"""Seconds a failed proxy certificate's verdict is kept before it is checked
again (a certificate that was not yet valid may become valid)."""


class ProxyVerdict(NamedTuple):
    """Whether a proxy's own TLS client certificate authenticates it.

    ``ok``: it verifies against the proxy CA and has an allowed name.
    ``why``: the reason it does not (for the log), ``""`` when it does.
    ``fingerprint``: hex SHA-256 of its leaf, when one was presented.
    ``until``: POSIX time after which the verdict must be reached again.
    Only strings, a bool and a float: no exception, traceback or request
    object outlives the request that produced a verdict."""

    ok: bool
    why: str
    fingerprint: str | None
    until: float


class ProxyAuthenticator:
    """The authenticated-proxy check: a peer's forwarded headers count only
    when the TLS connection from it presented a client certificate that

    * verifies against ``ca`` (the dedicated proxy CA, never a tenant's) with
      ``cryptography``'s client verifier at the current time - the same
      :class:`~certgate.verifier.ChainVerifier` policy as client
      certificates (webpki CA and end-entity rules, key sizes, chain limits),
    * carries an Extended Key Usage extension that lists clientAuth (an
      absent EKU, which client certificates may have, is refused here), and
    * when ``names`` is not empty, has one of them exactly as its subject
      common name, a DNS SAN or a URI SAN (``front-proxy``,
      ``spiffe://cluster.local/ns/edge/sa/proxy``).

    This is the Kubernetes front-proxy design (``--requestheader-client-ca-file``,
    ``--requestheader-allowed-names``) and Cloudflare's Authenticated Origin
    Pulls. Not checked: revocation.

    Verdicts are remembered per SHA-256 of the presented chain (bounded; a
    valid one until the chain's earliest notAfter, a failed one for
    :data:`_RECHECK_FAILED_S` seconds).

    The proxy CA must be nobody's client CA: :meth:`check_separate` refuses
    one that is a tenant's root or intermediate, or issued one.
    """

    def __init__(self, ca: ProxyCA, names: Iterable[str] = ()) -> None:
        certs = load_proxy_ca(ca)
        self.roots: tuple[x509.Certificate, ...] = tuple(certs)
        self._tenant = Tenant(_PROXY_TENANT, (), self.roots)
        self._verifier = ChainVerifier()
        allowed = tuple(names)
        for name in allowed:
            if not isinstance(name, str) or not name:
                raise ConfigError("proxy_names must be non-empty strings")
        self.names: frozenset[str] = frozenset(allowed)
        self._verdicts: dict[bytes, ProxyVerdict] = {}

    def check_separate(self, tenants: Iterable[Tenant]) -> None:
        """Raise :class:`ConfigError` when a proxy CA certificate is also a
        CA of one of ``tenants`` - the same certificate, or the same subject
        and public key, as one of its roots or intermediates - or directly
        issued one of them (a shared vendor root above tenants anchored at
        their issuing CAs). Every device of that tenant would then verify as
        a proxy and could forward the public certificate of any device of
        any tenant in a header; ``proxy_names`` does not help, as the
        tenant's CA puts whatever names it likes in its certificates.

        A configuration check, made when the gate is built, over the tenants
        the registry lists then: not path validation, and tenants added
        later are not checked."""
        proxy_keys = {name_key(root): root for root in self.roots}
        for tenant in tenants:
            for cert, identity in tenant.ca_name_keys:
                same = proxy_keys.get(identity)
                if same is not None:
                    raise ConfigError(_overlap_message(tenant, cert, "is"))
                for root in self.roots:
                    if cert.issuer == root.subject and _directly_issued(cert, root):
                        raise ConfigError(_overlap_message(tenant, cert, "was issued by"))

    def check(self, presented: Presented | None) -> ProxyVerdict:
        """The verdict on the TLS transport certificate of a peer."""
        now = time.time()
        if presented is None:
            return ProxyVerdict(False, "no proxy client certificate on the connection", None, now)
        if presented.verdict is not None:
            why = f"the server refused the proxy certificate: {presented.verdict.reason.value}"
            return ProxyVerdict(False, why, None, now)
        digest = presented.digest or hashlib.sha256(presented.material).digest()
        known = self._verdicts.get(digest)
        if known is not None and now < known.until:
            return known
        verdict = self._judge(presented, now)
        if len(self._verdicts) >= _VERDICTS_MAX:
            self._verdicts.clear()
        self._verdicts[digest] = verdict
        return verdict

    def _judge(self, presented: Presented, now: float) -> ProxyVerdict:
        retry = now + _RECHECK_FAILED_S
        try:
            ders = presented.decode()
            fingerprint = hashlib.sha256(ders[0]).hexdigest() if ders else None
            identity = self._verifier.verify(
                self._tenant, ders, source="proxy", now=datetime.now(UTC)
            )
            leaf = x509.load_der_x509_certificate(ders[0])
            if not _has_client_auth_eku(leaf):
                return ProxyVerdict(False, "no clientAuth extended key usage", fingerprint, retry)
            if self.names and not (_names_of(leaf) & self.names):
                return ProxyVerdict(False, "name not in proxy_names", fingerprint, retry)
        except Rejected as exc:
            return ProxyVerdict(False, f"proxy certificate: {exc.reason.value}", None, retry)
        except Exception as exc:  # noqa: BLE001 - anything unexpected: not a proxy
            return ProxyVerdict(
                False, f"proxy certificate unreadable: {type(exc).__name__}", None, retry
            )
        return ProxyVerdict(True, "", fingerprint, min(identity.expires_at, now + 86400.0))


def _overlap_message(tenant: Tenant, cert: x509.Certificate, how: str) -> str:
    return (
        f"proxy_ca: the CA {cert.subject.rfc4514_string()!r} of tenant {tenant.id!r} {how} a "
        "proxy CA certificate, so every device of that tenant would be trusted as a proxy "
        "and could forward any other device's certificate in a header. Use a CA made only "
        "for your proxies (see the README's 'Header trust')."
    )


def _directly_issued(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def load_proxy_ca(ca: ProxyCA) -> list[x509.Certificate]:
    """The certificates of a ``proxy_ca`` setting (a PEM file's path, PEM
    bytes or certificates); :class:`ConfigError` when there are none."""
    if isinstance(ca, bytes):
        return load_pem_certificates(ca, "proxy_ca")
    if isinstance(ca, str | os.PathLike):
        data = read_regular_file(ca, MAX_PEM_FILE_BYTES, "proxy_ca")
        return load_pem_certificates(data, f"proxy_ca {os.fspath(ca)!s:.300}")
    certs = list(ca)
    if not certs or not all(isinstance(c, x509.Certificate) for c in certs):
        raise ConfigError("proxy_ca must be a PEM file, PEM bytes or x509 certificates")
    return certs


def _has_client_auth_eku(leaf: x509.Certificate) -> bool:
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in eku


def _names_of(leaf: x509.Certificate) -> set[str]:
    """Subject CNs, DNS SANs and URI SANs of ``leaf``, exactly as encoded."""
    names: set[str] = set()
    for attribute in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        if isinstance(attribute.value, str):
            names.add(attribute.value)
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    names.update(san.get_values_for_type(x509.DNSName))
    names.update(san.get_values_for_type(x509.UniformResourceIdentifier))
    return names
