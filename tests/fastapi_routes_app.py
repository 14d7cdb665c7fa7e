"""A FastAPI app for the real-TLS test of tests/test_fastapi_deps.py: a
public route, a certificate-only route and a route with a policy (the test's
own Policy subclass, independent of certgate.policy)."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from fastapi import Depends, FastAPI, Security

from certgate import CertGate, ClientIdentity
from certgate.fastapi import (
    client_identity,
    install,
    optional_client_identity,
    require_client_cert,
)
from certgate.policy import Policy


class SensorOnly(Policy):
    def __init__(self) -> None:
        object.__setattr__(self, "label", "sensor only")

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        if identity.common_name == "sensor-17":
            return None
        return "common_name is not sensor-17: secret-rule-text"


sensor_only = require_client_cert(SensorOnly())


def create_app() -> FastAPI:
    app = FastAPI()
    install(app, CertGate.from_toml(os.environ["CERTGATE_CONFIG"], access="optional"))

    @app.get("/")
    async def home(identity: ClientIdentity | None = Depends(optional_client_identity)) -> Any:  # noqa: B008
        return {"cn": identity.common_name if identity else None}

    @app.get("/whoami")
    async def whoami(identity: ClientIdentity | None = Depends(client_identity)) -> Any:  # noqa: B008
        return {"cn": identity.common_name if identity else None}

    @app.get("/sensor")
    async def sensor(identity: ClientIdentity | None = Security(sensor_only)) -> Any:  # noqa: B008
        return {"cn": identity.common_name if identity else None}

    return app
