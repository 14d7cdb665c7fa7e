"""Which paths need a certificate, and whether refusals are enforced.

Two independent settings decide what happens to a request:

**Access** (per path): :attr:`Access.REQUIRE` (the default: no valid
certificate, no request), :attr:`Access.OPTIONAL` (a presented certificate
is verified and its identity attached; a request without one goes through
with no identity, and the route decides) and :attr:`Access.EXEMPT` (certgate
does not look at the request at all: health checks).

On an optional path a certificate that *is* presented and fails verification
is refused as on a required path: a bad certificate is never downgraded to
an anonymous request.

**Mode**: :attr:`Mode.ENFORCE` (the default: refusals are answered with 403)
or :attr:`Mode.REPORT` (report-only: every decision is logged and observed
as usual, but refused requests go through - with the identity attached when
the certificate itself was valid). Chosen globally, per tenant and per path
prefix; the most specific setting wins: path, then tenant, then global.
Every setting can change at run time (:meth:`Rollout.set_mode`) without a
restart; a request sees one consistent snapshot. When a gate reloads its
TOML file with changed ``[certgate]`` settings, the new rollout is the
file's with the run-time changes made so far applied again on top
(:meth:`Rollout.replay`), so routes set in code survive reloads.

Paths are matched as exact paths (``/healthz``, which also matches
``/healthz/``) or prefixes written with a trailing ``/*`` (``/public/*``
matches ``/public``, ``/public/`` and ``/public/a``, never ``/publicity``).
The longest matching pattern wins. A rule that *relaxes* checking
(``exempt``, ``optional``, ``report``) applies only to a clean path: one
with a dot segment (``/public/../admin``) or an empty segment (``//admin``)
gets the default, whatever a framework later makes of it. A rule that
*tightens* (a route policy, ``enforce``) is matched on the path with dot
segments resolved and empty segments dropped, so ``/x/../admin`` is still
``/admin`` for it.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from .errors import ConfigError

if TYPE_CHECKING:
    from .policy import Policy


class Access(enum.StrEnum):
    """Whether a path needs a client certificate."""

    REQUIRE = "require"
    OPTIONAL = "optional"
    EXEMPT = "exempt"


class Mode(enum.StrEnum):
    """Whether refusals are answered (enforce) or only reported."""

    ENFORCE = "enforce"
    REPORT = "report"


class Route:
    """A rule for the paths matching ``path`` (exact, or a prefix ending in
    ``/*``). Each setting left ``None`` falls through to the next shorter
    matching rule, then to the default. ``access`` and ``mode`` take the
    enum members or their strings (``"optional"``, ``"report"``).
    Immutable."""

    __slots__ = ("access", "mode", "path", "policy")

    path: str
    access: Access | None
    mode: Mode | None
    policy: Policy | None

    def __init__(
        self,
        path: str,
        access: Access | str | None = None,
        mode: Mode | str | None = None,
        policy: Policy | None = None,
    ) -> None:
        where = f"route {str(path)[:80]!r}"
        check_pattern(path)
        set_ = object.__setattr__
        set_(self, "path", path)
        set_(self, "access", None if access is None else parse_access(access, where))
        set_(self, "mode", None if mode is None else parse_mode(mode, where))
        set_(self, "policy", policy)
        if path == "/*" and self.access is Access.EXEMPT:
            raise ConfigError(
                "'/*' exempts every path, which turns certgate off. List only the paths "
                "served without a client certificate (e.g. '/healthz', '/public/*'), or use "
                "access 'optional' to let routes decide."
            )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Route is immutable")

    def __repr__(self) -> str:
        return (
            f"Route({self.path!r}, access={self.access and self.access.value!r}, "
            f"mode={self.mode and self.mode.value!r}, policy={self.policy!r})"
        )


class _Modes(NamedTuple):
    """The global mode and the run-time tenant overrides of one snapshot."""

    mode: Mode
    tenant_modes: Mapping[str, Mode]


_ENFORCE_ONLY = _Modes(Mode.ENFORCE, {})


class PathRule(NamedTuple):
    """What applies to one request path (resolved once per request), with
    the modes of the snapshot it was read from: a request in flight keeps
    them, whatever :meth:`Rollout.set_mode` does meanwhile."""

    access: Access
    mode: Mode | None
    """The path's enforcement mode, or ``None`` to use the tenant's/global."""
    policy: Policy | None
    modes: _Modes = _ENFORCE_ONLY
    """The global mode and tenant overrides when the rule was read."""

    def mode_for(self, tenant_id: str | None, tenant_mode: str | None) -> Mode:
        """The mode of a decision on this path: the path's, else the
        tenant's run-time override, else the tenant's own setting
        (``tenant_mode``), else the global mode - all as of the snapshot
        this rule was read from."""
        if self.mode is not None:
            return self.mode
        modes = self.modes
        if tenant_id is not None and modes.tenant_modes:
            override = modes.tenant_modes.get(tenant_id)
            if override is not None:
                return override
        if tenant_mode is not None:
            return Mode(tenant_mode)
        return modes.mode


def parse_access(value: object, where: str) -> Access:
    try:
        return Access(value if isinstance(value, str) else "")
    except ValueError:
        raise ConfigError(
            f"{where}: access must be one of {', '.join(a.value for a in Access)}, "
            f"not {str(value)[:40]!r}"
        ) from None


def parse_mode(value: object, where: str) -> Mode:
    try:
        return Mode(value if isinstance(value, str) else "")
    except ValueError:
        raise ConfigError(
            f"{where}: mode must be 'enforce' or 'report', not {str(value)[:40]!r}"
        ) from None


def check_pattern(pattern: object) -> str:
    """``pattern`` if it is a valid path pattern, else :class:`ConfigError`."""
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise ConfigError(f"path pattern {str(pattern)[:80]!r} must start with '/'")
    body = pattern[:-2] if pattern.endswith("/*") else pattern
    if "*" in body:
        raise ConfigError(f"path pattern {pattern[:80]!r}: only a trailing '/*' is allowed")
    if len(pattern) > 1024:
        raise ConfigError(f"path pattern {pattern[:80]!r}...: longer than 1024 characters")
    return pattern


def clean(path: str) -> bool:
    """No dot segment and no empty segment (except a trailing ``/``)."""
    segments = path.split("/")[1:]
    return not any(seg in (".", "..") for seg in segments) and "" not in segments[:-1]


def resolve(path: str) -> str:
    """``path`` with dot segments resolved and empty segments dropped (a
    trailing ``/`` kept)."""
    out: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    trailing = "/" if path.endswith("/") and out else ""
    return "/" + "/".join(out) + trailing


class _Snapshot(NamedTuple):
    exact: Mapping[str, Route]
    prefixes: tuple[tuple[str, Route], ...]
    """Longest first; each key without the trailing ``*`` (``/public/``)."""
    mode: Mode
    tenant_modes: Mapping[str, Mode]
    default: Access
    modes: _Modes
    default_rule: PathRule
    """The rule of a path no route covers."""


class Rollout:
    """The path rules and enforcement modes of a gate, swappable at run time.

    ``routes``: :class:`Route` rules. ``access``: the default for paths no
    rule covers (``require`` unless said otherwise). ``mode``: the global
    mode. ``tenant_modes``: tenant id -> mode (a tenant's own ``mode``
    setting, see :class:`~certgate.tenant.Tenant`, applies when the tenant
    is not listed here).
    """

    def __init__(
        self,
        routes: Iterable[Route] = (),
        *,
        access: Access | str = Access.REQUIRE,
        mode: Mode | str = Mode.ENFORCE,
        tenant_modes: Mapping[str, Mode | str] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._changes: list[Callable[[Rollout], None]] = []
        """The run-time changes made so far, in order (see :meth:`replay`)."""
        self._successor: Rollout | None = None
        """The rollout that replayed this one's changes (a reload's): later
        changes made here are made there too (see :meth:`replay`)."""
        self._routes: dict[str, Route] = {}
        for route in routes:
            if route.path in self._routes:
                raise ConfigError(f"route {route.path!r} is listed twice")
            self._routes[route.path] = route
        self._snap = self._build(
            parse_access(access, "access"),
            parse_mode(mode, "mode"),
            {k: parse_mode(v, f"tenant {k!r}") for k, v in (tenant_modes or {}).items()},
        )

    def _build(self, default: Access, mode: Mode, tenant_modes: Mapping[str, Mode]) -> _Snapshot:
        if default is Access.EXEMPT:
            raise ConfigError(
                "the default access 'exempt' turns certgate off for every path; use "
                "'optional' to let requests without a certificate through"
            )
        exact: dict[str, Route] = {}
        prefixes: list[tuple[str, Route]] = []
        for route in self._routes.values():
            if route.path.endswith("/*"):
                prefixes.append((route.path[:-1], route))
            else:
                exact[route.path] = route
        prefixes.sort(key=lambda item: len(item[0]), reverse=True)
        tenants = dict(tenant_modes)
        modes = _Modes(mode, tenants)
        return _Snapshot(
            exact,
            tuple(prefixes),
            mode,
            tenants,
            default,
            modes,
            PathRule(default, None, None, modes),
        )

    # -- reading (per request, lock-free) --------------------------------

    @property
    def trivial(self) -> bool:
        """No route at all and the default is ``require`` (the hot path skips
        path matching)."""
        snap = self._snap
        return not snap.exact and not snap.prefixes and snap.default is Access.REQUIRE

    @property
    def default_rule(self) -> PathRule:
        """The rule of every path no route covers, in the current snapshot
        (the same object until the rollout changes)."""
        return self._snap.default_rule

    @property
    def mode(self) -> Mode:
        """The global mode."""
        return self._snap.mode

    def rule(self, path: str) -> PathRule:
        """The access, path mode and route policy for ``path``."""
        snap = self._snap
        if not snap.exact and not snap.prefixes:
            return snap.default_rule
        # Dot and empty segments need "/." or "//": most paths have neither.
        is_clean = ("/." not in path and "//" not in path) or clean(path)
        matched = self._matches(snap, path if is_clean else resolve(path))
        if not matched:
            return snap.default_rule
        access: Access | None = None
        mode: Mode | None = None
        policy: Policy | None = None
        for route in matched:  # most specific first
            if access is None and route.access is not None:
                access = route.access
            if mode is None and route.mode is not None:
                mode = route.mode
            if policy is None and route.policy is not None:
                policy = route.policy
        if access is None:
            access = snap.default
        if not is_clean:  # relaxing rules apply to clean paths only
            if access is not Access.REQUIRE:
                access = snap.default
            if mode is Mode.REPORT:
                mode = None
        return PathRule(access, mode, policy, snap.modes)

    @staticmethod
    def _matches(snap: _Snapshot, path: str) -> list[Route]:
        found: list[Route] = []
        route = snap.exact.get(path)
        if route is None and path.endswith("/") and len(path) > 1:
            route = snap.exact.get(path[:-1])
        if route is not None:
            found.append(route)
        probe = path if path.endswith("/") else path + "/"
        for prefix, route in snap.prefixes:
            if probe.startswith(prefix):
                found.append(route)
        return found

    def mode_for(
        self, tenant_id: str | None, path_mode: Mode | None, tenant_mode: str | None
    ) -> Mode:
        """The mode of one decision: the path's, else the run-time tenant
        override, else the tenant's own setting, else the global mode (as
        of now; :meth:`PathRule.mode_for` answers as of the rule's snapshot)."""
        return PathRule(Access.REQUIRE, path_mode, None, self._snap.modes).mode_for(
            tenant_id, tenant_mode
        )

    # -- changing (at run time) ------------------------------------------

    def set_mode(
        self, mode: Mode | str | None, *, tenant: str | None = None, path: str | None = None
    ) -> None:
        """Change a mode without a restart.

        ``set_mode("report")`` sets the global mode; ``tenant="acme"``
        overrides one tenant (``mode=None`` removes the override);
        ``path="/api/*"`` sets the mode of a route (created if needed;
        ``None`` removes the route's mode). Takes effect for the next
        request; a request in flight keeps the snapshot it started with.
        """
        if tenant is not None and path is not None:
            raise ConfigError("set_mode: give tenant or path, not both")
        parsed = None if mode is None else parse_mode(mode, "set_mode")
        with self._lock:
            self._set_mode(parsed, tenant, path)
            self._note(lambda rollout: rollout.set_mode(parsed, tenant=tenant, path=path))

    def _set_mode(self, parsed: Mode | None, tenant: str | None, path: str | None) -> None:
        """Change a mode (the caller holds ``self._lock``)."""
        snap = self._snap
        tenant_modes = dict(snap.tenant_modes)
        global_mode = snap.mode
        if path is not None:
            check_pattern(path)
            old = self._routes.get(path) or Route(path)
            self._routes[path] = Route(path, old.access, parsed, old.policy)
        elif tenant is not None:
            if parsed is None:
                tenant_modes.pop(tenant, None)
            else:
                tenant_modes[tenant] = parsed
        else:
            if parsed is None:
                raise ConfigError("set_mode: the global mode cannot be None")
            global_mode = parsed
        self._snap = self._build(snap.default, global_mode, tenant_modes)

    def set_route(self, route: Route) -> None:
        """Add or replace the rule for ``route.path`` at run time."""
        with self._lock:
            self._routes[route.path] = route
            snap = self._snap
            self._snap = self._build(snap.default, snap.mode, snap.tenant_modes)
            self._note(lambda rollout: rollout.set_route(route))

    def remove_route(self, path: str) -> None:
        """Remove the rule for ``path`` (no error when there is none)."""
        with self._lock:
            self._routes.pop(path, None)
            snap = self._snap
            self._snap = self._build(snap.default, snap.mode, snap.tenant_modes)
            self._note(lambda rollout: rollout.remove_route(path))

    _MAX_CHANGES = 10_000

    def _note(self, change: Callable[[Rollout], None]) -> None:
        """Record a run-time change for :meth:`replay` (bounded: a program
        flipping modes in a loop keeps the latest changes only), and make it
        on the successor too (the caller holds ``self._lock``, so changes
        reach the successor in the order they were made here)."""
        self._changes.append(change)
        if len(self._changes) > self._MAX_CHANGES:
            del self._changes[: len(self._changes) - self._MAX_CHANGES]
        if self._successor is not None:
            change(self._successor)

    def replay(self, earlier: Rollout) -> None:
        """Apply again the run-time changes made on ``earlier`` (routes and
        modes set in code, in their order) to this rollout - a reloaded
        configuration's: the file gives the base, code changes stay on top.
        From then on a change made on ``earlier`` is made here too: one made
        while the reload finishes, or through a reference to the old rollout
        kept by the application (``rollout = gate.rollout``), is not lost."""
        with earlier._lock:  # a change on earlier waits: none lost, none reordered
            for change in list(earlier._changes):
                change(self)
            earlier._successor = self

    def routes(self) -> tuple[Route, ...]:
        """The current rules."""
        with self._lock:
            return tuple(self._routes.values())

    def tenant_mode(self, tenant_id: str) -> Mode | None:
        """The run-time override for ``tenant_id``, if any."""
        return self._snap.tenant_modes.get(tenant_id)
