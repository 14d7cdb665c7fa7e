"""Echo apps for the real-server spoofing matrix (tests/test_spoofing_servers.py).

Each app answers with the request headers it saw and certgate's identity, as
JSON, behind certgate's middleware built from ``$CERTGATE_CONFIG``:

* ``asgi_app()`` - for ``python -m certgate.servers.uvicorn ... --factory``;
* ``wsgi_app()`` - for gunicorn (``'tests.spoof_echo_app:wsgi_app()'``), with
  Werkzeug's ``ProxyFix`` outermost, rewriting ``REMOTE_ADDR`` from
  ``X-Forwarded-For`` before certgate runs (as a Flask app using it would);
* ``python tests/spoof_echo_app.py PORT`` - the WSGI app under Werkzeug's
  own server (``run_simple``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certgate import CertGate
from certgate.asgi import IDENTITY_KEY as ASGI_IDENTITY
from certgate.asgi import CertGateMiddleware, Receive, Scope, Send
from certgate.wsgi import IDENTITY_KEY as WSGI_IDENTITY
from certgate.wsgi import CertGateWSGIMiddleware, Environ, StartResponse


def _gate() -> CertGate:
    return CertGate.from_toml(os.environ["CERTGATE_CONFIG"])


def _tenant(identity: Any) -> str | None:
    return None if identity is None else str(identity.tenant_id)


async def _echo_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = json.dumps(
        {
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
            "tenant": _tenant(scope.get(ASGI_IDENTITY)),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def asgi_app() -> CertGateMiddleware:
    return CertGateMiddleware(_echo_asgi, _gate())


def _echo_wsgi(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    headers = [[k, v] for k, v in environ.items() if k.startswith("HTTP_") and isinstance(v, str)]
    body = json.dumps({"headers": headers, "tenant": _tenant(environ.get(WSGI_IDENTITY))})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body.encode()]


def wsgi_app() -> Any:
    from werkzeug.middleware.proxy_fix import ProxyFix

    inner = CertGateWSGIMiddleware(_echo_wsgi, _gate())
    return ProxyFix(inner, x_for=1, x_proto=1, x_host=0)


if __name__ == "__main__":
    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", int(sys.argv[1]), wsgi_app(), threaded=True)
