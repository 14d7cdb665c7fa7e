"""Serve the Flask example over real TLS with Werkzeug's server.

    python examples/flask_app/serve.py --env DIR [--port 8444]

The SSLContext asks for a client certificate (CERT_OPTIONAL) and trusts every
tenant CA for the handshake; certgate then verifies each request against the
tenant of its Host.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from werkzeug.serving import run_simple

from certgate.servers.tls import client_auth_context
from examples.devenv import DevEnv
from examples.flask_app.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", required=True, help="directory made by examples/devenv.py")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8444)
    args = parser.parse_args()
    env = DevEnv(Path(args.env))
    context = client_auth_context(env.server_cert, env.server_key, ca_file=env.bundle)
    run_simple(
        args.host, args.port, create_app(str(env.config)), ssl_context=context, threaded=True
    )


if __name__ == "__main__":
    main()
