"""End to end over real TLS: the server contexts certgate builds or hooks.

* Issue 5, item 3: the isolating setup for a vendor PKI (each tenant anchored
  at its own customer's issuing CA, not at the shared vendor root) passes the
  handshake of every certgate server helper (OpenSSL's partial-chain flag),
  and certgate still keeps each tenant's devices to that tenant.
* Issue 5, item 4: a resumed TLS session gets the same decision as the full
  handshake (tenant ``acme`` relies on the intermediate its devices send),
  TLS 1.2 and 1.3, with curl fetching two URLs and with Python's session
  reuse, on every supported server.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from examples.devenv import DevEnv, make_dev_environment, make_vendor_environment

from tests.servers import (
    Server,
    free_port,
    gunicorn_cmd,
    plain_uvicorn_cmd,
    serve,
    uvicorn_cmd,
    uvicorn_run_cmd,
    werkzeug_cmd,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

Command = Callable[[DevEnv, int], list[str]]

CERTGATE_SERVERS: dict[str, Command] = {
    "uvicorn-cli": uvicorn_cmd,  # python -m certgate.servers.uvicorn
    "uvicorn-run": uvicorn_run_cmd,  # certgate.servers.uvicorn.run() -> config()
    "werkzeug": werkzeug_cmd,  # run_simple(ssl_context=client_auth_context(...))
    "gunicorn": gunicorn_cmd,  # certgate.servers.gunicorn.ssl_context hook
}
ALL_SERVERS: dict[str, Command] = {
    **CERTGATE_SERVERS,
    "plain-uvicorn": plain_uvicorn_cmd,  # uvicorn's own context, certgate's protocols
}
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@contextmanager
def _started(kind: str, env: DevEnv, commands: dict[str, Command]) -> Iterator[Server]:
    port = free_port()
    with serve(commands[kind](env, port), env, port, {"CERTGATE_ENV": str(env.directory)}) as srv:
        srv.kind = kind
        yield srv


# -- item 3: a tenant anchored at its customer's issuing CA, over real TLS ------


@pytest.fixture(scope="module")
def vendor_env(tmp_path_factory: pytest.TempPathFactory) -> DevEnv:
    return make_vendor_environment(tmp_path_factory.mktemp("vendor-pki"))


@pytest.fixture(scope="module", params=sorted(CERTGATE_SERVERS))
def vendor_server(request: pytest.FixtureRequest, vendor_env: DevEnv) -> Iterator[Server]:
    with _started(request.param, vendor_env, CERTGATE_SERVERS) as srv:
        yield srv


def test_vendor_bundle_has_only_the_issuing_cas(vendor_env: DevEnv) -> None:
    text = vendor_env.bundle.read_text()
    assert text.count("BEGIN CERTIFICATE") == 2
    assert vendor_env.path("acme-issuing.pem").read_text() in text
    assert vendor_env.path("globex-issuing.pem").read_text() in text
    assert vendor_env.path("vendor-root.pem").read_text() not in text


def test_issuing_ca_anchor_passes_the_handshake_and_isolates(vendor_server: Server) -> None:
    """Failed before in the handshake ("unable to get issuer certificate"):
    the bundle's anchors are not self-signed."""
    own = vendor_server.get("acme-device", "pay.acme.test")
    assert own.status_code == 200, own.text
    body = own.json()
    assert body["tenant_id"] == "acme"
    assert body["chain"] == [
        "CN=acme-device-1,O=Acme",
        "CN=Vendor Issuing CA for Acme,O=Vendor",
    ]
    assert vendor_server.get("globex-device", "api.globex.test").json()["tenant_id"] == "globex"
    for identity, host in (("acme-device", "api.globex.test"), ("globex-device", "pay.acme.test")):
        refused = vendor_server.get(identity, host)
        assert refused.status_code == 403, (identity, host)
        assert refused.json()["reason"] == "untrusted_chain"


def test_issuing_ca_anchor_device_sending_no_root(vendor_server: Server) -> None:
    """Leaf + issuing CA, without the vendor root: the same decisions."""
    env = vendor_server.env
    leaf_and_issuing = env.directory / "acme-device-no-root.pem"
    leaf_and_issuing.write_text(
        env.path("acme-device.pem").read_text() + env.path("acme-issuing.pem").read_text()
    )
    context = ssl.create_default_context(cafile=str(env.server_ca))
    context.load_cert_chain(leaf_and_issuing, env.path("acme-device.key"))
    assert _raw_get(vendor_server.port, context, "pay.acme.test")[0] == 200
    assert _raw_get(vendor_server.port, context, "api.globex.test")[0] == 403


# -- item 4: resumed sessions ---------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> DevEnv:
    return make_dev_environment(tmp_path_factory.mktemp("resume-pki"))


@pytest.fixture(scope="module", params=sorted(ALL_SERVERS))
def server(request: pytest.FixtureRequest, env: DevEnv) -> Iterator[Server]:
    with _started(request.param, env, ALL_SERVERS) as srv:
        yield srv


def _raw_get(
    port: int, context: ssl.SSLContext, host: str, session: ssl.SSLSession | None = None
) -> tuple[int, bool, ssl.SSLSession | None]:
    """One HTTP/1.1 request on its own TLS connection: (status, resumed, session)."""
    with (
        socket.create_connection(("127.0.0.1", port), 10) as raw,
        context.wrap_socket(raw, server_hostname=host, session=session) as tls,
    ):
        tls.sendall(f"GET /whoami HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        return int(data.split(b" ", 2)[1]), bool(tls.session_reused), tls.session


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_python_session_reuse_keeps_the_decision(server: Server, version: str) -> None:
    """The acme device sends its issuing CA; the tenant does not configure it.
    Before the fix uvicorn and Werkzeug answered 200, then 403 untrusted_chain
    on every connection that resumed the session."""
    context = server.client_context("acme-device")
    context.minimum_version = context.maximum_version = VERSIONS[version]
    statuses: list[int] = []
    resumed: list[bool] = []
    session = None
    for _ in range(4):
        status, reused, session = _raw_get(server.port, context, "pay.acme.test", session)
        statuses.append(status)
        resumed.append(reused)
    assert statuses == [200] * 4, (server.kind, version, statuses, resumed)
    assert session is not None  # the client did offer a session each time
    if version == "1.3":
        assert not any(resumed[1:]), "TLS 1.3 tickets must be off"
    # the other tenant's host stays refused on a resumed session too
    # (421 sni_mismatch where the resumed TLS 1.2 session keeps the SNI it
    # was made for - acme's: OpenSSL reports the session's name on resumption;
    # 403 untrusted_chain where the server does not resume it)
    refused, _, _ = _raw_get(server.port, context, "api.globex.test", session)
    assert refused in (403, 421)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_curl_two_urls_get_the_same_decision(server: Server, version: str) -> None:
    env, port = server.env, server.port
    chain, key = env.client("acme-device")
    url = f"https://pay.acme.test:{port}/whoami"
    tls = ["--tlsv1.2", "--tls-max", "1.2"] if version == "1.2" else ["--tlsv1.3"]
    out = subprocess.run(
        [
            "curl", "-s", *["-o", "/dev/null"] * 3, "-w", "%{http_code}\n",
            "--cacert", str(env.server_ca), "--resolve", f"pay.acme.test:{port}:127.0.0.1",
            "--cert", str(chain), "--key", str(key), *tls,
            "-H", "Connection: close",  # a new connection (and session resumption) per URL
            url, url, url,
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.stdout.split() == ["200", "200", "200"], (server.kind, version, out)
