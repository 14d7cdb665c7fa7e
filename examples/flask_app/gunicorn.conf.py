"""gunicorn settings for the Flask example: TLS asking for client certificates.

    CERTGATE_ENV=DIR gunicorn -c examples/flask_app/gunicorn.conf.py \\
        'examples.flask_app.app:create_app()'
"""

import os
import ssl

# gunicorn server hooks: the TLS context, and the check that gunicorn never maps an
# underscore-spelled certificate header (Cf_Client_Cert_...) into the environ.
from certgate.servers.gunicorn import (  # noqa: F401
    on_starting,
    post_worker_init,
    ssl_context,
)

_env = os.environ["CERTGATE_ENV"]
os.environ.setdefault("CERTGATE_CONFIG", os.path.join(_env, "certgate.toml"))

bind = os.environ.get("CERTGATE_BIND", "127.0.0.1:8445")
workers = int(os.environ.get("CERTGATE_WORKERS", "2"))
certfile = os.path.join(_env, "server.pem")
keyfile = os.path.join(_env, "server.key")
ca_certs = os.path.join(_env, "tenants-bundle.pem")  # `certgate bundle --config ...`
cert_reqs = ssl.CERT_OPTIONAL  # no certificate -> certgate's 403, not a TLS failure
