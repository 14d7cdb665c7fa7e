"""The TOML configuration file.

```toml
[certgate]                       # optional; every key has a safe default
trusted_proxies = []             # CIDRs of proxies allowed to set cert headers
header_sources  = []             # e.g. ["nginx"] or [{preset = "nginx", verify_status = false}]
transport       = true           # use the certificate of the TLS connection
exempt_paths    = ["/healthz"]   # exact paths, or prefixes ending in "/*"
access          = "require"      # default access: "require", or "optional" (routes decide)
mode            = "enforce"      # "enforce", or "report" (report-only: log, count, let through)
policy          = { }            # default policy of tenants without their own (certgate.policy)
refusal_format  = "problem+json" # or "text", "html"
expiry_warning_days = 30         # warn when a client certificate, tenant CA or CRL expires sooner
expiry_critical_days = 14        # tenant CAs inside this many days are "critical"
crl_warning_days = 3             # warn when a CRL's nextUpdate is this close (CRLs are short-lived)
crl_critical_days = 1            # CRLs whose nextUpdate is this close are "critical"
expiry_check_interval = 86400    # seconds between checks of tenant CA/CRL expiry (0 = load only)
watch_interval  = 0              # seconds between checks of this file and its files (0 = off)
strip_known_headers = true       # remove every well-known proxy cert header from untrusted peers
trust_reported_peer = false      # believe scope["client"] / REMOTE_ADDR as the socket peer
trust_unix_socket = false        # trust a unix-socket peer as a proxy (explicit opt-in)
proxy_ca        = "proxy-ca.pem" # authenticated proxies: headers only with a cert from this CA
proxy_names     = []             # allowed proxy names (CN, DNS or URI SAN), exact; needs proxy_ca
cache_size      = 10000          # verified chains kept (0 = no cache)
registry_timeout = 5.0           # seconds a registry lookup may take (then 503)
registry        = "sqlite:///tenants.db"   # optional: tenants in a store, not in [[tenants]]
max_chain_depth = 8
min_rsa_bits    = 2048

[certgate.registry_cache]        # optional, with registry: the cache in front of the store
max_tenants   = 10000            # tenants kept (LRU); also max_hosts, max_negative
negative_ttl  = 5.0              # seconds an unknown host is remembered
poll_interval = 0.5              # seconds between change polls
max_stale     = 2.0              # no poll for this long: cached answers unused (false: keep)

[[certgate.routes]]              # per path prefix; the longest match wins
path   = "/admin/*"              # exact path, or a prefix ending in "/*"
access = "require"               # optional: "require", "optional", "exempt"
mode   = "enforce"               # optional: "enforce", "report"
policy = { common_name = ["alice"] }   # optional: a route policy (certgate.policy)

[[tenants]]
id            = "acme"
hosts         = ["pay.acme.com", "*.acme.example"]
roots         = ["acme-root.pem"]          # files relative to this TOML file;
intermediates = ["acme-issuing-ca.pem"]    # one file may hold several PEMs
shared_anchors = false                     # true on EVERY tenant that knowingly shares a root
mode          = "report"                   # optional: this tenant's mode
policy        = { issued_by = { fingerprints = ["..."] } }   # optional: its default policy
ca_expired    = "fail"                     # or "warn": load with an expired root/intermediate
```

Unknown keys are errors, not ignored: a typo such as ``trusted_proxy`` must
not silently leave a setting at its default.

``registry`` names a tenant store (:mod:`certgate.stores`) instead of
``[[tenants]]`` (both in one file is an error): ``sqlite:///PATH`` - a
relative ``PATH`` is relative to the TOML file, like ``proxy_ca`` - or
``postgresql://...``. The store must exist with the current schema (a
server never creates or migrates it: ``certgate tenants import`` /
``certgate tenants migrate`` do). :func:`load_gate_config` opens it as a
:class:`~certgate.stores.caching.CachingRegistry` with the options of
``[certgate.registry_cache]``; :func:`load_config` (tenants of the file)
refuses such a file.

Files are read defensively: the TOML file and every PEM file it names must be
regular files (a FIFO, a device such as ``/dev/zero`` or a directory is a
:class:`ConfigError`, without blocking), of at most
:data:`MAX_CONFIG_BYTES` and :data:`MAX_PEM_FILE_BYTES` respectively, and
TOML nested too deeply for the parser is a :class:`ConfigError` too, and so
is a dotted key or table name of more than :data:`MAX_KEY_PARTS` parts
(refused before parsing: tomllib's time grows with its square).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tomllib
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from .crl import MAX_CRL_BYTES, load_crls
from .errors import ConfigError
from .registry import InMemoryRegistry
from .rollout import Route, parse_access, parse_mode
from .sources.base import HeaderSource, header_source
from .tenant import Tenant, check_crl_url, check_tenant_id, load_pem_certificates
from .text import safe_text
from .vetting import CaVettingError, Finding, quiet

if TYPE_CHECKING:
    from .crlfetch import CrlRefresher
    from .policy import Policy
    from .stores.caching import CachingRegistry

MAX_CONFIG_BYTES = 16 * 1024 * 1024
"""Largest TOML configuration file read (16 MiB: some 50,000 tenants)."""

MAX_PEM_FILE_BYTES = 1024 * 1024
"""Largest PEM file read for a tenant's roots or intermediates (1 MiB: some
500 certificates; a tenant's CA file is usually a few KiB)."""

