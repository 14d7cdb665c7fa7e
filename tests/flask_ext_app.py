"""A Flask app with every kind of certgate route check, for tests/test_flask_ext.py.

In process: ``build_app(config)``. Over real TLS (Werkzeug's server)::

    python -m tests.flask_ext_app --env DIR --port PORT

serves it with ``DIR/certgate.toml`` (examples/devenv.py) and
``CERTGATE_ACCESS = "optional"``; ``/_rollout/<mode>`` switches the gate's
global mode at run time (a test-only route).
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask
from flask.views import MethodView, View

from certgate.flask import (
    CertGateFlask,
    get_gate,
    get_identity,
    protect_blueprint,
    require_client_cert,
    require_identity,
)
from certgate.identity import ClientIdentity
from certgate.policy import Policy


class CommonNameIn(Policy):
    """A tiny test policy: the leaf's CN is one of ``names`` (independent of
    the real :mod:`certgate.policy` rules)."""

    names: frozenset[str]

    def __init__(self, *names: str) -> None:
        object.__setattr__(self, "label", f"test_cn_in{sorted(names)}")
        object.__setattr__(self, "names", frozenset(names))

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        if identity.common_name in self.names:
            return None
        return f"CN {identity.common_name!r} not in {sorted(self.names)}"


SENSORS = CommonNameIn("sensor-17")
TILLS = CommonNameIn("till-3")


def who() -> dict[str, Any]:
    identity = get_identity()
    if identity is None:
        return {"cn": None, "tenant": None}
    return {"cn": identity.common_name, "tenant": identity.tenant_id}


class Items(MethodView):
    decorators = [require_client_cert(SENSORS)]  # noqa: RUF012 - Flask's API

    def get(self) -> dict[str, Any]:
        return {"view": "items", **who()}

    async def post(self) -> dict[str, Any]:
        return {"view": "items-post", **who()}


@require_client_cert(SENSORS)
class Things(View):
    def dispatch_request(self) -> dict[str, Any]:
        return {"view": "things", **who()}


def build_app(
    config: dict[str, Any] | None = None, extension: CertGateFlask | None = None
) -> Flask:
    """The test app; ``config`` goes into ``app.config`` before the extension
    is installed (``extension``: a shared one, else a new one)."""
    app = Flask(__name__)
    app.config.update(config or {})
    (extension or CertGateFlask()).init_app(app)

    @app.get("/")
    def public() -> dict[str, Any]:  # optional identity
        return {"view": "public", **who()}

    @app.get("/whoami")
    @require_client_cert()
    def whoami() -> dict[str, Any]:
        return {"view": "whoami", **who()}

    @app.get("/bare")
    @require_client_cert
    def bare() -> dict[str, Any]:
        return {"view": "bare", **who()}

    @app.get("/sensor")
    @require_client_cert(SENSORS)
    def sensor() -> dict[str, Any]:
        return {"view": "sensor", **who()}

    @app.get("/async")
    @require_client_cert(SENSORS)
    async def async_sensor() -> dict[str, Any]:
        return {"view": "async", **who()}

    @app.get("/require")
    def required() -> dict[str, Any]:
        identity = require_identity()
        return {"view": "require", "cn": identity.common_name}

    @app.get("/_rollout/<mode>")
    def rollout(mode: str) -> dict[str, str]:  # test-only: switch at run time
        get_gate().rollout.set_mode(mode)
        return {"mode": str(get_gate().rollout.mode)}

    app.add_url_rule("/items", view_func=Items.as_view("items"))
    app.add_url_rule("/things", view_func=Things.as_view("things"))

    admin = protect_blueprint(Blueprint("admin", __name__, url_prefix="/admin"), TILLS)

    @admin.get("/panel")
    def panel() -> dict[str, Any]:
        return {"view": "panel", **who()}

    deep = Blueprint("deep", __name__, url_prefix="/deep")

    @deep.get("/x")
    def deep_x() -> dict[str, Any]:
        return {"view": "deep", **who()}

    admin.register_blueprint(deep)
    app.register_blueprint(admin)
    return app


def main() -> None:
    from examples.devenv import DevEnv
    from werkzeug.serving import run_simple

    from certgate.servers.tls import client_auth_context

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    env = DevEnv(Path(args.env))
    app = build_app({"CERTGATE_CONFIG": str(env.config), "CERTGATE_ACCESS": "optional"})
    context = client_auth_context(env.server_cert, env.server_key, ca_file=env.bundle)
    run_simple("127.0.0.1", args.port, app, ssl_context=context, threaded=True)


if __name__ == "__main__":
    main()
