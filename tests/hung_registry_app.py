"""An ASGI app whose trust registry hangs for one host, for the real-server
test of ``registry_timeout`` (tests/test_registry_timeout.py).

    CERTGATE_CONFIG=DIR/certgate.toml python -m certgate.servers.uvicorn \\
        tests.hung_registry_app:create_app --factory ...

Lookups of ``api.globex.test`` block forever (a database that stopped
answering); every other host is answered from the TOML file's tenants.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from certgate import CertGate, Tenant, load_config
from certgate.asgi import CertGateMiddleware, Receive, Scope, Send, identity_from_scope

HUNG_HOST = "api.globex.test"


class HungForOneHost:
    """A blocking registry (the default for custom registries)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.never = threading.Event()

    def tenant_for_host(self, host: str) -> Tenant | None:
        if host == HUNG_HOST:
            self.never.wait()
        tenant: Tenant | None = self.inner.tenant_for_host(host)
        return tenant

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        tenant: Tenant | None = self.inner.tenant_by_id(tenant_id)
        return tenant


async def whoami(scope: Scope, receive: Receive, send: Send) -> None:
    identity = identity_from_scope(scope)
    body = ('{"tenant_id": "%s"}' % (identity.tenant_id if identity else "")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app() -> CertGateMiddleware:
    config = load_config(os.environ["CERTGATE_CONFIG"])
    gate = CertGate(HungForOneHost(config.registry), **config.gate_kwargs)
    return CertGateMiddleware(whoami, gate)