MAX_KEY_PARTS = 8
"""Most parts of a dotted key or table name (``a.b.c = 1``, ``[a.b.c]``)
accepted (certgate's own keys need at most 2). tomllib's parse time grows
with the square of that number (one 48 KB key of 24,000 parts: seconds;
128 KB: over a minute), so a file with a longer one is refused before it is
parsed."""

# Outside strings and comments, a run of dots not broken by any of "=,[]{}"
# or a line end belongs to a dotted key or table name (a TOML value holds at
# most one dot: a float, a time's fraction). Strings are skipped whole: a
# host name or a file name may hold any number of dots.
_TOML_TOKEN = re.compile(r'"""|' + r"'''|" + r"""["'#.=,\[\]{}\n]""")
_TOML_SKIP = {
    '"""': re.compile(r'[^"\\]*(?:(?:\\.|"(?!""))[^"\\]*)*(?:"""(?:""?(?!"))?|$)', re.S),
    "'''": re.compile(r"[^']*(?:'(?!'')[^']*)*(?:'''(?:''?(?!'))?|$)"),
    '"': re.compile(r'[^"\\\n]*(?:\\.[^"\\\n]*)*(?:"|$|(?=\n))'),
    "'": re.compile(r"[^'\n]*(?:'|$|(?=\n))"),
    "#": re.compile(r"[^\n]*"),
}


def _longest_dotted_name(text: str, stop: int = MAX_KEY_PARTS) -> int:
    """The most parts of any dotted key or table name in TOML ``text`` (or
    the first count past ``stop``), by a linear scan that skips strings and
    comments (on text that is not TOML it may over-count; the parser then
    refuses such text anyway)."""
    longest = dots = 0
    position = 0
    while (match := _TOML_TOKEN.search(text, position)) is not None:
        found = match.group()
        position = match.end()
        skip = _TOML_SKIP.get(found)
        if skip is not None:
            end = skip.match(text, position)
            position = end.end() if end is not None else len(text)
        elif found == ".":
            dots += 1
            longest = max(longest, dots)
            if longest >= stop:
                break
        else:
            dots = 0
    return longest + 1


_GATE_KEYS: dict[str, type | tuple[type, ...]] = {
    "trusted_proxies": list,
    "header_sources": list,
    "transport": bool,
    "exempt_paths": list,
    "strip_known_headers": bool,
    "trust_reported_peer": bool,
    "trust_unix_socket": bool,
    "proxy_ca": str,
    "proxy_names": list,
    "cache_size": int,
    "max_chain_depth": int,
    "min_rsa_bits": int,
    "registry_timeout": (int, float),
    "access": str,
    "mode": str,
    "refusal_format": str,
    "expiry_warning_days": (int, float),
    "expiry_critical_days": (int, float),
    "crl_warning_days": (int, float),
    "crl_critical_days": (int, float),
    "expiry_check_interval": (int, float),
    "watch_interval": (int, float),
    "routes": list,
    "policy": dict,
    "registry": str,
    "registry_cache": dict,
}
_STORE_KEYS = frozenset({"registry", "registry_cache"})
"""``[certgate]`` keys that say where the tenants are, not gate settings."""

