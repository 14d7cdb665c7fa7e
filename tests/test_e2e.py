"""End to end over real TLS on loopback: real servers, real clients, real
certificates made at test time.

Every server runs the example apps from examples/ with the dev PKI of
examples/devenv.py (tenants acme, globex, initech; see that module).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from examples.devenv import DevEnv, make_dev_environment

from tests.servers import (
    Server,
    free_port,
    gunicorn_cmd,
    plain_uvicorn_cmd,
    serve,
    trust_header_source,
    uvicorn_cmd,
    uvicorn_run_cmd,
    werkzeug_cmd,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> DevEnv:
    return make_dev_environment(tmp_path_factory.mktemp("pki"))


SERVERS = {
    "uvicorn-auto": uvicorn_cmd,
    "uvicorn-h11": lambda env, port: uvicorn_cmd(
        env, port, "--http", "certgate.servers.uvicorn:H11TLSProtocol"
    ),
    "uvicorn-httptools": lambda env, port: uvicorn_cmd(
        env, port, "--http", "certgate.servers.uvicorn:HttpToolsTLSProtocol"
    ),
    "uvicorn-run": uvicorn_run_cmd,
    "werkzeug": werkzeug_cmd,
    "gunicorn": gunicorn_cmd,
}


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server(request: pytest.FixtureRequest, env: DevEnv) -> Iterator[Server]:
    port = free_port()
    cmd = SERVERS[request.param](env, port)
    with serve(cmd, env, port, {"CERTGATE_ENV": str(env.directory)}) as running:
        running.kind = request.param
        yield running


def _reason(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json"
    return str(response.json()["reason"])


def test_own_tenant_gets_identity(server: Server) -> None:
    response = server.get("acme-device", "pay.acme.test")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tenant_id"] == "acme"
    assert body["common_name"] == "sensor-17"
    assert body["spiffe_id"] == "spiffe://acme.test/device/sensor-17"
    assert body["source"] == ("asgi_tls" if server.kind.startswith("uvicorn") else "wsgi_environ")
    assert body["chain"] == [
        "CN=sensor-17,O=Acme",
        "CN=Acme Issuing CA,O=Acme",
        "CN=Acme Root CA,O=Acme",
    ]


def test_wildcard_host_and_other_tenants(server: Server) -> None:
    assert server.get("acme-device", "eu.acme.test:443").json()["tenant_id"] == "acme"
    assert server.get("globex-device", "api.globex.test").json()["tenant_id"] == "globex"


def test_leaf_only_with_configured_intermediate(server: Server) -> None:
    response = server.get("initech-device", "initech.test", chain=False)
    assert response.status_code == 200
    assert response.json()["tenant_id"] == "initech"


def test_cross_tenant_is_refused(server: Server) -> None:
    for identity, host in [
        ("acme-device", "api.globex.test"),
        ("globex-device", "initech.test"),
        ("initech-device", "pay.acme.test"),
    ]:
        response = server.get(identity, host)
        assert response.status_code == 403, (identity, host)
        assert _reason(response) == "untrusted_chain"


def test_no_certificate_expired_unknown_host(server: Server) -> None:
    assert _reason(server.get(None, "pay.acme.test")) == "no_certificate"
    expired = server.get("acme-expired", "pay.acme.test")
    assert expired.status_code == 403
    assert _reason(expired) == "expired"
    assert _reason(server.get("acme-device", "shop.example.com")) == "unknown_tenant"


def test_exempt_path_and_forged_header(server: Server) -> None:
    assert server.get(None, "pay.acme.test", "/healthz").json() == {"ok": True}
    der = ssl.PEM_cert_to_DER_cert(server.env.path("acme-device.pem").read_text())
    forged = {"Cf-Client-Cert-Der-Base64": base64.b64encode(der).decode()}
    response = server.get(None, "pay.acme.test", headers=forged)
    assert response.status_code == 403
    assert _reason(response) == "no_certificate"


def test_rogue_ca_fails_the_handshake(server: Server) -> None:
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        server.get("rogue-device", "pay.acme.test")


def test_keep_alive_connection_keeps_identity(server: Server) -> None:
    context = server.client_context("acme-device")
    with httpx.Client(verify=context, timeout=10) as client:
        for _ in range(5):
            response = client.get(server.url("/whoami"), headers={"Host": "pay.acme.test"})
            assert response.json()["tenant_id"] == "acme"
        refused = client.get(server.url("/whoami"), headers={"Host": "api.globex.test"})
        assert refused.status_code == 403


def test_rejections_are_logged_with_fingerprint_not_key_material(server: Server) -> None:
    server.get("acme-expired", "pay.acme.test")
    log = server.log_text()
    assert "reason=expired tenant=acme" in log
    assert "fingerprint=" in log
    assert "PRIVATE KEY" not in log
    assert "BEGIN CERTIFICATE" not in log


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_client(server: Server) -> None:
    env, port = server.env, server.port
    chain, key = env.client("acme-device")
    base = [
        "curl",
        "-s",
        "--cacert",
        str(env.server_ca),
        "--resolve",
        f"pay.acme.test:{port}:127.0.0.1",
        "--resolve",
        f"api.globex.test:{port}:127.0.0.1",
    ]
    ok = subprocess.run(
        [*base, "--cert", str(chain), "--key", str(key), f"https://pay.acme.test:{port}/whoami"],
        capture_output=True,
        check=True,
        timeout=20,
    )
    assert json.loads(ok.stdout)["tenant_id"] == "acme"
    refused = subprocess.run(
        [*base, "--cert", str(chain), "--key", str(key), f"https://api.globex.test:{port}/whoami"],
        capture_output=True,
        check=True,
        timeout=20,
    )
    assert json.loads(refused.stdout)["reason"] == "untrusted_chain"


def test_concurrent_clients_of_many_tenants(server: Server) -> None:
    """Parallel TLS connections from devices of different tenants to different
    hosts: every answer is the one that request would get alone."""
    plan = [
        ("acme-device", "pay.acme.test", "acme"),
        ("globex-device", "api.globex.test", "globex"),
        ("initech-device", "initech.test", "initech"),
        ("acme-device", "api.globex.test", None),
        ("globex-device", "initech.test", None),
        ("initech-device", "eu.acme.test", None),
    ] * 8
    random.Random(7).shuffle(plan)

    def one(item: tuple[str, str, str | None]) -> bool:
        identity, host, expected = item
        response = server.get(identity, host)
        if expected is None:
            return response.status_code == 403 and _reason(response) == "untrusted_chain"
        return response.status_code == 200 and response.json()["tenant_id"] == expected

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(one, plan))
    assert all(outcomes), [p for p, ok in zip(plan, outcomes, strict=True) if not ok]


def test_plain_uvicorn_cli_with_certgate_protocols(env: DevEnv) -> None:
    """`uvicorn --http certgate.servers.uvicorn:AutoTLSProtocol`: the tls
    extension is filled; without certgate's context hook the handshake checks
    validity times itself, so an expired certificate fails in TLS (documented)."""
    port = free_port()
    with serve(plain_uvicorn_cmd(env, port), env, port) as server:
        response = server.get("acme-device", "pay.acme.test")
        assert response.status_code == 200
        assert response.json()["source"] == "asgi_tls"
        assert _reason(server.get("acme-device", "api.globex.test")) == "untrusted_chain"
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            server.get("acme-expired", "pay.acme.test")


# -- uvicorn specifics ---------------------------------------------------------


@pytest.fixture(scope="module")
def uvicorn_server(env: DevEnv) -> Iterator[Server]:
    port = free_port()
    with serve(uvicorn_cmd(env, port), env, port) as running:
        yield running


def _ws(server: Server, identity: str, host: str) -> dict[str, object] | int:
    import websockets.asyncio.client as ws_client
    from websockets.exceptions import InvalidStatus

    async def connect() -> dict[str, object] | int:
        try:
            async with ws_client.connect(
                f"wss://{host}:{server.port}/ws",
                ssl=server.client_context(identity),
                host="127.0.0.1",  # connect to loopback; Host header and SNI stay `host`
                port=server.port,
            ) as socket:
                return dict(json.loads(await socket.recv()))
        except InvalidStatus as exc:
            return int(exc.response.status_code)

    return asyncio.run(connect())


def test_websocket_allowed_and_refused_before_accept(uvicorn_server: Server) -> None:
    assert _ws(uvicorn_server, "acme-device", "pay.acme.test") == {"tenant_id": "acme"}
    assert _ws(uvicorn_server, "acme-device", "api.globex.test") == 403


@pytest.fixture(scope="module")
def proxy_env(tmp_path_factory: pytest.TempPathFactory) -> DevEnv:
    return trust_header_source(
        make_dev_environment(tmp_path_factory.mktemp("proxy-pki")), "10.0.0.0/8"
    )


def test_x_forwarded_for_cannot_make_a_peer_trusted(proxy_env: DevEnv) -> None:
    """uvicorn rewrites scope["client"] from X-Forwarded-For when told to trust
    every proxy; certgate must still judge the real socket peer (127.0.0.1,
    not in 10.0.0.0/8) and drop the forged Cloudflare header."""
    port = free_port()
    cmd = uvicorn_cmd(proxy_env, port, "--proxy-headers", "--forwarded-allow-ips", "*")
    der = ssl.PEM_cert_to_DER_cert(proxy_env.path("acme-device.pem").read_text())
    headers = {
        "X-Forwarded-For": "10.0.0.7",
        "Cf-Client-Cert-Der-Base64": base64.b64encode(der).decode(),
    }
    with serve(cmd, proxy_env, port) as server:
        response = server.get(None, "pay.acme.test", headers=headers)
        assert response.status_code == 403
        assert _reason(response) == "no_certificate"


def test_trusted_loopback_proxy_header_is_honoured(tmp_path: Path) -> None:
    env = make_dev_environment(tmp_path)
    text = env.config.read_text().replace(
        "[certgate]\n",
        '[certgate]\ntrusted_proxies = ["127.0.0.1/32"]\nheader_sources = ["cloudflare"]\n',
    )
    env.config.write_text(text)
    port = free_port()
    der = ssl.PEM_cert_to_DER_cert(env.path("globex-device.pem").read_text())
    import hashlib

    good = {
        "Cf-Client-Cert-Der-Base64": base64.b64encode(der).decode(),
        "Cf-Client-Cert-Sha256": hashlib.sha256(der).hexdigest(),
    }
    bad = {**good, "Cf-Client-Cert-Sha256": "0" * 64}
    with serve(uvicorn_cmd(env, port), env, port) as server:
        response = server.get(None, "api.globex.test", headers=good)
        assert response.status_code == 200, response.text
        assert response.json()["source"] == "cloudflare"
        assert _reason(server.get(None, "api.globex.test", headers=bad)) == "fingerprint_mismatch"
        assert _reason(server.get(None, "pay.acme.test", headers=good)) == "untrusted_chain"
