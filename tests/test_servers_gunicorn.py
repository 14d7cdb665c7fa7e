"""gunicorn over real TLS: certgate's uvicorn worker class
(``-k certgate.servers.uvicorn_worker.UvicornWorker``) and the per-tenant
``ssl_context`` hook of the WSGI server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
import pytest
from examples.devenv import DevEnv, make_dev_environment

from tests.servers import ROOT, free_port, serve
from tests.test_servers_sni import client_context, get_sni

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HANDSHAKE_FAILED = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> DevEnv:
    return make_dev_environment(tmp_path_factory.mktemp("pki"))


def _worker_cmd(env: DevEnv, port: int, worker: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "-k", worker, "--workers", "1",
        "--bind", f"127.0.0.1:{port}",
        "--certfile", str(env.server_cert), "--keyfile", str(env.server_key),
        *extra, "examples.fastapi_app.app:create_app()",
    ]  # fmt: skip


def _ws(env: DevEnv, port: int, identity: str, host: str) -> dict[str, object] | int:
    import websockets.asyncio.client as ws_client
    from websockets.exceptions import InvalidStatus

    async def connect() -> dict[str, object] | int:
        try:
            async with ws_client.connect(
                f"wss://{host}:{port}/ws",
                ssl=client_context(env, identity),
                host="127.0.0.1",
                port=port,
            ) as socket:
                return dict(json.loads(await socket.recv()))
        except InvalidStatus as exc:
            return int(exc.response.status_code)

    return asyncio.run(connect())


def test_gunicorn_with_certgate_uvicorn_worker(env: DevEnv) -> None:
    port = free_port()
    cmd = _worker_cmd(
        env, port, "certgate.servers.uvicorn_worker.UvicornWorker",
        "--ca-certs", str(env.bundle), "--cert-reqs", "1",
    )  # fmt: skip
    with serve(cmd, env, port) as server:
        response = get_sni(env, port, "acme-device", "pay.acme.test", "/whoami")
        assert response.status_code == 200, response.text + server.log_text()
        assert response.json()["source"] == "asgi_tls"
        assert response.json()["chain"][1] == "CN=Acme Issuing CA,O=Acme"
        refused = get_sni(env, port, "acme-device", "api.globex.test", "/whoami")
        assert refused.json()["reason"] == "untrusted_chain"
        # the context is certgate's: expired is certgate's 403, not a TLS alert
        assert (
            get_sni(env, port, "acme-expired", "pay.acme.test", "/whoami").json()["reason"]
            == "expired"
        )
        assert _ws(env, port, "acme-device", "pay.acme.test") == {"tenant_id": "acme"}
        assert _ws(env, port, "acme-device", "api.globex.test") == 403
        assert "does not ask clients for a certificate" not in server.log_text()


def test_uvicorns_own_worker_shows_no_certificate(env: DevEnv) -> None:
    """The baseline: uvicorn's worker class gives the app no TLS facts."""
    port = free_port()
    cmd = _worker_cmd(
        env, port, "uvicorn.workers.UvicornWorker",
        "--ca-certs", str(env.bundle), "--cert-reqs", "1",
    )  # fmt: skip
    with serve(cmd, env, port):
        response = get_sni(env, port, "acme-device", "pay.acme.test", "/whoami")
        assert response.status_code == 403
        assert response.json()["reason"] == "no_certificate"


def test_worker_without_cert_reqs_warns_once(env: DevEnv) -> None:
    port = free_port()
    cmd = _worker_cmd(env, port, "certgate.servers.uvicorn_worker.UvicornWorker")
    with serve(cmd, env, port) as server:
        for _ in range(2):
            response = get_sni(env, port, "acme-device", "pay.acme.test", "/whoami")
            assert response.json()["reason"] == "no_certificate"
        log = server.log_text()
    assert log.count("does not ask clients for a certificate") == 1, log
    assert "--ssl-cert-reqs 1" in log or "cert_reqs = 1" in log


