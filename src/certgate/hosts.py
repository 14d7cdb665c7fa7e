"""Host-name normalisation for tenant selection.

The tenant a request is addressed to is chosen from its ``Host`` header, so
this module decides what counts as "the same host": ASCII case is folded, the
port and one trailing dot are stripped, internationalised names are turned
into their IDNA A-label (``xn--``) form, and IP literals are canonicalised.
Anything else - empty values, spaces, userinfo, bad ports, bad labels - is
refused with ``invalid_host`` rather than guessed at.

IDNA uses Python's built-in codec (IDNA 2003). Clients always send A-labels
on the wire; for names whose IDNA 2003 and 2008 forms differ (``ß``, ``ς``,
joiners), write the A-label in the configuration.
"""

from __future__ import annotations

import ipaddress
import re

from .errors import ConfigError, Rejected
from .reasons import Reason

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# Plain ASCII names that the slow path would return unchanged: every label
# valid (at most 63 characters, no leading or trailing hyphen).
_FAST = re.compile(rf"(?:{_LABEL.pattern}\.)*{_LABEL.pattern}")
_PORT = re.compile(r"[0-9]{1,5}")

_SEEN: dict[str, str] = {}
"""Plain ASCII Host values already normalised (raw -> normalised)."""
_SEEN_MAX = 4096
_SEEN_MAX_CHARS = 128


def normalize_host(raw: str | None, *, allow_unicode: bool = False) -> str:
    """Return the canonical form of a ``Host`` header value.

    Raises ``Rejected(invalid_host)`` if ``raw`` is missing or malformed. A
    request's Host must be ASCII (clients send internationalised names as
    ``xn--`` A-labels): folding other text through IDNA would make certgate
    and the application's router disagree about which host was meant.
    ``allow_unicode`` accepts U-labels, for configuration and the CLI.
    """
    if raw is None:
        raise Rejected(Reason.INVALID_HOST, "no Host header")
    known = _SEEN.get(raw)
    if known is not None:
        return known
    if not allow_unicode and not raw.isascii():
        raise Rejected(Reason.INVALID_HOST, f"non-ASCII Host {raw[:80]!r}")
    host = raw.strip(" \t").lower()
    if len(host) <= 253 and _FAST.fullmatch(host):
        # The common case: a plain ASCII name, no port. Remembered (bounded:
        # a client chooses the Host; the memo is emptied when full).
        if len(raw) <= _SEEN_MAX_CHARS:
            if len(_SEEN) >= _SEEN_MAX:
                _SEEN.clear()
            _SEEN[raw] = host
        return host
    try:
        return _normalize_slow(host)
    except Rejected:
        raise
    except (UnicodeError, ValueError) as exc:
        raise Rejected(Reason.INVALID_HOST, f"unusable Host {raw[:80]!r}: {exc}") from None


def normalize_pattern(pattern: str) -> str:
    """Normalise a configured host pattern: an exact name or ``*.suffix``.

    Raises :class:`ConfigError` with the offending pattern.
    """
    text = pattern.strip()
    wildcard = text.startswith("*.")
    body = text[2:] if wildcard else text
    if "*" in body or (":" in body and not _is_ip(body)):
        raise ConfigError(
            f"host pattern {pattern!r}: use an exact name or '*.example.com' "
            "(one leading wildcard label, no port)"
        )
    if ":" in body and not body.startswith("["):
        body = f"[{body}]"  # a bare IPv6 address (checked above): Host-header form
    try:
        name = normalize_host(body, allow_unicode=True)
    except Rejected as exc:
        raise ConfigError(
            f"host pattern {pattern!r} is not a valid host name ({exc.detail})"
        ) from None
    if wildcard and _is_ip(name):
        raise ConfigError(f"host pattern {pattern!r}: wildcards apply to names, not IP addresses")
    return f"*.{name}" if wildcard else name


def parent_domain(host: str) -> str | None:
    """``a.b.example`` -> ``b.example``; a single label has no parent."""
    dot = host.find(".")
    return host[dot + 1 :] if dot > 0 else None


def _is_ip(text: str) -> bool:
    candidate = text.strip("[]")
    if ":" not in candidate and not candidate[-1:].isdigit():
        return False  # neither IPv6 nor dotted IPv4 (which ends in a digit): no parse
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def _normalize_slow(host: str) -> str:
    if not host:
        raise Rejected(Reason.INVALID_HOST, "empty Host header")
    if "\0" in host:
        raise Rejected(Reason.INVALID_HOST, "several Host headers, or a NUL byte in Host")
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise Rejected(Reason.INVALID_HOST, "unterminated IPv6 literal")
        _check_port(host[end + 1 :])
        return str(ipaddress.IPv6Address(host[1:end]))
    if host.count(":") == 1:
        host, port = host.split(":")
        _check_port(":" + port)
    elif ":" in host:
        raise Rejected(Reason.INVALID_HOST, "IPv6 literal without brackets")
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise Rejected(Reason.INVALID_HOST, "empty host name")
    if _is_ip(host):
        return str(ipaddress.ip_address(host))
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise Rejected(Reason.INVALID_HOST, f"not a host name: {host[:80]!r}")
    return host


def _check_port(rest: str) -> None:
    if rest == "":
        return
    if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]) or int(rest[1:]) > 65535:
        raise Rejected(Reason.INVALID_HOST, f"bad port {rest[:10]!r}")
