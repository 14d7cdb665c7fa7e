"""The servers and apps of the end-to-end benchmark (bench/bench_e2e.py).

Apps (chosen by ``$BENCH_APP``; ``$CERTGATE_CONFIG`` names the certgate TOML,
``$BENCH_CACHE_SIZE`` overrides its ``cache_size``):

* ``bare``: no certgate. ``GET /api/whoami`` builds the same JSON body as the
  certgate app from constants of the same length (``{"tenant_id":
  "tenant0", "common_name": "device-000000"}``).
* ``adapter`` (FastAPI only): the bare app served through certgate's uvicorn
  adapter: the adapter's own cost, nothing of the gate.
* ``certgate``: ``CertGateMiddleware`` / ``CertGateFlask``; the route reads
  the identity (``get_identity(request)`` / ``require_identity()``) and
  answers its tenant id and common name.
* ``dependency`` (FastAPI only): the same, but the route takes the identity
  through the documented ``Depends(client_identity)``.

Every FastAPI route is ``async def`` (no thread pool for the route itself).
``GET /_bench/stats`` (exempt in the benchmark's certgate configuration)
answers the gate's cache counters.

Run::

    python bench/e2e_server.py --app certgate --source header --port 8001 [--tls] [--profile F]
    python bench/e2e_server.py --trivial --port 8001 [--tls]   # the generator's ceiling
    gunicorn -c bench/e2e_gunicorn_conf.py 'e2e_server:flask_app()'
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from e2e_pki import STATS_PATH, Pki, ensure_pki
from fastapi import Depends, FastAPI, Request, Response

from certgate import CertGate, ClientIdentity
from certgate.asgi import CertGateMiddleware
from certgate.starlette import client_identity, get_identity

CONSTANT = {"tenant_id": "tenant0", "common_name": "device-000000"}


def _gate() -> CertGate:
    overrides: dict[str, Any] = {}
    size = os.environ.get("BENCH_CACHE_SIZE")
    if size:
        overrides["cache_size"] = int(size)
    return CertGate.from_toml(os.environ["CERTGATE_CONFIG"], **overrides)


def stats_of(gate: CertGate | None) -> dict[str, int]:
    """The gate's verification cache counters and, when the gate's registry
    is a :class:`~certgate.stores.caching.CachingRegistry` (it has
    ``stats()``), its counters as ``registry_*``."""
    if gate is None:
        return {}
    out = {
        "hits": gate.cache.hits,
        "misses": gate.cache.misses,
        "entries": len(gate.cache),
        "refusal_hits": gate.refusals.hits,
        "refusal_misses": gate.refusals.misses,
        "refusal_entries": len(gate.refusals),
    }
    stats = getattr(gate.registry, "stats", None)
    if callable(stats):
        out.update({f"registry_{k}": int(v) for k, v in vars(stats()).items()})
    return out


def body_of(identity: ClientIdentity | None) -> bytes:
    if identity is None:  # never happens behind certgate (the route is not exempt)
        return b'{"error": "no identity"}'
    return json.dumps(
        {"tenant_id": identity.tenant_id, "common_name": identity.common_name}
    ).encode()


def fastapi_app(gate: CertGate | None = None) -> Any:
    """The FastAPI app of ``$BENCH_APP``; ``gate``: the certgate app's gate
    (default: from ``$CERTGATE_CONFIG``)."""
    kind = os.environ["BENCH_APP"]
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    if kind not in ("certgate", "dependency"):
        gate = None
    elif gate is None:
        gate = _gate()
    if gate is not None:
        app.add_middleware(CertGateMiddleware, gate=gate)

    if kind == "dependency":

        @app.get("/api/whoami")
        async def whoami_dep(
            identity: ClientIdentity = Depends(client_identity),  # noqa: B008
        ) -> Response:
            return Response(body_of(identity), media_type="application/json")

    elif kind == "certgate":

        @app.get("/api/whoami")
        async def whoami(request: Request) -> Response:
            return Response(body_of(get_identity(request)), media_type="application/json")

    else:

        @app.get("/api/whoami")
        async def whoami_bare(request: Request) -> Response:
            return Response(json.dumps(CONSTANT).encode(), media_type="application/json")

    @app.get(STATS_PATH)
    async def stats() -> Response:
        return Response(json.dumps(stats_of(gate)).encode(), media_type="application/json")

    return app


def flask_app() -> Any:
    from flask import Flask  # noqa: PLC0415
    from flask import Response as FlaskResponse  # noqa: PLC0415

    from certgate.flask import CertGateFlask, require_identity  # noqa: PLC0415

    kind = os.environ["BENCH_APP"]
    app = Flask("bench")
    gate = _gate() if kind == "certgate" else None
    if gate is not None:
        CertGateFlask(app, gate)

    @app.get("/api/whoami")
    def whoami() -> FlaskResponse:
        body = json.dumps(CONSTANT).encode() if gate is None else body_of(require_identity())
        return FlaskResponse(body, mimetype="application/json")

    @app.get(STATS_PATH)
    def flask_stats() -> FlaskResponse:
        return FlaskResponse(json.dumps(stats_of(gate)).encode(), mimetype="application/json")

    return app


# -------------------------------------------------------------------- uvicorn


def uvicorn_config(
    app_kind: str, pki: Pki | None, port: int, tls: bool, *, gate: CertGate | None = None
) -> Any:
    """uvicorn's configuration of one server (``pki``: needed for ``tls``;
    ``gate``: see :func:`fastapi_app`)."""
    import uvicorn  # noqa: PLC0415

    from certgate.servers import uvicorn as adapter  # noqa: PLC0415

    kwargs: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "lifespan": "off",
        "http": "httptools",
        "ws": "none",
    }
    if tls:
        assert pki is not None, "a TLS server needs the PKI"
        kwargs.update(
            ssl_certfile=str(pki.server_cert),
            ssl_keyfile=str(pki.server_key),
            ssl_ca_certs=str(pki.bundle),
            ssl_cert_reqs=ssl.CERT_OPTIONAL,
        )
    app = fastapi_app(gate)
    if app_kind == "bare":
        if tls:  # the same handshake as certgate's (prepared context: no tickets)
            kwargs["ssl_context_factory"] = adapter.ssl_context_factory
        return uvicorn.Config(app, **kwargs)
    kwargs["http"] = adapter.HttpToolsTLSProtocol
    return adapter.config(app, **kwargs)


def serve_uvicorn(args: argparse.Namespace) -> None:
    import uvicorn  # noqa: PLC0415

    os.environ["BENCH_APP"] = args.app
    pki = ensure_pki()
    os.environ["CERTGATE_CONFIG"] = str(pki.config(args.source))
    server = uvicorn.Server(uvicorn_config(args.app, pki, args.port, args.tls))
    if args.profile is None:
        server.run()
        return
    # uvicorn re-raises the SIGTERM it caught once it has shut down, which
    # would kill this process before the profile is written: swallow it.
    signal.raise_signal = lambda signum: None
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        server.run()
    finally:
        profiler.disable()
        profiler.dump_stats(args.profile)


# -------------------------------------------------------------------- trivial


_TRIVIAL_BODY = json.dumps(CONSTANT).encode()
_TRIVIAL_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_TRIVIAL_BODY)).encode()
    + b"\r\n\r\n"
    + _TRIVIAL_BODY
)


class TrivialProtocol(asyncio.Protocol):
    """Answers every GET with a constant 200 (no parsing beyond the blank
    line; ``Connection: close`` closes): the cheapest possible server."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            self.buffer = self.buffer[end + 4 :]
            if b"onnection: close" in head:
                self.transport.write(_TRIVIAL_RESPONSE)
                self.transport.close()
                return
            self.transport.write(_TRIVIAL_RESPONSE)


def serve_trivial(args: argparse.Namespace) -> None:
    import uvloop  # noqa: PLC0415

    pki = ensure_pki()
    context: ssl.SSLContext | None = None
    if args.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        context.load_verify_locations(pki.bundle)
        context.verify_mode = ssl.CERT_OPTIONAL
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            TrivialProtocol, "127.0.0.1", args.port, ssl=context, backlog=1024
        )
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--app", choices=["bare", "adapter", "certgate", "dependency"])
    parser.add_argument("--source", choices=["header", "tls"], default="header")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--trivial", action="store_true")
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args()
    # certgate's refusals are WARNING records: a real deployment writes them
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if args.trivial:
        serve_trivial(args)
    else:
        serve_uvicorn(args)


if __name__ == "__main__":
    main()
