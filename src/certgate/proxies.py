"""Which socket peers may set forwarded certificate headers.

Trust is decided on the address of the **socket peer** - the host that opened
the TCP connection to this server - never on an address taken from
``X-Forwarded-For``/``Forwarded`` (uvicorn's ``ProxyHeadersMiddleware`` and
Werkzeug's ``ProxyFix`` rewrite the visible client address from those
headers; the adapters read the original). The list is empty by default: no
forwarded certificate header is believed until you name the proxies that set
it.
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
        if len(self._memo) < 4096:
            self._memo[peer] = hit
        return hit
