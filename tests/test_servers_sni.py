"""certgate's uvicorn adapter tells the middleware the connection's SNI,
whether the server asked for a client certificate, and that a Unix-socket
connection came from ``"unix:"`` - checked through a real uvicorn server,
with real clients (httpx, websockets, curl) sending SNI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.devenv import DevEnv, make_dev_environment

from certgate.servers import tls as tls_helpers
from certgate.servers import uvicorn as adapter
from tests.servers import free_port, serve

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> DevEnv:
    return make_dev_environment(tmp_path_factory.mktemp("pki"))


def _facts(scope: MutableMapping[str, Any]) -> dict[str, Any]:
    tls = (scope.get("extensions") or {}).get("tls")
    return {
        "sni": scope.get("certgate.sni", "<absent>"),
        "peer": scope.get("certgate.socket_peer", "<absent>"),
        "requested": None if tls is None else tls.get("certgate.client_cert_requested"),
        "chain": None if tls is None else len(tls["client_cert_chain"]),
    }


async def echo_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """Answers every HTTP request and WebSocket with the scope's certgate facts."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = json.dumps(_facts(scope)).encode()
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": body.decode()})
        await send({"type": "websocket.close"})
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"json")]}
    )
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def uvicorn_in_thread(app: Any, **kwargs: Any) -> Iterator[Any]:
    """A real uvicorn server (certgate's ``config``) on a thread of this process."""
    import uvicorn

    if "uds" not in kwargs:
        kwargs.setdefault("port", free_port())
        kwargs.setdefault("host", "127.0.0.1")
    config = adapter.config(app, log_level="warning", lifespan="off", **kwargs)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited")
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start within 30 s")
        time.sleep(0.05)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(15)


def client_context(env: DevEnv, identity: str | None, *, chain: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(env.server_ca))
    if identity is not None:
        chain_file, key = env.client(identity)
        context.load_cert_chain(chain_file if chain else env.path(f"{identity}.pem"), key)
    return context


def get_sni(
    env: DevEnv,
    port: int,
    identity: str | None,
    sni: str | None,
    path: str = "/",
    *,
    host: str | None = None,
    check_hostname: bool = True,
) -> httpx.Response:
    """One HTTPS request to 127.0.0.1:port sending ``sni`` (``None``: no SNI,
    as to an IP address) and ``Host: host`` (default: the SNI)."""
    context = client_context(env, identity)
    context.check_hostname = check_hostname
    extensions = {"sni_hostname": sni} if sni is not None else {}
    headers = {"Host": host or sni or "127.0.0.1"}
    with httpx.Client(verify=context, timeout=10) as client:
        return client.get(f"https://127.0.0.1:{port}{path}", headers=headers, extensions=extensions)


def _tls_kwargs(env: DevEnv, reqs: ssl.VerifyMode = ssl.CERT_OPTIONAL) -> dict[str, Any]:
    return {
        "ssl_certfile": str(env.server_cert),
        "ssl_keyfile": str(env.server_key),
        "ssl_ca_certs": str(env.bundle),
        "ssl_cert_reqs": reqs,
    }


def test_scope_carries_sni_and_client_cert_requested(env: DevEnv) -> None:
    with uvicorn_in_thread(echo_app, **_tls_kwargs(env)) as server:
        port = server.config.port
        facts = get_sni(env, port, "acme-device", "pay.acme.test").json()
        assert facts == {"sni": "pay.acme.test", "peer": ["127.0.0.1", facts["peer"][1]],
                         "requested": True, "chain": 2}  # fmt: skip
        assert get_sni(env, port, None, "api.globex.test").json()["sni"] == "api.globex.test"
        # no SNI (a client connecting to an IP address): known to be absent
        no_sni = get_sni(env, port, None, None, check_hostname=False).json()
        assert no_sni["sni"] is None
        assert no_sni["requested"] is True


def test_keep_alive_requests_share_the_connections_sni(env: DevEnv) -> None:
    with uvicorn_in_thread(echo_app, **_tls_kwargs(env)) as server:
        context = client_context(env, "globex-device")
        url = f"https://127.0.0.1:{server.config.port}/"
        with httpx.Client(verify=context, timeout=10) as client:
            for host in ("api.globex.test", "pay.acme.test", "initech.test"):
                # the Host changes, the TLS connection (and its SNI) does not
                response = client.get(
                    url, headers={"Host": host}, extensions={"sni_hostname": "api.globex.test"}
                )
                assert response.json()["sni"] == "api.globex.test"


def test_client_cert_not_requested_is_reported(env: DevEnv) -> None:
    with uvicorn_in_thread(echo_app, **_tls_kwargs(env, ssl.CERT_NONE)) as server:
        facts = get_sni(env, server.config.port, None, "pay.acme.test").json()
        assert facts["requested"] is False
        assert facts["sni"] == "pay.acme.test"