def test_gunicorn_wsgi_per_tenant_hook(env: DevEnv, tmp_path: Path) -> None:
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "from certgate.servers.gunicorn import PerTenantSSLContext, on_starting,"
        " post_worker_init  # noqa: F401\n"
        f"ssl_context = PerTenantSSLContext({str(env.config)!r})\n"
        f"certfile = {str(env.server_cert)!r}\n"
        f"keyfile = {str(env.server_key)!r}\n"
        "cert_reqs = 1\n"
        "workers = 1\n"
    )
    port = free_port()
    cmd = [
        sys.executable, "-m", "gunicorn", "-c", str(conf), "--bind", f"127.0.0.1:{port}",
        "examples.flask_app.app:create_app()",
    ]  # fmt: skip
    with serve(cmd, env, port, {"CERTGATE_ENV": str(env.directory)}) as server:
        ok = get_sni(env, port, "acme-device", "pay.acme.test", "/whoami")
        assert ok.status_code == 200, ok.text + server.log_text()
        assert ok.json()["tenant_id"] == "acme"
        with pytest.raises(HANDSHAKE_FAILED):
            get_sni(env, port, "acme-device", "api.globex.test", "/whoami")
        assert (
            get_sni(env, port, "globex-device", "api.globex.test", "/whoami").json()["tenant_id"]
            == "globex"
        )
        no_cert = get_sni(env, port, None, "shop.example.com", "/whoami", check_hostname=False)
        assert no_cert.status_code == 403
    assert ROOT.is_dir()


SNI_APP = """
from certgate import sni


def app(environ, start_response):
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [repr(sni.server_name(sock)).encode()]
"""


def test_wsgi_sockets_carry_the_sni(env: DevEnv, tmp_path: Path) -> None:
    """gunicorn (certgate's ssl_context hook) and Werkzeug
    (client_auth_context): the SNI is recorded on the socket in the environ;
    gunicorn without cert_reqs logs the warning once, on the first connection."""
    import threading

    from werkzeug.serving import make_server

    from certgate.servers.tls import client_auth_context

    (tmp_path / "sni_wsgi_app.py").write_text(SNI_APP)
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "from certgate.servers.gunicorn import ssl_context  # noqa: F401\n"
        f"certfile = {str(env.server_cert)!r}\nkeyfile = {str(env.server_key)!r}\n"
        "workers = 1\n"
    )
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(conf), "--bind", f"127.0.0.1:{port}",
           "--chdir", str(tmp_path), "sni_wsgi_app:app"]  # fmt: skip
    with serve(cmd, env, port) as server:
        for _ in range(2):
            assert get_sni(env, port, None, "initech.test").text == "'initech.test'"
        assert get_sni(env, port, None, None, check_hostname=False).text == "None"
        log = server.log_text()
    assert log.count("does not ask clients for a certificate") == 1, log
    assert "cert_reqs = 1" in log

    namespace: dict[str, object] = {}
    exec(SNI_APP, namespace)
    context = client_auth_context(env.server_cert, env.server_key, ca_file=env.bundle)
    port = free_port()
    werkzeug = make_server("127.0.0.1", port, namespace["app"], ssl_context=context)  # type: ignore[arg-type]
    thread = threading.Thread(target=werkzeug.serve_forever, daemon=True)
    thread.start()
    try:
        assert get_sni(env, port, "acme-device", "eu.acme.test").text == "'eu.acme.test'"
    finally:
        werkzeug.shutdown()
        thread.join(10)


def test_per_tenant_hook_loads_the_toml_once_per_worker(
    env: DevEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gunicorn's sync and gthread workers call the ssl_context hook for every
    connection: the TOML file must be read on the first call only (it was
    read on every connection)."""
    import ssl
    from types import SimpleNamespace

    import certgate.config
    from certgate.servers.gunicorn import PerTenantSSLContext

    loads: list[object] = []
    real = certgate.config.load_gate_config

    def counting(path: object) -> object:
        loads.append(path)
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(certgate.config, "load_gate_config", counting)
    hook = PerTenantSSLContext(str(env.config))
    settings = SimpleNamespace(certfile=str(env.server_cert), keyfile=str(env.server_key))

    def listener() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(env.server_cert, env.server_key)
        context.verify_mode = ssl.CERT_OPTIONAL
        return context

    for _ in range(3):
        hook(settings, listener)
    assert len(loads) == 1