_CACHE_KEYS: dict[str, type | tuple[type, ...]] = {
    "max_tenants": int,
    "max_hosts": int,
    "max_negative": int,
    "negative_ttl": (int, float),
    "poll_interval": (int, float),
    "max_stale": (int, float, bool),
}
"""``[certgate.registry_cache]`` keys: the options of
:class:`~certgate.stores.caching.CachingRegistry`."""
_TENANT_KEYS = {
    "id",
    "hosts",
    "roots",
    "intermediates",
    "shared_anchors",
    "mode",
    "policy",
    "crls",
    "crl_urls",
    "crl_refresh",
    "crl_stale",
    "require_crl",
    "ca_expired",
}
_ROUTE_KEYS = {"path", "access", "mode", "policy"}
MAX_ROUTES = 1000
"""Most ``[[certgate.routes]]`` entries."""


@dataclass
class Config:
    """A parsed configuration file: the registry and the gate's settings.

    ``section``: the ``[certgate]`` table as parsed (a reload compares it to
    tell whether the settings changed). ``files``: the TOML file and every
    file it names (CA, CRL and proxy CA files), resolved, for a file watch."""

    registry: TomlRegistry
    gate_kwargs: dict[str, Any] = field(default_factory=dict)
    section: Mapping[str, Any] = field(default_factory=dict)
    files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class StoreSpec:
    """``[certgate].registry`` and ``[certgate.registry_cache]`` as parsed:
    the store's URL (a relative SQLite path made absolute) and the cache's
    options. Two equal specs open the same registry (a reload keeps it)."""

    url: str = field(repr=False)  # may hold a password: repr shows the label
    cache: tuple[tuple[str, Any], ...] = ()

    def __repr__(self) -> str:
        return f"StoreSpec({self.label!r}, cache={self.cache!r})"

    @property
    def label(self) -> str:
        """The URL as it may be shown: a ``sqlite:///`` URL whole, any other
        by its scheme only (it may hold a password)."""
        if self.url.startswith("sqlite:"):
            return safe_text(self.url, 300)
        return f"the {safe_text(self.url.partition(':')[0], 20)}:// registry"


@dataclass
class GateConfig:
    """A parsed configuration file for a gate: like :class:`Config`, but
    the registry is either the file's ``[[tenants]]`` or the store that
    ``[certgate].registry`` names (``store``: its spec, else ``None``)."""

    registry: TomlRegistry | CachingRegistry
    gate_kwargs: dict[str, Any] = field(default_factory=dict)
    section: Mapping[str, Any] = field(default_factory=dict, repr=False)  # registry: a password
    files: tuple[Path, ...] = ()
    store: StoreSpec | None = None


class TomlRegistry(InMemoryRegistry):
    """An in-memory registry filled from the ``[[tenants]]`` of a TOML file.

    :meth:`reload` re-reads the file and swaps the tenants in atomically; on a
    bad file it raises and keeps serving the previous tenants. It reloads
    ``[[tenants]]`` only (their CRL files included); a gate made by
    :meth:`CertGate.from_toml <certgate.gate.CertGate.from_toml>` reloads
    everything, ``[certgate]`` included, with its own ``reload()`` (which
    makes a new registry, see :meth:`adopt`).

    When a tenant has ``crl_urls``, the registry starts a
    :class:`~certgate.crlfetch.CrlRefresher` (``crl_refresher``) in a daemon
    thread; a reload keeps the CRLs it already fetched. :meth:`close` stops it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        data: Mapping[str, Any] | None = None,
        *,
        successor_of: TomlRegistry | None = None,
    ) -> None:
        """Load ``path`` (``data``: its already-parsed contents, if at hand).

        ``successor_of``: the registry this one is to replace (a reload): its
        tenants' fetched CRLs are attached to the new tenants, and no CRL
        refresher starts until :meth:`adopt` takes over the old one."""
        self.path = Path(path)
        self.crl_refresher: CrlRefresher | None = None
        tenants = _read_tenants(self.path, data if data is not None else _read_toml(self.path))
        if successor_of is not None and successor_of.crl_refresher is not None:
            tenants = successor_of.crl_refresher.apply(tenants)
        try:
            super().__init__(tenants)
        except ConfigError as exc:  # shared anchors, a host claimed twice, ...
            raise ConfigError(f"{self.path}: {exc}") from None
        if successor_of is None:
            self._watch_crl_urls(tenants)

    def adopt(self, previous: TomlRegistry) -> None:
        """Take over ``previous``'s CRL refresher (it now fetches for this
        registry's tenants and keeps the CRLs it fetched), or start one if
        this registry's tenants have ``crl_urls`` and there was none."""
        refresher = previous.crl_refresher
        if refresher is not None and self.crl_refresher is None:
            previous.crl_refresher = None
            self.crl_refresher = refresher
            refresher.follow(self)
        else:
            self._watch_crl_urls(self.tenants())

    def reload(self) -> None:
        tenants = _read_tenants(self.path, _read_toml(self.path))
        if self.crl_refresher is not None:
            tenants = self.crl_refresher.apply(tenants)
        try:
            self.replace_all(tenants)
        except ConfigError as exc:
            raise ConfigError(f"{self.path}: {exc}") from None
        self._watch_crl_urls(tenants)

    def _watch_crl_urls(self, tenants: list[Tenant]) -> None:
        if self.crl_refresher is None and any(t.crl_urls for t in tenants):
            from .crlfetch import CrlRefresher  # noqa: PLC0415 - only configs with CRL URLs

            self.crl_refresher = CrlRefresher(self)
            self.crl_refresher.start()
        elif self.crl_refresher is not None:
            self.crl_refresher.wake()

    def close(self) -> None:
        """Stop the CRL refresher thread, if any."""
        if self.crl_refresher is not None:
            self.crl_refresher.stop(timeout=5)


