"""certgate's hypercorn adapter through a real hypercorn (asyncio worker):
the tls extension, the SNI, the socket peer, and per-tenant handshakes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.devenv import DevEnv, make_dev_environment

from certgate import CertGate
from certgate.asgi import CertGateMiddleware
from certgate.config import load_config
from tests.servers import free_port
from tests.test_servers_sni import client_context, echo_app, get_sni

pytest.importorskip("hypercorn")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> DevEnv:
    return make_dev_environment(tmp_path_factory.mktemp("pki"))


@contextlib.contextmanager
def hypercorn_in_thread(app: Any, **settings: Any) -> Iterator[Any]:
    from certgate.servers import hypercorn as adapter

    if "bind" not in settings:
        settings["bind"] = f"127.0.0.1:{free_port()}"
    cfg = adapter.config(**settings)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    failures: list[BaseException] = []

    async def main() -> None:
        started.set()
        try:
            await adapter.serve(app, cfg, shutdown_trigger=stop.wait)
        except BaseException as exc:  # noqa: BLE001 - checked after the test (_only_close_notify)
            failures.append(exc)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait(10)
    bind = cfg.bind[0]
    deadline = time.monotonic() + 30
    while True:  # wait until the listener accepts
        try:
            if bind.startswith("unix:"):
                import socket

                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(bind[5:])
            else:
                import socket

                host, port = bind.rsplit(":", 1)
                socket.create_connection((host, int(port)), 0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "hypercorn did not start"
            assert thread.is_alive(), "hypercorn exited"
            time.sleep(0.05)
    try:
        yield cfg
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
    for failure in failures:
        if not _only_close_notify(failure):
            raise failure


def _only_close_notify(exc: BaseException) -> bool:
    """hypercorn's shutdown re-raises the error of closing a TLS connection
    whose client sent data after its close_notify (the websockets client
    does): ``APPLICATION_DATA_AFTER_CLOSE_NOTIFY``. Nothing else is allowed."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_close_notify(inner) for inner in exc.exceptions)
    return isinstance(exc, ssl.SSLError) and "APPLICATION_DATA_AFTER_CLOSE_NOTIFY" in str(exc)


def _port(cfg: Any) -> int:
    return int(cfg.bind[0].rsplit(":", 1)[1])


def _tls(env: DevEnv, **extra: Any) -> dict[str, Any]:
    return {"certfile": str(env.server_cert), "keyfile": str(env.server_key), **extra}


def test_hypercorn_scope_has_tls_sni_and_peer(env: DevEnv) -> None:
    with hypercorn_in_thread(echo_app, **_tls(env, ca_certs=str(env.bundle))) as cfg:
        facts = get_sni(env, _port(cfg), "acme-device", "pay.acme.test").json()
    assert facts["sni"] == "pay.acme.test"
    assert facts["requested"] is True
    assert facts["chain"] == 2  # leaf + the intermediate the device sent
    assert facts["peer"][0] == "127.0.0.1"


def test_hypercorn_websocket_scope(env: DevEnv) -> None:
    import websockets.asyncio.client as ws_client

    async def connect(port: int) -> dict[str, Any]:
        async with ws_client.connect(
            f"wss://api.globex.test:{port}/ws",
            ssl=client_context(env, "globex-device"),
            host="127.0.0.1",
            port=port,
        ) as socket:
            return dict(json.loads(await socket.recv()))

    with hypercorn_in_thread(echo_app, **_tls(env, ca_certs=str(env.bundle))) as cfg:
        facts = asyncio.run(connect(_port(cfg)))
    assert facts["sni"] == "api.globex.test"
    assert facts["chain"] == 1


def test_hypercorn_with_certgate_and_deferred_time_checks(env: DevEnv) -> None:
    gate = CertGate(load_config(env.config).registry)
    app = CertGateMiddleware(echo_app, gate)
    with hypercorn_in_thread(app, **_tls(env, ca_certs=str(env.bundle))) as cfg:
        port = _port(cfg)
        assert get_sni(env, port, "acme-device", "pay.acme.test").status_code == 200
        refused = get_sni(env, port, "acme-device", "api.globex.test")
        assert refused.json()["reason"] == "untrusted_chain"
        assert get_sni(env, port, "acme-expired", "pay.acme.test").json()["reason"] == "expired"
        assert get_sni(env, port, None, "pay.acme.test").json()["reason"] == "no_certificate"


def test_hypercorn_per_tenant_handshakes(env: DevEnv) -> None:
    gate = CertGate(load_config(env.config).registry)
    app = CertGateMiddleware(echo_app, gate)
    with hypercorn_in_thread(app, **_tls(env, per_tenant=gate)) as cfg:
        port = _port(cfg)
        assert get_sni(env, port, "globex-device", "api.globex.test").status_code == 200
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            get_sni(env, port, "globex-device", "pay.acme.test")
    assert cfg.tenant_contexts.cached_tenants() == ["globex", "acme"]


def test_hypercorn_unix_socket_peer(tmp_path: Path) -> None:
    path = tmp_path / "h.sock"
    transport = httpx.HTTPTransport(uds=str(path))
    with (
        hypercorn_in_thread(echo_app, bind=f"unix:{path}"),
        httpx.Client(transport=transport, timeout=10) as client,
    ):
        facts = client.get("http://app/").json()
    assert facts["peer"] == ["unix:", 0]
    assert facts["sni"] == "<absent>"


def test_hypercorn_refuses_what_it_cannot_cover() -> None:
    from certgate.errors import ServerSetupError
    from certgate.servers import hypercorn as adapter

    for settings in ({"workers": 2}, {"worker_class": "trio"}):
        with pytest.raises(ServerSetupError):
            asyncio.run(adapter.serve(echo_app, adapter.config(**settings)))
    with pytest.raises(ServerSetupError, match="no setting"):
        adapter.config(certfiel="x")
    assert adapter.config().verify_mode == ssl.CERT_OPTIONAL