def test_websocket_scope_carries_sni(env: DevEnv) -> None:
    import websockets.asyncio.client as ws_client

    async def connect(port: int) -> dict[str, Any]:
        async with ws_client.connect(
            f"wss://pay.acme.test:{port}/ws",
            ssl=client_context(env, "acme-device"),
            host="127.0.0.1",
            port=port,
        ) as socket:
            return dict(json.loads(await socket.recv()))

    with uvicorn_in_thread(echo_app, **_tls_kwargs(env)) as server:
        facts = asyncio.run(connect(server.config.port))
    assert facts["sni"] == "pay.acme.test"
    assert facts["requested"] is True
    assert facts["chain"] == 2


def test_unix_socket_peer_is_recorded(tmp_path: Path) -> None:
    path = str(tmp_path / "app.sock")
    with uvicorn_in_thread(echo_app, uds=path):
        transport = httpx.HTTPTransport(uds=path)
        with httpx.Client(transport=transport, timeout=10) as client:
            facts = client.get("http://app/").json()
    assert facts["peer"] == ["unix:", 0]
    assert facts["sni"] == "<absent>"  # not a TLS connection
    assert facts["requested"] is None


def test_plain_tcp_has_no_sni_key(env: DevEnv) -> None:
    with uvicorn_in_thread(echo_app) as server, httpx.Client(timeout=10) as client:
        facts = client.get(f"http://127.0.0.1:{server.config.port}/").json()
    assert facts["sni"] == "<absent>"
    assert facts["peer"][0] == "127.0.0.1"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_resolve_sends_sni(env: DevEnv) -> None:
    with uvicorn_in_thread(echo_app, **_tls_kwargs(env)) as server:
        port = server.config.port
        chain, key = env.client("initech-device")
        out = subprocess.run(
            ["curl", "-s", "--cacert", str(env.server_ca),
             "--resolve", f"initech.test:{port}:127.0.0.1",
             "--cert", str(chain), "--key", str(key), f"https://initech.test:{port}/"],
            capture_output=True, check=True, timeout=20,
        )  # fmt: skip
    assert json.loads(out.stdout)["sni"] == "initech.test"


def test_recorder_chains_to_an_existing_callback(env: DevEnv) -> None:
    """A callback set before certgate's still runs, and its alert still ends
    the handshake."""
    seen: list[str | None] = []

    def refuse_globex(conn: Any, name: str | None, context: ssl.SSLContext) -> int | None:
        seen.append(name)
        return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME if name == "api.globex.test" else None

    def factory(config: Any, default: Any) -> ssl.SSLContext:
        context: ssl.SSLContext = default()
        context.sni_callback = refuse_globex
        return context

    with uvicorn_in_thread(echo_app, ssl_context_factory=factory, **_tls_kwargs(env)) as server:
        port = server.config.port
        assert get_sni(env, port, None, "pay.acme.test").json()["sni"] == "pay.acme.test"
        # asyncio closes the connection without flushing the alert: the
        # client sees an EOF in the handshake
        with pytest.raises(httpx.ConnectError):
            get_sni(env, port, None, "api.globex.test")
    assert seen == ["pay.acme.test", "api.globex.test"]
    tls_helpers.record_sni(context := ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    first = context.sni_callback
    tls_helpers.record_sni(context)
    assert context.sni_callback is first  # idempotent


def _launcher_cmd(env: DevEnv, port: int, *extra: str) -> list[str]:
    import sys

    return [
        sys.executable, "-m", "certgate.servers.uvicorn",
        "examples.fastapi_app.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port),
        "--ssl-certfile", str(env.server_cert), "--ssl-keyfile", str(env.server_key),
        "--ssl-ca-certs", str(env.bundle), *extra,
    ]  # fmt: skip


def test_launcher_without_cert_reqs_warns_once_at_start_up(env: DevEnv) -> None:
    """``python -m certgate.servers.uvicorn`` without ``--ssl-cert-reqs 1``:
    every device gets 403 no_certificate; the log says why, once, with the fix."""
    port = free_port()
    with serve(_launcher_cmd(env, port), env, port) as server:
        deadline = time.monotonic() + 10
        while "does not ask clients for a certificate" not in server.log_text():
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)  # the log is written by another process
        for _ in range(3):
            response = server.get("acme-device", "pay.acme.test")
            assert response.json()["reason"] == "no_certificate"
        log = server.log_text()
    assert log.count("does not ask clients for a certificate") == 1
    assert "--ssl-cert-reqs 1" in log


def test_launcher_with_cert_reqs_does_not_warn(env: DevEnv) -> None:
    port = free_port()
    with serve(_launcher_cmd(env, port, "--ssl-cert-reqs", "1"), env, port) as server:
        assert server.get("acme-device", "pay.acme.test").status_code == 200
        assert "does not ask clients for a certificate" not in server.log_text()
