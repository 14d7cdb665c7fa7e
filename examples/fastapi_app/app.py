"""FastAPI behind certgate.

    CERTGATE_CONFIG=path/to/certgate.toml \\
    python -m certgate.servers.uvicorn examples.fastapi_app.app:create_app --factory \\
        --ssl-certfile server.pem --ssl-keyfile server.key \\
        --ssl-ca-certs tenants-bundle.pem --ssl-cert-reqs 1

or ``python examples/fastapi_app/serve.py --env DIR`` with a directory made by
``examples/devenv.py``.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import Depends, FastAPI, WebSocket

from certgate import CertGate, ClientIdentity
from certgate.asgi import CertGateMiddleware
from certgate.starlette import client_identity, get_identity


def create_app(config: str | None = None) -> FastAPI:
    """The example app; ``config`` defaults to ``$CERTGATE_CONFIG``."""
    path = config or os.environ.get("CERTGATE_CONFIG")
    if not path:
        raise RuntimeError("set CERTGATE_CONFIG to a certgate TOML file")
    app = FastAPI(title="certgate FastAPI example")
    app.add_middleware(CertGateMiddleware, gate=CertGate.from_toml(path))

    @app.get("/whoami")
    def whoami(identity: ClientIdentity = Depends(client_identity)) -> dict[str, Any]:  # noqa: B008
        return identity.as_dict()

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