def load_config(
    path: str | os.PathLike[str], *, successor_of: TomlRegistry | None = None
) -> Config:
    """Parse ``path`` and load its ``[[tenants]]``; raises
    :class:`ConfigError` saying what to fix (also for a file whose
    ``[certgate].registry`` names a store: see :func:`load_gate_config`).
    ``successor_of``: see :class:`TomlRegistry`."""
    path = Path(path)
    data = _read_toml(path)
    kwargs, section, spec = _parse_settings(path, data)
    if spec is not None:
        raise ConfigError(
            f"{path}: [certgate].registry names a tenant store ({spec.label}): its tenants are "
            "there, not in this file (CertGate.from_toml opens it; `certgate tenants list "
            "--registry URL` lists them)"
        )
    registry = TomlRegistry(path, data, successor_of=successor_of)
    return Config(
        registry=registry,
        gate_kwargs=kwargs,
        section=section,
        files=referenced_files(path, data),
    )


def load_gate_config(path: str | os.PathLike[str], *, successor_of: object = None) -> GateConfig:
    """Parse ``path`` for a gate: its settings, and its registry - the
    ``[[tenants]]`` of the file, or the store ``[certgate].registry`` names,
    opened as a :class:`~certgate.stores.caching.CachingRegistry` (the store
    must exist with the current schema: nothing is created or migrated).

    ``successor_of``: the registry this load is to replace (a reload). A
    :class:`TomlRegistry` hands over its fetched CRLs (see
    :class:`TomlRegistry`); a store registry opened by an earlier load with
    the same URL and cache options is returned as it is (same object, same
    connections and cache), never opened twice."""
    path = Path(path)
    data = _read_toml(path)
    kwargs, section, spec = _parse_settings(path, data)
    registry: TomlRegistry | CachingRegistry
    if spec is None:
        previous = successor_of if isinstance(successor_of, TomlRegistry) else None
        registry = TomlRegistry(path, data, successor_of=previous)
    else:
        if "tenants" in data:
            raise ConfigError(
                f"{path}: [[tenants]] cannot be used together with [certgate].registry: the "
                f"tenants live in the store ({spec.label}). Import them with `certgate tenants "
                f"import --from {safe_text(path, 200)} --to URL` (from a copy of this file "
                "without the registry key), then remove the [[tenants]] tables"
            )
        registry = _store_registry(path, spec, successor_of)
    return GateConfig(
        registry=registry,
        gate_kwargs=kwargs,
        section=section,
        files=referenced_files(path, data),
        store=spec,
    )


def store_spec(path: str | os.PathLike[str]) -> StoreSpec | None:
    """The tenant store ``path``'s ``[certgate].registry`` names (checked,
    not opened), or ``None`` when its tenants are its ``[[tenants]]``."""
    file = Path(path)
    return _parse_settings(file, _read_toml(file))[2]


