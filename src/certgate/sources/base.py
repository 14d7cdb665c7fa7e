"""The interface of forwarded-header certificate sources."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from ..errors import ConfigError, Rejected
from ..facts import Presented
from ..reasons import Reason


@runtime_checkable
class HeaderSource(Protocol):
    """Reads a client certificate from headers set by a trusted proxy.

    ``name`` identifies the source in identities and logs. ``header_names``
    (lowercase) are every header the source reads: certgate removes all of
    them from requests whose socket peer is not a trusted proxy.
    ``extract`` returns ``None`` when the request carries no certificate in
    this format and raises ``Rejected(malformed_header)`` for a malformed or
    repeated header.
    """

    name: str
    header_names: tuple[str, ...]

    def extract(self, headers: Mapping[str, Sequence[str]]) -> Presented | None: ...


def single_value(headers: Mapping[str, Sequence[str]], name: str) -> str | None:
    """The one value of a single-valued header; ``None`` if absent or empty.

    A header sent more than once, or folded into a comma list by a WSGI
    server, is an attack signal and raises ``Rejected(malformed_header)``.
    """
    values = headers.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise Rejected(Reason.MALFORMED_HEADER, f"{name} sent {len(values)} times")
    value = values[0].strip()
    if "," in value:
        raise Rejected(Reason.MALFORMED_HEADER, f"{name} folded into a comma-separated list")
    return value or None


_FACTORIES: dict[str, Callable[[], HeaderSource]] = {}


def register(name: str, factory: Callable[[], HeaderSource]) -> None:
    """Make a header source available by name (for TOML configuration)."""
    _FACTORIES[name] = factory


def header_source(name: str) -> HeaderSource:
    """A header source by its configuration name, e.g. ``"cloudflare"``."""
    # Import the built-in sources so they register themselves.
    from . import cloudflare  # noqa: F401, PLC0415

    try:
        return _FACTORIES[name]()
    except KeyError:
        known = ", ".join(sorted(_FACTORIES))
        raise ConfigError(f"unknown header source {name!r} (known: {known})") from None
