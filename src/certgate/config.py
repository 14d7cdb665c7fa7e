"""The TOML configuration file.

```toml
[certgate]                       # optional; every key has a safe default
trusted_proxies = []             # CIDRs of proxies allowed to set cert headers
header_sources  = []             # e.g. ["cloudflare"]; needs trusted_proxies
transport       = true           # use the certificate of the TLS connection
exempt_paths    = ["/healthz"]   # exact paths, or prefixes ending in "/*"
strip_known_headers = true       # remove every well-known proxy cert header from untrusted peers
trust_reported_peer = false      # believe scope["client"] / REMOTE_ADDR as the socket peer
cache_size      = 10000          # verified chains kept (0 = no cache)
max_chain_depth = 8
min_rsa_bits    = 2048

[[tenants]]
id            = "acme"
hosts         = ["pay.acme.com", "*.acme.example"]
roots         = ["acme-root.pem"]          # files relative to this TOML file;
intermediates = ["acme-issuing-ca.pem"]    # one file may hold several PEMs
```

Unknown keys are errors, not ignored: a typo such as ``trusted_proxy`` must
not silently leave a setting at its default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from .errors import ConfigError
from .registry import InMemoryRegistry
from .tenant import Tenant, load_pem_certificates

_GATE_KEYS: dict[str, type | tuple[type, ...]] = {
    "trusted_proxies": list,
    "header_sources": list,
    "transport": bool,
    "exempt_paths": list,
    "strip_known_headers": bool,
    "trust_reported_peer": bool,
    "cache_size": int,
    "max_chain_depth": int,
    "min_rsa_bits": int,
    "registry_timeout": (int, float),
}
_TENANT_KEYS = {"id", "hosts", "roots", "intermediates"}


@dataclass
class Config:
    """A parsed configuration file: the registry and the gate's settings."""

    registry: TomlRegistry
    gate_kwargs: dict[str, Any] = field(default_factory=dict)


class TomlRegistry(InMemoryRegistry):
    """An in-memory registry filled from the ``[[tenants]]`` of a TOML file.

    :meth:`reload` re-reads the file and swaps the tenants in atomically; on a
    bad file it raises and keeps serving the previous tenants. It reloads
    ``[[tenants]]`` only: a change to ``[certgate]`` settings needs a restart.
    """

    def __init__(self, path: str | os.PathLike[str], data: Mapping[str, Any] | None = None) -> None:
        """Load ``path`` (``data``: its already-parsed contents, if at hand)."""
        self.path = Path(path)
        super().__init__(
            _read_tenants(self.path, data if data is not None else _read_toml(self.path))
        )

    def reload(self) -> None:
        self.replace_all(_read_tenants(self.path, _read_toml(self.path)))


def load_config(path: str | os.PathLike[str]) -> Config:
    """Parse ``path``; raises :class:`ConfigError` saying what to fix."""
    path = Path(path)
    data = _read_toml(path)
    unknown = set(data) - {"certgate", "tenants"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}")
    section = data.get("certgate", {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"{path}: [certgate] must be a table")
    kwargs: dict[str, Any] = {}
    for key, value in section.items():
        expected = _GATE_KEYS.get(key)
        if expected is None:
            raise ConfigError(
                f"{path}: unknown key [certgate].{key} (known: {', '.join(sorted(_GATE_KEYS))})"
            )
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{path}: [certgate].{key} has the wrong type")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: [certgate].{key} must be a list of strings")
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    return Config(registry=TomlRegistry(path, data), gate_kwargs=kwargs)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _read_tenants(path: Path, data: Mapping[str, Any]) -> list[Tenant]:
    entries = data.get("tenants", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: 'tenants' must be an array of tables ([[tenants]])")
    tenants: list[Tenant] = []
    for position, entry in enumerate(entries, 1):
        where = f"{path}: tenant #{position}"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} is not a table")
        unknown = set(entry) - _TENANT_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
        tenant_id = entry.get("id")
        if not isinstance(tenant_id, str) or not tenant_id:
            raise ConfigError(f"{where}: 'id' must be a non-empty string")
        where = f"{path}: tenant {tenant_id!r}"
        hosts = _strings(entry.get("hosts"), f"{where}: 'hosts'", required=True)
        roots = _certs(
            path, _strings(entry.get("roots"), f"{where}: 'roots'", required=True), where
        )
        inters = _certs(
            path, _strings(entry.get("intermediates", []), f"{where}: 'intermediates'"), where
        )
        try:
            tenants.append(Tenant(tenant_id, tuple(hosts), tuple(roots), tuple(inters)))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return tenants


def _strings(value: Any, what: str, *, required: bool = False) -> list[str]:
    if value is None:
        value = []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what} must be a list of strings")
    if required and not value:
        raise ConfigError(f"{what} must not be empty")
    return value


def _certs(config_path: Path, files: list[str], where: str) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for name in files:
        file = (config_path.parent / name).resolve()
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {file}: {exc.strerror or exc}") from None
        certs.extend(load_pem_certificates(data, f"{where}: {file}"))
    return certs
