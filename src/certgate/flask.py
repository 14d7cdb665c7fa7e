"""certgate for Flask.

```python
from flask import Flask
from certgate.flask import CertGateFlask, current_identity

app = Flask(__name__)
app.config["CERTGATE_CONFIG"] = "certgate.toml"
CertGateFlask(app)

@app.get("/whoami")
def whoami():
    return current_identity.as_dict()
```

The extension wraps ``app.wsgi_app`` in
:class:`~certgate.wsgi.CertGateWSGIMiddleware`, so rejected requests never
reach Flask (no view, no ``before_request``). A view reads the identity with
:data:`current_identity` (``None`` on exempt paths) or
:func:`require_identity`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from flask import Flask, abort, request
from werkzeug.local import LocalProxy

from .gate import CertGate
from .identity import ClientIdentity
from .wsgi import CertGateWSGIMiddleware, identity_from_environ

if TYPE_CHECKING:
    from .wsgi import WSGIApp


class CertGateFlask:
    """Flask extension.

    ``gate`` defaults to ``CertGate.from_toml(app.config["CERTGATE_CONFIG"])``.
    """

    def __init__(self, app: Flask | None = None, gate: CertGate | None = None) -> None:
        self.gate = gate
        if app is not None:
            self.init_app(app, gate)

    def init_app(self, app: Flask, gate: CertGate | None = None) -> None:
        gate = gate or self.gate
        if gate is None:
            path = app.config.get("CERTGATE_CONFIG")
            if not path:
                raise RuntimeError(
                    "CertGateFlask needs a CertGate, or app.config['CERTGATE_CONFIG'] "
                    "naming a certgate TOML file"
                )
            gate = CertGate.from_toml(path)
        self.gate = gate
        app.wsgi_app = CertGateWSGIMiddleware(  # type: ignore[method-assign]
            cast("WSGIApp", app.wsgi_app), gate
        )
        app.extensions["certgate"] = self


def get_identity() -> ClientIdentity | None:
    """The identity of the current request, or ``None`` (exempt path)."""
    return identity_from_environ(request.environ)


def require_identity() -> ClientIdentity:
    """The identity of the current request; aborts with 403 when there is none."""
    identity = get_identity()
    if identity is None:
        abort(403, description="client certificate required")
    return identity


current_identity = cast("ClientIdentity | None", LocalProxy(get_identity))
"""The identity of the current request (a proxy, like ``flask.request``)."""
