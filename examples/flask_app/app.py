"""Flask behind certgate: the extension, per-route rules, a public route with
optional identity, and report-only switchable by configuration.

Serve it with ``python examples/flask_app/serve.py --env DIR`` (Werkzeug's
server) or with gunicorn::

    CERTGATE_ENV=DIR gunicorn -c examples/flask_app/gunicorn.conf.py \\
        'examples.flask_app.app:create_app()'

``CERTGATE_MODE=report`` in the environment starts it in report-only mode:
every refusal is logged (``would reject (report-only)``) and the request goes
through. Routes:

* ``/`` - public; names the device when one presented a valid certificate;
* ``/healthz`` - exempt (devenv's certgate.toml): certgate does not look;
* ``/whoami`` - any valid certificate of the tenant;
* ``/sensors/status`` - only Acme's sensor-17, issued by the Acme Issuing CA.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from certgate.flask import CertGateFlask, get_identity, require_client_cert
from certgate.policy import common_name, issued_by
from certgate.rollout import Access, Route

# A common name alone identifies nothing (any CA the tenant trusts can put
# CN=sensor-17 in a certificate): pin the issuing CA too - by fingerprint in
# production (issued_by(fingerprints=[...])), by name in this dev setup.
SENSOR_17 = common_name("sensor-17") & issued_by(names=["CN=Acme Issuing CA,O=Acme"])


def create_app(config: str | None = None) -> Flask:
    """The example app; ``config`` defaults to ``$CERTGATE_CONFIG``."""
    app = Flask(__name__)
    path = config or os.environ.get("CERTGATE_CONFIG")
    if not path:
        raise RuntimeError("set CERTGATE_CONFIG to a certgate TOML file")
    app.config["CERTGATE_CONFIG"] = path
    # "/" is public: a presented certificate is still verified (a bad one is
    # refused), a request without one goes through with no identity.
    app.config["CERTGATE_ROUTES"] = [Route("/", access=Access.OPTIONAL)]
    mode = os.environ.get("CERTGATE_MODE")  # "report" or "enforce" (the default)
    if mode:
        app.config["CERTGATE_MODE"] = mode
    CertGateFlask(app)

    @app.get("/")
    def index() -> dict[str, Any]:
        identity = get_identity()  # ClientIdentity or None
        return {"device": None if identity is None else identity.common_name}

    @app.get("/whoami")
    @require_client_cert()  # any valid certificate of the tenant
    def whoami() -> dict[str, Any]:
        identity = get_identity()  # None only in report-only mode
        return identity.as_dict() if identity is not None else {"identity": None}

    @app.get("/sensors/status")
    @require_client_cert(SENSOR_17)  # 403 policy_denied for any other device
    def sensor_status() -> dict[str, Any]:
        identity = get_identity()
        return {"ok": True, "device": None if identity is None else identity.common_name}

    @app.get("/healthz")  # exempt (devenv's certgate.toml): get_identity() is None here
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app
