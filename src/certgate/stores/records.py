"""Tenant records: a tenant in portable form, as stored and exported.

A :class:`TenantRecord` holds everything a :class:`~certgate.tenant.Tenant`
is built from, as plain data: certificates and CRLs as DER, the policy in
its TOML/JSON form (a :class:`~certgate.policy.Policy` object cannot be
stored; :func:`certgate.policy.policy_from_config` builds it). It is what a
store writes and reads, and one line of ``certgate tenants export``
(JSON, certificates as PEM).

:meth:`TenantRecord.build` makes the ``Tenant``: with ``vetted=False`` (the
write path) every CA certificate is vetted and every CRL checked, which
raises :class:`~certgate.errors.ConfigError` naming the tenant and the
rule; with ``vetted=True`` (the read path of a store that vetted the record
when it was written) the CA vetting is skipped (see
:func:`certgate.tenant.prevetted`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .. import certmemo
from ..crl import load_crls
from ..errors import ConfigError
from ..tenant import Tenant, check_crl_url, check_tenant_id, prevetted

EXPORT_KEYS = frozenset(
    {
        "id",
        "hosts",
        "roots",
        "intermediates",
        "crls",
        "shared_anchors",
        "mode",
        "policy",
        "crl_urls",
        "crl_refresh",
        "crl_stale",
        "require_crl",
        "ca_expired",
        "version",
        "created",
        "updated",
    }
)
"""Keys of one exported tenant (``version``, ``created`` and ``updated`` are
informative: an import ignores them)."""

MAX_POLICY_JSON = 64 * 1024
"""Largest policy (as JSON text) a record may hold."""

_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]*?-----END CERTIFICATE-----")


@dataclass(frozen=True)
class TenantRecord:
    """A tenant as data (see the module docstring).

    ``roots``, ``intermediates`` and ``crls`` are DER; ``crl_labels`` name
    the CRLs and ``ca_sources`` the roots then intermediates in error
    messages (file names, say; neither is stored); ``policy`` is the
    TOML/JSON form of the tenant's policy or ``None``; ``ca_expired`` as on
    :class:`~certgate.tenant.Tenant` (it decides whether the record is
    accepted when written, never how it is read back). ``version``,
    ``created`` and ``updated`` are set by a store (``0``/``None`` otherwise).
    """

    id: str
    hosts: tuple[str, ...]
    roots: tuple[bytes, ...]
    intermediates: tuple[bytes, ...] = ()
    crls: tuple[bytes, ...] = ()
    crl_labels: tuple[str | None, ...] = field(default=(), compare=False)
    shared_anchors: bool = False
    mode: str | None = None
    policy: Mapping[str, Any] | None = None
    crl_urls: tuple[str, ...] = ()
    crl_refresh: float = 3600.0
    crl_stale: str = "fail"
    require_crl: bool = False
    ca_expired: str = "fail"
    ca_sources: tuple[str, ...] = field(default=(), compare=False)
    version: int = field(default=0, compare=False)
    created: str | None = field(default=None, compare=False)
    updated: str | None = field(default=None, compare=False)

    @classmethod
    def of(cls, tenant: Tenant, policy: Mapping[str, Any] | None = None) -> TenantRecord:
        """The record of ``tenant``. A tenant with a policy needs ``policy``,
        its TOML/JSON form (:class:`ConfigError` otherwise); CRLs fetched
        from ``crl_urls`` are not part of the record."""
        if tenant.policy is not None and policy is None:
            raise ConfigError(
                f"tenant {tenant.id!r} has a Python policy object, which a store cannot keep: "
                "pass its TOML/JSON form (policy={...}, as in a [[tenants]] table)"
            )
        labels = tenant.crl_labels
        return cls(
            id=tenant.id,
            hosts=tenant.hosts,
            roots=tuple(c.public_bytes(Encoding.DER) for c in tenant.roots),
            intermediates=tuple(c.public_bytes(Encoding.DER) for c in tenant.intermediates),
            crls=tuple(c.public_bytes(Encoding.DER) for c in tenant.crls),
            crl_labels=tuple(
                labels[i] if i < len(labels) else None for i in range(len(tenant.crls))
            ),
            shared_anchors=tenant.shared_anchors,
            mode=tenant.mode,
            policy=policy,
            crl_urls=tenant.crl_urls,
            crl_refresh=tenant.crl_refresh,
            crl_stale=tenant.crl_stale,
            require_crl=tenant.require_crl,
            ca_expired=tenant.ca_expired,
            ca_sources=tenant.ca_sources,
        )

    def build(self, *, vetted: bool = False) -> Tenant:
        """The :class:`Tenant` of this record (see the module docstring);
        :class:`ConfigError` naming the tenant when something does not parse
        or fails vetting."""
        where = f"tenant {self.id!r}"
        check_tenant_id(self.id)
        roots = tuple(
            _certificate(der, f"{where}: root #{i}") for i, der in enumerate(self.roots, 1)
        )
        inters = tuple(
            _certificate(der, f"{where}: intermediate #{i}")
            for i, der in enumerate(self.intermediates, 1)
        )
        crls = tuple(_crl(der, f"{where}: CRL #{i}") for i, der in enumerate(self.crls, 1))
        labels = tuple(
            label if label is not None else f"{where}: CRL #{i}"
            for i, label in enumerate(self.crl_labels or (None,) * len(self.crls), 1)
        )
        policy = None
        if self.policy is not None:
            from ..policy import policy_from_config  # noqa: PLC0415 - only tenants with policies

            policy = policy_from_config(self.policy, where)
        fields: dict[str, Any] = {
            "id": self.id,
            "hosts": tuple(self.hosts),
            "roots": roots,
            "intermediates": inters,
            "shared_anchors": self.shared_anchors,
            "policy": policy,
            "mode": self.mode,
            "crls": crls,
            "crl_labels": labels,
            "crl_urls": tuple(self.crl_urls),
            "crl_refresh": self.crl_refresh,
            "crl_stale": self.crl_stale,
            "require_crl": self.require_crl,
            "ca_expired": self.ca_expired,
            "ca_sources": tuple(self.ca_sources),
        }
        if vetted:
            with prevetted():
                return Tenant(**fields)
        return Tenant(**fields)

    # -- the stored and exported forms ------------------------------------

    def settings(self) -> dict[str, Any]:
        """The ``tenants.settings`` JSON object."""
        return {
            "policy": self.policy,
            "crl_urls": list(self.crl_urls),
            "crl_refresh": self.crl_refresh,
            "crl_stale": self.crl_stale,
            "require_crl": self.require_crl,
            "ca_expired": self.ca_expired,
        }

    def settings_json(self) -> str:
        """:meth:`settings` as canonical JSON text (:class:`ConfigError` if
        the policy is not JSON data or too large); computed once."""
        known = self.__dict__.get("_settings_json")
        if known is not None:
            return str(known)
        memo = certmemo.active()
        try:
            if memo is not None and self.policy is None:  # the same few texts, over and over
                key = (
                    self.crl_urls,
                    type(self.crl_refresh),
                    self.crl_refresh,
                    self.crl_stale,
                    self.require_crl,
                    self.ca_expired,
                )
                text = memo.get("settings", key, self._settings_text)
            else:
                text = self._settings_text()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"tenant {self.id!r}: the policy is not JSON data: {exc}") from None
        if len(text) > MAX_POLICY_JSON:
            raise ConfigError(
                f"tenant {self.id!r}: settings of {len(text)} characters (most: {MAX_POLICY_JSON})"
            )
        self.__dict__["_settings_json"] = text  # a cache: the record is immutable
        return text

    def _settings_text(self) -> str:
        return json.dumps(self.settings(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> bytes:
        """SHA-256 over everything stored of the tenant (not ``version`` or
        the timestamps): equal digests, same tenant. Computed once."""
        known = self.__dict__.get("_digest")
        if known is not None:
            return bytes(known)
        parts: list[bytes] = [
            self.id.encode(),
            json.dumps(list(self.hosts)).encode(),
            b"%d" % self.shared_anchors,
            (self.mode or "").encode(),
            self.settings_json().encode(),
        ]
        for group in (self.roots, self.intermediates, self.crls):
            parts.append(b"%d" % len(group))
            parts.extend(group)
        parts.extend((label or "").encode() for label in self.crl_labels)
        # SHA-256 over the prefix and each part as b"LEN:" + part (one call)
        value = hashlib.sha256(
            b"certgate-record-v1" + b"".join([b"%d:%b" % (len(part), part) for part in parts])
        ).digest()
        self.__dict__["_digest"] = value  # a cache: the record is immutable
        return value

    @classmethod
    def from_settings(
        cls,
        *,
        id: str,
        hosts: Sequence[str],
        roots: Sequence[bytes],
        intermediates: Sequence[bytes],
        crls: Sequence[tuple[bytes, str | None]],
        shared_anchors: bool,
        mode: str | None,
        settings: str,
        version: int = 0,
        created: str | None = None,
        updated: str | None = None,
    ) -> TenantRecord:
        """A record from its stored columns (``settings``: the JSON text)."""
        data = json.loads(settings)
        return cls(
            id=id,
            hosts=tuple(hosts),
            roots=tuple(roots),
            intermediates=tuple(intermediates),
            crls=tuple(der for der, _ in crls),
            crl_labels=tuple(label for _, label in crls),
            shared_anchors=bool(shared_anchors),
            mode=mode,
            policy=data.get("policy"),
            crl_urls=tuple(data.get("crl_urls", ())),
            crl_refresh=float(data.get("crl_refresh", 3600.0)),
            crl_stale=str(data.get("crl_stale", "fail")),
            require_crl=bool(data.get("require_crl", False)),
            ca_expired=str(data.get("ca_expired", "fail")),
            version=int(version),
            created=created,
            updated=updated,
        )

    def to_json(self) -> dict[str, Any]:
        """The exported form: JSON data, certificates and CRLs as PEM."""
        out: dict[str, Any] = {
            "id": self.id,
            "hosts": list(self.hosts),
            "roots": [_pem("CERTIFICATE", der) for der in self.roots],
        }
        if self.intermediates:
            out["intermediates"] = [_pem("CERTIFICATE", der) for der in self.intermediates]
        if self.crls:
            out["crls"] = [_pem("X509 CRL", der) for der in self.crls]
        if self.shared_anchors:
            out["shared_anchors"] = True
        if self.mode is not None:
            out["mode"] = self.mode
        if self.policy is not None:
            out["policy"] = self.policy
        if self.crl_urls:
            out["crl_urls"] = list(self.crl_urls)
        if self.crl_refresh != 3600.0:
            out["crl_refresh"] = self.crl_refresh
        if self.crl_stale != "fail":
            out["crl_stale"] = self.crl_stale
        if self.require_crl:
            out["require_crl"] = True
        if self.ca_expired != "fail":
            out["ca_expired"] = self.ca_expired
        if self.version:
            out["version"] = self.version
        if self.created:
            out["created"] = self.created
        if self.updated:
            out["updated"] = self.updated
        return out

    @classmethod
    def from_json(cls, data: object, where: str) -> TenantRecord:
        """A record from its exported form; :class:`ConfigError` naming
        ``where`` (a file and line) and the key for anything malformed."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: a tenant must be a JSON object")
        unknown = sorted(str(key) for key in data if key not in EXPORT_KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown[:5])}; known: "
                f"{', '.join(sorted(EXPORT_KEYS))}"
            )
        tenant_id = data.get("id")
        try:
            check_tenant_id(tenant_id)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        assert isinstance(tenant_id, str)
        where = f"{where}: tenant {tenant_id!r}"
        crl_urls = _strings(data, "crl_urls", where)
        for url in crl_urls:
            check_crl_url(url, where)
        refresh = data.get("crl_refresh", 3600.0)
        if (
            isinstance(refresh, bool)
            or not isinstance(refresh, int | float)
            or not math.isfinite(refresh)
        ):
            raise ConfigError(f"{where}: 'crl_refresh' must be a number of seconds")
        policy = data.get("policy")
        if policy is not None and not isinstance(policy, Mapping):
            raise ConfigError(f"{where}: 'policy' must be an object")
        mode = data.get("mode")
        if mode is not None and not isinstance(mode, str):
            raise ConfigError(f"{where}: 'mode' must be a string")
        stale = data.get("crl_stale", "fail")
        if not isinstance(stale, str):
            raise ConfigError(f"{where}: 'crl_stale' must be a string")
        ca_expired = data.get("ca_expired", "fail")
        if not isinstance(ca_expired, str):
            raise ConfigError(f"{where}: 'ca_expired' must be a string")
        flags = {}
        for key in ("shared_anchors", "require_crl"):
            value = data.get(key, False)
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {key!r} must be true or false")
            flags[key] = value
        return cls(
            id=tenant_id,
            hosts=tuple(_strings(data, "hosts", where, required=True)),
            roots=tuple(_pem_certs(data, "roots", where, required=True)),
            intermediates=tuple(_pem_certs(data, "intermediates", where)),
            crls=tuple(_pem_crls(data, where)),
            shared_anchors=flags["shared_anchors"],
            mode=mode,
            policy=policy,
            crl_urls=tuple(crl_urls),
            crl_refresh=float(refresh),
            crl_stale=stale,
            require_crl=flags["require_crl"],
            ca_expired=ca_expired,
        )


