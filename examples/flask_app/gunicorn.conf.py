"""gunicorn settings for the Flask example: TLS asking for client certificates.

    CERTGATE_ENV=DIR gunicorn -c examples/flask_app/gunicorn.conf.py \\
        'examples.flask_app.app:create_app()'
"""

import os
import ssl

from certgate.servers.gunicorn import ssl_context  # noqa: F401 - gunicorn server hook

_env = os.environ["CERTGATE_ENV"]
os.environ.setdefault("CERTGATE_CONFIG", os.path.join(_env, "certgate.toml"))

bind = os.environ.get("CERTGATE_BIND", "127.0.0.1:8445")
workers = int(os.environ.get("CERTGATE_WORKERS", "2"))
certfile = os.path.join(_env, "server.pem")
keyfile = os.path.join(_env, "server.key")
ca_certs = os.path.join(_env, "tenants-bundle.pem")  # `certgate bundle --config ...`
cert_reqs = ssl.CERT_OPTIONAL  # no certificate -> certgate's 403, not a TLS failure