def _parse_settings(
    path: Path, data: Mapping[str, Any]
) -> tuple[dict[str, Any], Mapping[str, Any], StoreSpec | None]:
    """The gate's keyword arguments, the ``[certgate]`` table, and the
    store spec (``None``: tenants from ``[[tenants]]``) of parsed ``data``."""
    unknown = set(data) - {"certgate", "tenants"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {_some(unknown)}")
    section = data.get("certgate", {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"{path}: [certgate] must be a table")
    kwargs: dict[str, Any] = {}
    for key, value in section.items():
        expected = _GATE_KEYS.get(key)
        if expected is None:
            raise ConfigError(
                f"{path}: unknown key [certgate].{safe_text(key, 80)} "
                f"(known: {', '.join(sorted(_GATE_KEYS))})"
            )
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{path}: [certgate].{key} has the wrong type")
        if key in _STORE_KEYS:
            continue
        if key == "routes" and isinstance(value, list):
            kwargs[key] = _routes(path, value)
            continue
        if key == "policy":
            kwargs[key] = _policy(value, f"{path}: [certgate]")
            continue
        if key == "header_sources" and isinstance(value, list):
            kwargs[key] = _header_sources(path, value)
            continue
        if key == "proxy_ca" and isinstance(value, str):
            kwargs[key] = path.parent / value  # relative to this TOML file, read by the gate
            continue
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: [certgate].{key} must be a list of strings")
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    for key, check in (("access", parse_access), ("mode", parse_mode)):
        if key in kwargs:
            check(kwargs[key], f"{path}: [certgate].{key}")
    return kwargs, section, _store_spec(path, section)


def _store_spec(path: Path, section: Mapping[str, Any]) -> StoreSpec | None:
    """``[certgate].registry`` and ``[certgate.registry_cache]``, checked;
    a relative ``sqlite:///`` path is made relative to ``path``'s directory."""
    url = section.get("registry")
    cache = section.get("registry_cache")
    if url is None:
        if cache is not None:
            raise ConfigError(
                f"{path}: [certgate.registry_cache] needs [certgate].registry (a store URL)"
            )
        return None
    assert isinstance(url, str)  # checked by _parse_settings
    where = f"{path}: [certgate].registry"
    if url.startswith("sqlite:"):
        from .stores.sqlite import path_of_url, sqlite_url  # noqa: PLC0415 - store configs only

        try:
            file = path_of_url(url)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        # absolute: a later chdir (a daemonising server) must not move the store
        url = sqlite_url(os.path.abspath(file if file.is_absolute() else path.parent / file))
    elif "://" not in url:
        raise ConfigError(
            f"{where} must be a URL: sqlite:///PATH (relative to this file) or postgresql://HOST/DB"
        )
    options: dict[str, Any] = {}
    for key, value in (cache or {}).items():
        expected = _CACHE_KEYS.get(key)
        if expected is None:
            raise ConfigError(
                f"{path}: unknown key [certgate.registry_cache].{safe_text(key, 80)} "
                f"(known: {', '.join(sorted(_CACHE_KEYS))})"
            )
        wrong = not isinstance(value, expected) or (
            isinstance(value, bool) and (key != "max_stale" or value)
        )
        if wrong:
            what = "a number of seconds, or false" if key == "max_stale" else "a number"
            raise ConfigError(f"{path}: [certgate.registry_cache].{key} must be {what}")
        options[key] = None if value is False else value
    return StoreSpec(url, tuple(sorted(options.items())))


_OPENED: weakref.WeakKeyDictionary[CachingRegistry, StoreSpec] = weakref.WeakKeyDictionary()
"""The registries :func:`load_gate_config` opened, with their spec."""


def _store_registry(path: Path, spec: StoreSpec, successor_of: object) -> CachingRegistry:
    """The registry of ``spec``: ``successor_of`` when it was opened with
    the same spec, else the store opened anew (a :class:`ConfigError` naming
    the file when it cannot be; never a password)."""
    from .stores import open_registry  # noqa: PLC0415 - store configs only
    from .stores.caching import CachingRegistry  # noqa: PLC0415

    if isinstance(successor_of, CachingRegistry) and _OPENED.get(successor_of) == spec:
        return successor_of
    try:
        registry: CachingRegistry = open_registry(spec.url, asynchronous=False, **dict(spec.cache))
    except ConfigError as exc:
        raise ConfigError(f"{path}: [certgate].registry: {exc}") from None
    _OPENED[registry] = spec
    return registry


def close_registry(registry: object) -> None:
    """Close a registry a gate no longer uses: its ``close()`` (a CRL
    refresher, a cache's poller), and for a store opened by
    :func:`load_gate_config`, the store's connections too."""
    close = getattr(registry, "close", None)
    if callable(close):
        close()
    try:
        opened = registry in _OPENED
    except TypeError:  # not weakly referable: not one of ours
        opened = False
    if opened:
        from .stores.sql import SqlTenantStore  # noqa: PLC0415 - store configs only

        inner = getattr(registry, "inner", None)
        if isinstance(inner, SqlTenantStore):
            inner.retired = True  # a late lookup fails closed, never opens a pool again
        inner_close = getattr(inner, "close", None)
        if callable(inner_close):
            inner_close()


def referenced_files(path: Path, data: Mapping[str, Any]) -> tuple[Path, ...]:
    """``path`` and every file its parsed ``data`` names (tenants' ``roots``,
    ``intermediates`` and ``crls``, ``[certgate].proxy_ca``), relative to
    ``path``'s directory and not resolved - what a file watch looks at.
    Entries that are not strings are skipped (the loader refuses them)."""
    base = path.parent
    names: list[object] = []
    section = data.get("certgate")
    if isinstance(section, Mapping):
        names.append(section.get("proxy_ca"))
    tenants = data.get("tenants")
    for entry in tenants if isinstance(tenants, list) else ():
        if isinstance(entry, Mapping):
            for key in ("roots", "intermediates", "crls"):
                value = entry.get(key)
                if isinstance(value, list):
                    names.extend(value)
    files = [path]
    for name in names:
        if isinstance(name, str):
            # As named, not resolved: a watch stats the name (symbolic links
            # followed), so a swapped link anywhere on the way is a change
            # even when the file it pointed to is kept.
            files.append(base / name)
    return tuple(dict.fromkeys(files))


def _header_sources(path: Path, entries: list[Any]) -> tuple[str | HeaderSource, ...]:
    """``header_sources``: preset names, or inline tables ``{preset = "nginx",
    <option> = ...}`` built here (an unknown preset or option, or a bad
    value, is a ConfigError naming the entry)."""
    out: list[str | HeaderSource] = []
    for position, entry in enumerate(entries, 1):
        where = f"{path}: [certgate].header_sources #{position}"
        if isinstance(entry, str):
            out.append(entry)
            continue
        if not isinstance(entry, Mapping) or not isinstance(entry.get("preset"), str):
            raise ConfigError(
                f"{where}: must be a preset name or a table with a 'preset' key "
                '(e.g. {preset = "nginx", verify_status = false})'
            )
        options = {k: v for k, v in entry.items() if k != "preset"}
        try:
            out.append(header_source(entry["preset"], **options))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return tuple(out)


def read_regular_file(path: str | os.PathLike[str], limit: int, what: str) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes.

    Raises :class:`ConfigError` naming ``what`` and the file when it cannot
    be read, is not a regular file (FIFO, socket, device, directory) or is
    larger than ``limit``. A non-regular file is refused before it is opened
    (opening some devices has side effects); the open itself does not block
    (``O_NONBLOCK``, for a file swapped for a FIFO meanwhile), the opened file
    is checked again, and at most ``limit + 1`` bytes are read.
    """
    shown = safe_text(os.fspath(path), 300)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ConfigError(f"{what} {shown}: not a regular file")
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(f"{what} {shown}: not a regular file")
            if info.st_size > limit:
                raise ConfigError(f"{what} {shown}: {info.st_size} bytes, more than {limit}")
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {shown}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the name
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"cannot read {what} {shown}: {exc}") from None
    if len(data) > limit:
        raise ConfigError(f"{what} {shown}: more than {limit} bytes")
    return data


def _read_toml(path: Path) -> dict[str, Any]:
    data = read_regular_file(path, MAX_CONFIG_BYTES, "config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({exc.reason})") from None
    return parse_toml(text, path)


def parse_toml(text: str, path: str | os.PathLike[str]) -> dict[str, Any]:
    """TOML ``text`` (of the file ``path``, for messages) parsed as the
    configuration is, with the same limits; :class:`ConfigError` if invalid."""
    if text.startswith("\ufeff"):  # Python's parser says only "Invalid statement"
        raise ConfigError(
            f"{path}: invalid TOML: the file starts with a byte order mark (BOM); "
            "save it as UTF-8 without BOM"
        )
    if _longest_dotted_name(text) > MAX_KEY_PARTS:
        raise ConfigError(
            f"{path}: invalid TOML: a dotted key or table name of more than "
            f"{MAX_KEY_PARTS} parts (certgate's settings need at most 2)"
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None


def _read_tenants(path: Path, data: Mapping[str, Any]) -> list[Tenant]:
    return [
        _read_tenant(path, entry, position)
        for position, entry in enumerate(_tenant_entries(path, data), 1)
    ]


def _tenant_entries(path: Path, data: Mapping[str, Any]) -> list[Any]:
    entries = data.get("tenants", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: 'tenants' must be an array of tables ([[tenants]])")
    return entries


def _read_tenant(path: Path, entry: Any, position: int) -> Tenant:
    """The tenant of one ``[[tenants]]`` table (the ``position``-th)."""
    where = f"{path}: tenant #{position}"
    _check_table(entry, where, _TENANT_KEYS)
    tenant_id = entry.get("id")
    if not isinstance(tenant_id, str) or not tenant_id:
        raise ConfigError(f"{where}: 'id' must be a non-empty string")
    try:
        check_tenant_id(tenant_id)  # before any PEM file is read
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    where = f"{path}: tenant {tenant_id!r}"
    hosts = _strings(entry.get("hosts"), f"{where}: 'hosts'", required=True)
    roots = _certs(path, _strings(entry.get("roots"), f"{where}: 'roots'", required=True), where)
    inters = _certs(
        path, _strings(entry.get("intermediates", []), f"{where}: 'intermediates'"), where
    )
    ca_expired = entry.get("ca_expired", "fail")
    if not isinstance(ca_expired, str):
        raise ConfigError(f'{where}: \'ca_expired\' must be "fail" or "warn"')
    shared = entry.get("shared_anchors", False)
    if not isinstance(shared, bool):
        raise ConfigError(f"{where}: 'shared_anchors' must be true or false")
    mode = entry.get("mode")  # checked by Tenant
    policy = entry.get("policy")
    if policy is not None:
        policy = _policy(policy, where)
    crls, labels = _crls(path, _strings(entry.get("crls", []), f"{where}: 'crls'"), where)
    revocation = _revocation_settings(entry, where)
    try:
        return Tenant(
            tenant_id,
            tuple(hosts),
            tuple(cert for cert, _ in roots),
            tuple(cert for cert, _ in inters),
            shared_anchors=shared,
            policy=policy,
            mode=mode,
            crls=tuple(crls),
            crl_labels=tuple(labels),
            ca_expired=ca_expired,
            ca_sources=tuple(source for _, source in (*roots, *inters)),
            **revocation,
        )
    except CaVettingError as exc:
        raise CaVettingError(f"{path}: {exc}", exc.findings) from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _revocation_settings(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``crl_urls``, ``crl_refresh``, ``crl_stale`` and ``require_crl`` of a
    ``[[tenants]]`` table (types checked here, values by :class:`Tenant`)."""
    urls = _strings(entry.get("crl_urls", []), f"{where}: 'crl_urls'")
    for url in urls:
        check_crl_url(url, where)
    refresh = entry.get("crl_refresh", 3600)
    if isinstance(refresh, bool) or not isinstance(refresh, int | float):
        raise ConfigError(f"{where}: 'crl_refresh' must be a number of seconds")
    stale = entry.get("crl_stale", "fail")
    if not isinstance(stale, str):
        raise ConfigError(f'{where}: \'crl_stale\' must be "fail" or "warn"')
    require = entry.get("require_crl", False)
    if not isinstance(require, bool):
        raise ConfigError(f"{where}: 'require_crl' must be true or false")
    return {
        "crl_urls": tuple(urls),
        "crl_refresh": float(refresh),
        "crl_stale": stale,
        "require_crl": require,
    }


def _crls(
    config_path: Path, files: list[str], where: str
) -> tuple[list[x509.CertificateRevocationList], list[str]]:
    """The CRLs of ``files`` (PEM or DER, at most
    :data:`~certgate.crl.MAX_CRL_BYTES` each) and, for each, a label naming
    its file (for vetting errors)."""
    crls: list[x509.CertificateRevocationList] = []
    labels: list[str] = []
    for name in files:
        file = config_path.parent / name
        with contextlib.suppress(OSError, RuntimeError, ValueError):  # the read says why
            file = file.resolve()
        try:
            data = read_regular_file(file, MAX_CRL_BYTES, "CRL file")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        label = f"{where}: CRL file {safe_text(file, 300)}"
        loaded = load_crls(data, label)
        crls.extend(loaded)
        labels.extend([label] * len(loaded))
    return crls, labels


def _policy(value: Any, where: str) -> Policy:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: 'policy' must be a table")
    from .policy import policy_from_config  # noqa: PLC0415 - only configs with policies

    return policy_from_config(value, where)


def _routes(path: Path, entries: list[Any]) -> tuple[Route, ...]:
    if len(entries) > MAX_ROUTES:
        raise ConfigError(f"{path}: more than {MAX_ROUTES} [[certgate.routes]]")
    routes: list[Route] = []
    for position, entry in enumerate(entries, 1):
        where = f"{path}: [[certgate.routes]] #{position}"
        _check_table(entry, where, _ROUTE_KEYS)
        pattern = entry.get("path")
        if not isinstance(pattern, str):
            raise ConfigError(f"{where}: 'path' must be a string")
        where = f"{path}: route {safe_text(pattern, 80)}"
        access = entry.get("access")
        mode = entry.get("mode")
        policy = entry.get("policy")
        try:
            routes.append(
                Route(
                    pattern,
                    # parsed here so that the message names the file and route once
                    access=None if access is None else parse_access(access, where),
                    mode=None if mode is None else parse_mode(mode, where),
                    policy=None if policy is None else _policy(policy, where),
                )
            )
        except ConfigError as exc:
            if str(exc).startswith(str(path)):
                raise
            raise ConfigError(f"{where}: {exc}") from None
    return tuple(routes)


def _check_table(entry: object, where: str, known: set[str]) -> None:
    """:class:`ConfigError` unless ``entry`` is a table of ``known`` keys only."""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} is not a table")
    unknown = set(entry) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {_some(unknown)}")


def _some(keys: set[str], shown: int = 5) -> str:
    """The first ``shown`` of ``keys``, sorted and escaped, and how many more:
    a file of a million unknown keys gives a message of one line."""
    names = sorted(keys)
    text = ", ".join(repr(name[:80]) for name in names[:shown])
    return f"[{text}{f', ... ({len(names) - shown} more)' if len(names) > shown else ''}]"


def _strings(value: Any, what: str, *, required: bool = False) -> list[str]:
    if value is None:
        value = []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what} must be a list of strings")
    if required and not value:
        raise ConfigError(f"{what} must not be empty")
    return value


