"""Flask behind certgate (WSGI middleware via the Flask extension).

Serve it with ``python examples/flask_app/serve.py --env DIR`` (Werkzeug's
server) or with gunicorn::

    CERTGATE_ENV=DIR gunicorn -c examples/flask_app/gunicorn.conf.py \\
        'examples.flask_app.app:create_app()'
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from certgate.flask import CertGateFlask, require_identity


def create_app(config: str | None = None) -> Flask:
    """The example app; ``config`` defaults to ``$CERTGATE_CONFIG``."""
    app = Flask(__name__)
    path = config or os.environ.get("CERTGATE_CONFIG")
    if not path:
        raise RuntimeError("set CERTGATE_CONFIG to a certgate TOML file")
    app.config["CERTGATE_CONFIG"] = path
    CertGateFlask(app)

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        return require_identity().as_dict()  # 403 when there is no identity

    @app.get("/healthz")  # exempt (devenv's certgate.toml): get_identity() is None here
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app
