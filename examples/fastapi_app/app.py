"""FastAPI behind certgate: a public page, certificate-only routes, a
per-route rule, report-only rollout and the OpenAPI ``mutualTLS`` scheme.

    CERTGATE_CONFIG=path/to/certgate.toml \\
    python -m certgate.servers.uvicorn examples.fastapi_app.app:create_app --factory \\
        --ssl-certfile server.pem --ssl-keyfile server.key \\
        --ssl-ca-certs tenants-bundle.pem --ssl-cert-reqs 1

or ``python examples/fastapi_app/serve.py --env DIR`` with a directory made by
``examples/devenv.py``. ``CERTGATE_MODE=report`` starts in report-only mode
(refusals are logged, requests pass) - as ``mode = "report"`` in the TOML
file's ``[certgate]`` table does.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import Depends, FastAPI, Security, WebSocket

from certgate import CertGate, ClientIdentity, policy
from certgate.fastapi import (
    client_identity,
    install,
    optional_client_identity,
    require_client_cert,
)
from certgate.rollout import Access, Route
from certgate.starlette import get_identity

# Per-route rule: only Acme's sensors, by their SPIFFE ID (a URI SAN the
# issuing CA vouches for - not the common name, which any CA of the tenant
# could put in any certificate).
sensors_only = require_client_cert(policy.spiffe_path_prefix("spiffe://acme.test/device"))

PUBLIC = ("/", "/docs", "/openapi.json")
"""Served with or without a certificate (a presented one is still verified)."""


def create_app(config: str | None = None, *, mode: str | None = None) -> FastAPI:
    """The example app; ``config`` defaults to ``$CERTGATE_CONFIG``, ``mode``
    (``"enforce"`` or ``"report"``) to ``$CERTGATE_MODE`` or the file's."""
    path = config or os.environ.get("CERTGATE_CONFIG")
    if not path:
        raise RuntimeError("set CERTGATE_CONFIG to a certgate TOML file")
    overrides: dict[str, Any] = {}
    mode = mode or os.environ.get("CERTGATE_MODE")
    if mode:
        overrides["mode"] = mode
    gate = CertGate.from_toml(path, **overrides)
    for public in PUBLIC:
        gate.rollout.set_route(Route(public, access=Access.OPTIONAL))

    app = FastAPI(title="certgate FastAPI example")
    install(app, gate)  # middleware, refusal handler, OpenAPI mutualTLS

    @app.get("/")
    async def home(identity: ClientIdentity | None = Depends(optional_client_identity)) -> Any:  # noqa: B008
        if identity is None:
            return {"hello": "anonymous"}
        return {"hello": identity.common_name, "tenant_id": identity.tenant_id}

    @app.get("/whoami")
    async def whoami(identity: ClientIdentity | None = Depends(client_identity)) -> Any:  # noqa: B008
        # None only in report-only mode, for a request enforce mode would refuse
        return identity.as_dict() if identity else {"identity": None}

    @app.post("/telemetry")
    async def telemetry(identity: ClientIdentity | None = Security(sensors_only)) -> Any:  # noqa: B008
        return {"accepted_from": identity.spiffe_id if identity else None}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        # certgate refused the handshake already unless the certificate is valid
        identity = get_identity(websocket)
        await websocket.accept()
        await websocket.send_json({"tenant_id": identity.tenant_id if identity else None})
        await websocket.close()

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app