def _certs(config_path: Path, files: list[str], where: str) -> list[tuple[x509.Certificate, str]]:
    """Every certificate of ``files`` with the (escaped) name of its file."""
    certs: list[tuple[x509.Certificate, str]] = []
    for name in files:
        file = config_path.parent / name
        with contextlib.suppress(OSError, RuntimeError, ValueError):  # the read says why
            file = file.resolve()
        try:
            data = read_regular_file(file, MAX_PEM_FILE_BYTES, "PEM file")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        shown = safe_text(file, 300)
        certs.extend((cert, shown) for cert in load_pem_certificates(data, f"{where}: {shown}"))
    return certs


def ca_findings(path: str | os.PathLike[str]) -> list[Finding]:
    """Every finding of every ``[[tenants]]`` table of ``path``, for
    ``certgate config check``: each CA vetting error and warning
    (:mod:`certgate.vetting`), and an error with rule ``tenant`` (its
    ``problem`` the whole message) for a table that fails to load for
    another reason. Unlike loading, it does not stop at the first tenant.
    Checks between tenants (ids, hosts, shared anchors) are not done here.
    :class:`ConfigError` when the file itself cannot be read or parsed."""
    path = Path(path)
    findings: list[Finding] = []
    for position, entry in enumerate(_tenant_entries(path, _read_toml(path)), 1):
        tenant_id = entry.get("id") if isinstance(entry, Mapping) else None
        try:
            with quiet():
                tenant = _read_tenant(path, entry, position)
        except CaVettingError as exc:
            findings.extend(exc.findings)
        except ConfigError as exc:
            name = tenant_id if isinstance(tenant_id, str) else f"#{position}"
            findings.append(
                Finding("error", "tenant", safe_text(name, 128), str(exc), "correct the table")
            )
        else:
            findings.extend(tenant.ca_warnings)
    return findings