def _certificate(der: bytes, where: str) -> x509.Certificate:
    try:
        return certmemo.load_der(der)
    except ValueError as exc:
        raise ConfigError(f"{where} is not a DER certificate: {exc}") from None


def _crl(der: bytes, where: str) -> x509.CertificateRevocationList:
    try:
        return x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise ConfigError(f"{where} is not a DER CRL: {exc}") from None


def _pem(label: str, der: bytes) -> str:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def _strings(data: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key!r} must be a list of strings")
    if required and not value:
        raise ConfigError(f"{where}: {key!r} must not be empty")
    return list(value)


def _pem_certs(
    data: Mapping[str, Any], key: str, where: str, *, required: bool = False
) -> list[bytes]:
    ders: list[bytes] = []
    for position, text in enumerate(_strings(data, key, where, required=required), 1):
        blocks = _PEM_CERT.findall(text)
        if not blocks:
            raise ConfigError(f"{where}: {key}[{position}] holds no PEM certificate")
        for block in blocks:
            try:
                ders.append(_pem_der(block))
            except ValueError as exc:
                raise ConfigError(f"{where}: {key}[{position}]: {exc}") from None
    return ders


def _pem_der(block: str) -> bytes:
    """The DER of one PEM certificate block (``ValueError`` when it does not
    parse); remembered during an import (:mod:`certgate.certmemo`)."""

    def load() -> bytes:
        return x509.load_pem_x509_certificate(block.encode("ascii")).public_bytes(Encoding.DER)

    memo = certmemo.active()
    return load() if memo is None else memo.get("pem", block, load)


def _pem_crls(data: Mapping[str, Any], where: str) -> list[bytes]:
    ders: list[bytes] = []
    for position, text in enumerate(_strings(data, "crls", where), 1):
        for crl in load_crls(text.encode("ascii", "replace"), f"{where}: crls[{position}]"):
            ders.append(crl.public_bytes(Encoding.DER))
    return ders
