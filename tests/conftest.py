"""Shared fixtures: a real, throwaway multi-tenant PKI made at test time.

Tenants:

* ``acme``    - root + issuing intermediate; the intermediate is NOT configured
  on the tenant, so clients must send it (``client.chain_ders``).
  Hosts ``pay.acme.test`` and ``*.acme.test``.
* ``globex``  - clients issued directly by the root. Host ``api.globex.test``.
* ``initech`` - two roots (rotation: old and new), the issuing intermediate
  under the new root IS configured on the tenant, so clients may send only
  their leaf. Host ``initech.test``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from certgate import CertGate, InMemoryRegistry, Tenant
from certgate.devpki import CA, IssuedCert

# pg_server / pg_dsn / pg_private: a real PostgreSQL (tests/pg_server.py);
# backend / store_url / store: one store of each kind (tests/store_backends.py);
# files / loaded: a configuration directory and its gate (tests/reload_files.py)
pytest_plugins = ["tests.pg_server", "tests.store_backends", "tests.reload_files"]


@dataclass
class TenantPKI:
    id: str
    hosts: tuple[str, ...]
    roots: tuple[CA, ...]
    issuer: CA
    configured_intermediates: tuple[CA, ...] = ()
    host: str = field(init=False)

    def __post_init__(self) -> None:
        self.host = self.hosts[0]

    def tenant(self) -> Tenant:
        return Tenant(
            self.id,
            self.hosts,
            tuple(r.cert for r in self.roots),
            tuple(i.cert for i in self.configured_intermediates),
        )

    def client(self, common_name: str | None = None, **kwargs: Any) -> IssuedCert:
        return self.issuer.issue(common_name or f"device-of-{self.id}", **kwargs)


@dataclass
class PKI:
    tenants: dict[str, TenantPKI]
    server_ca: CA
    rogue: CA

    def __getitem__(self, tenant_id: str) -> TenantPKI:
        return self.tenants[tenant_id]

    def registry(self) -> InMemoryRegistry:
        return InMemoryRegistry(t.tenant() for t in self.tenants.values())


def _build_pki() -> PKI:
    acme_root = CA.root("Acme Root CA", organization="Acme")
    acme_issuing = acme_root.intermediate("Acme Issuing CA", organization="Acme")
    globex_root = CA.root("Globex Root CA", organization="Globex")
    initech_old = CA.root("Initech Root CA 2019", organization="Initech")
    initech_new = CA.root("Initech Root CA 2026", organization="Initech")
    initech_issuing = initech_new.intermediate("Initech Issuing CA", organization="Initech")
    tenants = {
        "acme": TenantPKI("acme", ("pay.acme.test", "*.acme.test"), (acme_root,), acme_issuing),
        "globex": TenantPKI("globex", ("api.globex.test",), (globex_root,), globex_root),
        "initech": TenantPKI(
            "initech",
            ("initech.test",),
            (initech_old, initech_new),
            initech_issuing,
            configured_intermediates=(initech_issuing,),
        ),
    }
    return PKI(tenants=tenants, server_ca=CA.root("Test Server CA"), rogue=CA.root("Rogue CA"))


@pytest.fixture(scope="session")
def pki() -> PKI:
    return _build_pki()


@pytest.fixture
def make_gate(pki: PKI) -> Callable[..., CertGate]:
    """``make_gate(**CertGate kwargs)`` over the three test tenants."""

    def factory(**kwargs: Any) -> CertGate:
        return CertGate(pki.registry(), **kwargs)

    return factory


def utc(year: int, month: int, day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, tzinfo=dt.UTC)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
