"""Paths that are served without a client certificate (health checks, ...).

Patterns are exact paths (``/healthz``) or prefixes written with a trailing
``/*`` (``/public/*`` matches ``/public/a`` but not ``/publicity``). A path
containing dot segments (``/public/../admin``) or an empty segment is never
exempt, whatever a framework later makes of it.

``/*`` (every path) is refused: it would switch certgate off for the whole
application. Don't install certgate on an application that needs no client
certificate anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import ConfigError


class ExemptPaths:
    def __init__(self, patterns: Iterable[str] = ()) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        for pattern in patterns:
            if not pattern.startswith("/"):
                raise ConfigError(f"exempt path {pattern!r} must start with '/'")
            if pattern == "/*":
                raise ConfigError(
                    "exempt_paths: '/*' exempts every path, which turns certgate off. "
                    "List only the paths served without a client certificate "
                    "(e.g. '/healthz', '/public/*')."
                )
            if pattern.endswith("/*"):
                prefixes.append(pattern[:-1])
            elif "*" in pattern:
                raise ConfigError(f"exempt path {pattern!r}: only a trailing '/*' is allowed")
            else:
                exact.add(pattern)
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)

    def __bool__(self) -> bool:
        return bool(self._exact or self._prefixes)

    def matches(self, path: str) -> bool:
        if path in self._exact:
            return _clean(path)
        if any(path.startswith(prefix) for prefix in self._prefixes):
            return _clean(path)
        return False


def _clean(path: str) -> bool:
    segments = path.split("/")[1:]
    return not any(seg in (".", "..") for seg in segments) and "" not in segments[:-1]
