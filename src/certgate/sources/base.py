"""The interface of forwarded-header certificate sources, and their registry.

A header source is any object with a ``name``, the ``header_names`` it reads
and an ``extract`` method (:class:`HeaderSource`). The built-in presets
register themselves by name (``nginx``, ``envoy``, ...); :func:`register`
adds a custom one, and :func:`header_source` builds one by name with its
options (what the TOML ``header_sources`` entries and
``CertGate(header_sources=[...])`` strings use).

The readers here (:func:`single_value`, :func:`one_line`, :func:`list_value`)
are the only way sources should read a header: they refuse a repeated
single-valued header and bound the length of every value an attacker could
send (:data:`MAX_HEADER_CHARS`) before anything else looks at it.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from ..errors import ConfigError, Rejected
from ..facts import Presented
from ..pem import MAX_PEM_TEXT
from ..reasons import Reason
from ..text import safe_text
from .decode import material


@runtime_checkable
class HeaderSource(Protocol):
    """Reads a client certificate from headers set by a trusted proxy.

    ``name`` identifies the source in identities and logs. ``header_names``
    (lowercase) are **every** header the source reads, status headers
    included: certgate removes all of them from requests whose socket peer
    is not a trusted proxy, and the decision memo keys on exactly these (a
    header read but not listed would let a remembered allow outlive a change
    of that header).
    ``extract`` returns ``None`` when the request carries no certificate in
    this format, raises ``Rejected(malformed_header)`` for a malformed or
    repeated header, and may return :meth:`Presented.refused` for a
    certificate the proxy reported as not verified.
    """

    name: str
    header_names: tuple[str, ...]

    def extract(self, headers: Mapping[str, Sequence[str]]) -> Presented | None: ...


MAX_HEADER_CHARS = MAX_PEM_TEXT
"""Longest header value a source reads (512 Ki characters: the largest
accepted chain, URL-encoded). A longer one is ``malformed_header`` before it
is parsed."""


def _bounded(name: str, value: str) -> str:
    if len(value) > MAX_HEADER_CHARS:
        raise Rejected(Reason.MALFORMED_HEADER, f"{name} of {len(value)} characters")
    return value


def one_line(headers: Mapping[str, Sequence[str]], name: str) -> str | None:
    """The value of a header that must be sent once; ``None`` if absent or
    empty. Commas are allowed (a comma-separated list in one line). Sent more
    than once, or longer than :data:`MAX_HEADER_CHARS`: ``malformed_header``."""
    values = headers.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise Rejected(Reason.MALFORMED_HEADER, f"{name} sent {len(values)} times")
    return _bounded(name, values[0]).strip() or None


def single_value(headers: Mapping[str, Sequence[str]], name: str) -> str | None:
    """The one value of a single-valued header; ``None`` if absent or empty.

    A header sent more than once, or folded into a comma list by a WSGI
    server, is an attack signal and raises ``Rejected(malformed_header)``;
    so is a value longer than :data:`MAX_HEADER_CHARS`.
    """
    value = one_line(headers, name)
    if value is not None and "," in value:
        raise Rejected(Reason.MALFORMED_HEADER, f"{name} folded into a comma-separated list")
    return value


def list_value(headers: Mapping[str, Sequence[str]], name: str) -> str | None:
    """A list-valued header (RFC 9110 5.3): every line joined with ``,``, as
    HTTP defines; ``None`` if absent or empty. Longer than
    :data:`MAX_HEADER_CHARS` in all: ``malformed_header``."""
    values = headers.get(name)
    if not values:
        return None
    if sum(len(v) for v in values) > MAX_HEADER_CHARS:
        raise Rejected(Reason.MALFORMED_HEADER, f"{name} longer than {MAX_HEADER_CHARS}")
    return ",".join(values).strip() or None


# -- options ------------------------------------------------------------------

_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^`|~-]{1,100}")


def header_option(value: object, option: str) -> str:
    """A header name given as an option, lowercased. Refused
    (:class:`ConfigError`): a non-string, a non-token, or a name with ``_``
    (WSGI folds ``_`` and ``-`` into one key, and the middlewares drop
    underscore spellings of certificate headers even from trusted proxies)."""
    if not isinstance(value, str):
        raise ConfigError(f"header source option {option} must be a header name (a string)")
    name = value.strip().lower()
    if not _HEADER_NAME.fullmatch(name):
        raise ConfigError(
            f"header source option {option}: {safe_text(value, 80)!r} is not a header name "
            "(letters, digits and '-'; no '_')"
        )
    return name


def bool_option(value: object, option: str) -> bool:
    """A boolean option (``verify_status``); anything else is a ConfigError."""
    if not isinstance(value, bool):
        raise ConfigError(f"header source option {option} must be true or false")
    return value


# -- the registry -------------------------------------------------------------

_FACTORIES: dict[str, Callable[..., HeaderSource]] = {}

BUILTIN_MODULES = (
    "cloudflare",
    "rfc9440",
    "nginx",
    "envoy",
    "traefik",
    "aws_alb",
    "azure",
    "gcp",
    "caddy",
    "haproxy",
    "apache",
)
_loaded = False


class OneHeaderSource:
    """A preset whose certificate is in one single-valued header, with no
    status: subclasses set ``name`` and ``default_header`` and decode the
    value in :meth:`decode_value` (raising ``Rejected``). Option:
    ``cert_header``."""

    name: str = ""
    default_header: str = ""

    def __init__(self, *, cert_header: str | None = None) -> None:
        self.cert_header = header_option(
            self.default_header if cert_header is None else cert_header, "cert_header"
        )
        self.header_names: tuple[str, ...] = (self.cert_header,)

    def decode_value(self, value: str) -> list[bytes]:
        """The DER certificates in ``value``, leaf first."""
        raise NotImplementedError

    def extract(self, headers: Mapping[str, Sequence[str]]) -> Presented | None:
        value = single_value(headers, self.cert_header)
        if value is None:
            return None
        return Presented(
            source=self.name, material=material(value), decode=lambda: self.decode_value(value)
        )


def _load_builtins() -> None:
    """Import the built-in presets (each registers itself), once."""
    global _loaded  # noqa: PLW0603 - a once-only flag
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{module}")


def register(name: str, factory: Callable[..., HeaderSource]) -> None:
    """Make a header source available by ``name`` (TOML ``header_sources``,
    ``CertGate(header_sources=[name])``, :func:`header_source`).

    ``factory`` is called with the entry's options as keyword arguments
    (none for a plain name) and returns a :class:`HeaderSource`. A name
    already taken by another factory (a built-in preset included) is a
    :class:`ConfigError`: registration never silently replaces a source.
    """
    _load_builtins()
    existing = _FACTORIES.get(name)
    if existing is not None and existing is not factory:
        raise ConfigError(f"header source {name!r} is already registered")
    _FACTORIES[name] = factory


def header_source(name: str, **options: object) -> HeaderSource:
    """A header source by its configuration name, e.g. ``"nginx"``, built
    with ``options`` (e.g. ``cert_header="x-client-cert"``,
    ``verify_status=False``). An unknown name or option is a
    :class:`ConfigError`."""
    _load_builtins()
    try:
        factory = _FACTORIES[name]
    except KeyError:
        known = ", ".join(sorted(_FACTORIES))
        raise ConfigError(
            f"unknown header source {safe_text(name, 80)!r} (known: {known})"
        ) from None
    try:
        inspect.signature(factory).bind(**options)
    except TypeError:
        accepted = ", ".join(
            p.name
            for p in inspect.signature(factory).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        )
        given = ", ".join(safe_text(o, 40) for o in sorted(options))
        raise ConfigError(
            f"header source {name!r}: unknown option(s) {given} (accepted: {accepted or 'none'})"
        ) from None
    return factory(**options)


def registered_names() -> tuple[str, ...]:
    """Every registered header source name (built-ins included), sorted."""
    _load_builtins()
    return tuple(sorted(_FACTORIES))
