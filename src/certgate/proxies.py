"""Which socket peers may set forwarded certificate headers.

Trust is decided on the address of the **socket peer** - the host that opened
the TCP connection to this server - never on an address taken from
``X-Forwarded-For``/``Forwarded`` (uvicorn's ``ProxyHeadersMiddleware`` and
Werkzeug's ``ProxyFix`` rewrite the visible client address from those
headers; the adapters read the original). The list is empty by default: no
forwarded certificate header is believed until you name the proxies that set
it.

A list that trusts every address of IPv4 or of IPv6 (``0.0.0.0/0``,
``::/0``, ``::ffff:0:0/96``, or ranges that together cover a whole family) is
refused: any client could then forge the certificate headers. IPv4-mapped
IPv6 ranges (``::ffff:10.0.0.0/104``) are taken as the IPv4 ranges they map
(``10.0.0.0/8``), as peers are.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .errors import ConfigError

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """A set of CIDR ranges. ``"10.0.0.0/8"``, ``"::1"``, ``"127.0.0.1/32"``."""

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
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
        self._memo: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def contains(self, peer: str | None) -> bool:
        """True when ``peer`` (an IP address string) is inside a trusted range.

        ``None``, unix-socket paths and anything unparseable are untrusted.
        """
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
