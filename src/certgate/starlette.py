"""Reading the verified identity in Starlette and FastAPI.

```python
from fastapi import Depends, FastAPI
from certgate import CertGate, ClientIdentity
from certgate.asgi import CertGateMiddleware
from certgate.starlette import client_identity

app = FastAPI()
app.add_middleware(CertGateMiddleware, gate=CertGate.from_toml("certgate.toml"))

@app.get("/whoami")
def whoami(identity: ClientIdentity = Depends(client_identity)) -> dict[str, object]:
    return identity.as_dict()
```

In plain Starlette call :func:`get_identity` with the ``Request`` or
``WebSocket``.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from .asgi import identity_from_scope
from .identity import ClientIdentity


def get_identity(connection: HTTPConnection) -> ClientIdentity | None:
    """The identity certgate verified for this request, or ``None`` (exempt
    path, or no certgate middleware in front of the app)."""
    return identity_from_scope(connection.scope)


def client_identity(connection: HTTPConnection) -> ClientIdentity:
    """FastAPI dependency: the verified identity, or a 403 when there is none.

    The 403 can only happen on a path certgate exempted or when the
    middleware is missing: a route that depends on this never runs without a
    verified certificate.
    """
    identity = identity_from_scope(connection.scope)
    if identity is None:
        raise HTTPException(status_code=403, detail="client certificate required")
    return identity
