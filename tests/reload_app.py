"""A tiny ASGI app behind certgate for the hot-reload end-to-end tests.

    CERTGATE_CONFIG=certgate.toml RELOAD_STATE_DIR=DIR \\
    python -m certgate.servers.uvicorn tests.reload_app:create_app --factory ...

Every allowed request answers JSON: the process id, the version of the
snapshot that decided it, that snapshot's ``refusal_format`` (the tests use
it to tell two configurations apart) and the identity. ``/version`` (exempt
in the tests' files) answers the gate's current version. Each process writes
``DIR/<pid>`` with its gate's version at every successful load and reload,
so a test can see that every worker reloaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from certgate import CertGate
from certgate.asgi import GATE_KEY, IDENTITY_KEY, CertGateMiddleware
from certgate.events import DecisionEvent, ExpiryEvent, ReloadEvent


class VersionFile:
    """Writes this process's gate version to ``directory/<pid>`` (atomically)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_decision(self, event: DecisionEvent) -> None:
        pass

    def on_expiring(self, event: ExpiryEvent) -> None:
        pass

    def on_reload(self, event: ReloadEvent) -> None:
        if event.ok:
            target = self.directory / str(os.getpid())
            tmp = self.directory / f".{os.getpid()}.tmp"
            tmp.write_text(str(event.version))
            os.replace(tmp, target)


def create_app() -> Any:
    observers = []
    state = os.environ.get("RELOAD_STATE_DIR")
    if state:
        observers.append(VersionFile(Path(state)))
    gate = CertGate.from_toml(os.environ["CERTGATE_CONFIG"], observers=observers)
    if os.environ.get("RELOAD_ON_SIGHUP"):
        gate.reload_on_signal()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        pinned = scope[GATE_KEY]
        identity = scope.get(IDENTITY_KEY)
        body: dict[str, Any] = {
            "pid": os.getpid(),
            "version": gate.version if scope["path"] == "/version" else pinned.version,
            "format": pinned.snapshot.settings.refusal_format,
            "tenant": identity.tenant_id if identity else None,
            "cn": identity.common_name if identity else None,
        }
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return CertGateMiddleware(app, gate)
