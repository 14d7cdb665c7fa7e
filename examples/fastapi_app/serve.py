"""Serve the FastAPI example over real TLS with uvicorn and certgate's adapter.

    python examples/fastapi_app/serve.py --env DIR [--port 8443]

DIR is made by ``examples/devenv.py`` (the demo makes one for you).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from certgate.servers.uvicorn import run
from examples.devenv import DevEnv
from examples.fastapi_app.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", required=True, help="directory made by examples/devenv.py")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    args = parser.parse_args()
    env = DevEnv(Path(args.env))
    run(
        create_app(str(env.config)),
        host=args.host,
        port=args.port,
        ssl_certfile=str(env.server_cert),
        ssl_keyfile=str(env.server_key),
        ssl_ca_certs=str(env.bundle),
        log_level="warning",
    )


if __name__ == "__main__":
    main()
