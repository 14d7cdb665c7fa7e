"""certgate for Flask.

```python
from flask import Flask
from certgate.flask import CertGateFlask, get_identity, require_identity

app = Flask(__name__)
app.config["CERTGATE_CONFIG"] = "certgate.toml"
CertGateFlask(app)

@app.get("/whoami")
def whoami():
    return require_identity().as_dict()      # 403 when there is no identity

@app.get("/healthz")                          # an exempt path
def healthz():
    identity = get_identity()                 # ClientIdentity | None
    return {"device": None if identity is None else identity.common_name}
```

The extension wraps ``app.wsgi_app`` in
:class:`~certgate.wsgi.CertGateWSGIMiddleware`, so rejected requests never
reach Flask (no view, no ``before_request``). A view asks for the identity
with one of two plain functions:

* :func:`get_identity` returns the verified :class:`~certgate.identity.ClientIdentity`
  or ``None`` (an exempt path, or the Host changed after certgate checked it) -
  a real ``None``, so ``is None`` and ``if identity:`` both work;
* :func:`require_identity` returns the identity or aborts with ``403``.

There is deliberately no ``current_identity`` proxy: a proxy object is never
``None``, so ``current_identity is None`` was never true and a view branching
on it treated an anonymous request as a device (or failed with a 500 on the
first attribute). Importing the old name raises an ``ImportError`` saying what
to use instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from flask import Flask, abort, request

from .errors import ServerSetupError
from .gate import CertGate
from .identity import ClientIdentity
from .wsgi import CertGateWSGIMiddleware, identity_from_environ

if TYPE_CHECKING:
    from .wsgi import WSGIApp

__all__ = ["CertGateFlask", "get_identity", "require_identity"]


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
                raise ServerSetupError(
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
    """The verified identity of the current request, or ``None``.

    ``None`` on exempt paths, without certgate installed, and when the Host
    was rewritten after certgate checked it (see
    :meth:`~certgate.decision.Decision.identity_for_host`). Needs a request
    context, like ``flask.request``.
    """
    return identity_from_environ(request.environ)


def require_identity() -> ClientIdentity:
    """The verified identity of the current request; aborts with 403 when
    there is none (see :func:`get_identity`)."""
    identity = get_identity()
    if identity is None:
        abort(403, description="client certificate required")
    return identity


_REMOVED = {
    "current_identity": (
        "certgate.flask.current_identity was removed: it was a proxy object, never None, "
        "so `current_identity is None` could not detect an anonymous request. Use "
        "certgate.flask.get_identity() (a ClientIdentity or None) or "
        "certgate.flask.require_identity() (403 when there is no identity)."
    ),
}

if not TYPE_CHECKING:  # type checkers should report the removed name as missing

    def __getattr__(name: str) -> object:
        """Fail loudly, at import time, for the removed ``current_identity``."""
        message = _REMOVED.get(name)
        if message is not None:
            raise ImportError(message, name=__name__)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
