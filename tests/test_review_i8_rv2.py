"""Review i8-rv2 (issue 8 items 3-5): Host vs SNI, server adapters,
per-tenant handshakes, misconfiguration warnings, unix-socket trust and
authenticated proxies - each finding as a test, with real certificates and,
where the finding is about a server, a real server over loopback.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from examples.devenv import make_dev_environment

from certgate import CertGate, ConfigError, InMemoryRegistry, Tenant
from certgate.asgi import DECISION_KEY, CertGateMiddleware
from certgate.config import load_config
from certgate.devpki import CA, IssuedCert
from tests.conftest import PKI
from tests.test_asgi import RecordingApp, http_scope, pem_chain, run_http
from tests.test_servers_sni import client_context, echo_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

GLOBEX = "api.globex.test"
ACME = "pay.acme.test"
CF = b"cf-client-cert-der-base64"


# -- F1: a proxy CA that is (or issued) a tenant's CA ---------------------
#
# With ``proxy_ca`` every peer whose TLS client certificate verifies against
# the proxy CA may forward any client certificate in a header. The header
# carries only a certificate - public data, no proof of its key - so if the
# proxy CA is also a tenant's CA, every device of that tenant (for a SaaS: a
# customer's own PKI, which may also put "front-proxy" in a CN, so
# proxy_names does not help) can present the *public* certificate of any
# device of any other tenant and be taken for it.


def _forged_scope(device: IssuedCert, victim: IssuedCert, host: str) -> Any:
    """``device`` connects directly over TLS (its own certificate) and
    forges the Cloudflare header with ``victim``'s public certificate."""
    scope = http_scope(host=host, headers=[(CF, base64.b64encode(victim.der))])
    scope["certgate.socket_peer"] = ("203.0.113.50", 40000)
    scope["extensions"] = {"tls": {"client_cert_chain": pem_chain(device)}}
    return scope


def _impersonation_succeeds(gate: CertGate, device: IssuedCert, victim: IssuedCert) -> bool:
    app = RecordingApp()
    result = run_http(CertGateMiddleware(app, gate), _forged_scope(device, victim, GLOBEX))
    if result.status != 200:
        return False
    identity = app.scope[DECISION_KEY].identity
    return (
        identity is not None
        and identity.fingerprint_sha256 == victim.cert.fingerprint(hashes.SHA256()).hex()
    )


class _Unlisted:
    """A registry that does not list its tenants (a database, say): the
    check cannot run, which is why the README says so."""

    def __init__(self, inner: InMemoryRegistry) -> None:
        self.inner = inner

    def tenant_for_host(self, host: str) -> Tenant | None:
        return self.inner.tenant_for_host(host)

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return self.inner.tenant_by_id(tenant_id)


@pytest.mark.parametrize("names", [(), ("front-proxy",)])
def test_proxy_ca_equal_to_a_tenant_root_is_refused(pki: PKI, names: tuple[str, ...]) -> None:
    acme_root = pki["acme"].roots[0]
    kwargs: dict[str, Any] = {
        "header_sources": ["cloudflare"],
        "proxy_ca": [acme_root.cert],
        "proxy_names": names,
    }
    with pytest.raises(ConfigError, match="acme") as caught:
        CertGate(pki.registry(), **kwargs)
    assert "proxy_ca" in str(caught.value)
    # What the check prevents (still possible where it cannot run): an acme
    # device - its CA puts any CN it likes in it - is a proxy, and is taken
    # for a globex device whose public certificate it forwards.
    gate = CertGate(_Unlisted(pki.registry()), **kwargs)
    device = pki["acme"].client(names[0] if names else "acme-device")
    assert _impersonation_succeeds(gate, device, pki["globex"].client("victim"))


def test_proxy_ca_equal_to_a_tenant_intermediate_is_refused(pki: PKI) -> None:
    """initech's issuing CA is configured on the tenant (its devices send
    only their leaf): as proxy CA it makes every initech device a proxy."""
    issuing = pki["initech"].configured_intermediates[0]
    with pytest.raises(ConfigError, match="initech"):
        CertGate(pki.registry(), header_sources=["cloudflare"], proxy_ca=[issuing.cert])


def test_proxy_ca_that_issued_a_tenant_anchor_is_refused() -> None:
    """The vendor PKI: each tenant anchored at its own issuing CA under a
    shared vendor root. The vendor root as proxy CA: every device of every
    tenant chains to it (it sends its issuing CA) and would be a proxy."""
    vendor = CA.root("Vendor Root CA")
    acme_issuing = vendor.intermediate("Acme Issuing CA")
    globex_issuing = vendor.intermediate("Globex Issuing CA")
    registry = InMemoryRegistry(
        [
            Tenant("acme", (ACME,), (acme_issuing.cert,)),
            Tenant("globex", (GLOBEX,), (globex_issuing.cert,)),
        ]
    )
    with pytest.raises(ConfigError, match=r"acme|globex"):
        CertGate(registry, header_sources=["cloudflare"], proxy_ca=[vendor.cert])
    gate = CertGate(_Unlisted(registry), header_sources=["cloudflare"], proxy_ca=[vendor.cert])
    device = acme_issuing.issue("acme-device")
    assert _impersonation_succeeds(gate, device, globex_issuing.issue("victim"))


def test_separate_proxy_ca_is_accepted(pki: PKI) -> None:
    proxy_ca = CA.root("Proxy CA only")
    gate = CertGate(pki.registry(), header_sources=["cloudflare"], proxy_ca=[proxy_ca.cert])
    device = pki["acme"].client("acme-device")
    assert not _impersonation_succeeds(gate, device, pki["globex"].client("victim"))
    proxy = proxy_ca.issue("front-proxy")
    assert _impersonation_succeeds(gate, proxy, pki["globex"].client("forwarded"))


# -- F2: per-tenant handshakes dropped ALPN (HTTP/2 silently off) ----------
#
# OpenSSL takes the ALPN choice from the context a connection is switched to
# in the sni_callback; the per-tenant contexts had no ALPN protocols, so
# hypercorn (h2 by default) and gunicorn (http_protocols = ["h2", ...])
# answered every client in HTTP/1.1 as soon as per-tenant handshakes were on.


def _h2_get(env: Any, port: int, identity: str, sni: str) -> httpx.Response:
    context = client_context(env, identity)
    with httpx.Client(verify=context, timeout=10, http2=True) as client:
        return client.get(
            f"https://127.0.0.1:{port}/",
            headers={"Host": sni},
            extensions={"sni_hostname": sni},
        )


def test_hypercorn_per_tenant_keeps_http2(tmp_path: Path) -> None:
    pytest.importorskip("h2")
    from tests.test_servers_hypercorn import _port, _tls, hypercorn_in_thread

    env = make_dev_environment(tmp_path)
    gate = CertGate(load_config(env.config).registry)
    app = CertGateMiddleware(echo_app, gate)
    with hypercorn_in_thread(app, **_tls(env, ca_certs=str(env.bundle))) as cfg:
        union = _h2_get(env, _port(cfg), "globex-device", "api.globex.test")
    assert (union.status_code, union.http_version) == (200, "HTTP/2")
    with hypercorn_in_thread(app, **_tls(env, per_tenant=gate)) as cfg:
        per_tenant = _h2_get(env, _port(cfg), "globex-device", "api.globex.test")
    assert per_tenant.status_code == 200
    assert per_tenant.http_version == "HTTP/2"


def test_gunicorn_per_tenant_hook_keeps_alpn(tmp_path: Path) -> None:
    """gunicorn's http_protocols = ["h2", "http/1.1"]: the listener its
    default factory makes offers h2; the per-tenant contexts must too."""
    pytest.importorskip("h2")
    from gunicorn.config import Config

    from certgate.servers.gunicorn import PerTenantSSLContext

    env = make_dev_environment(tmp_path)
    cfg = Config()
    cfg.set("certfile", str(env.server_cert))
    cfg.set("keyfile", str(env.server_key))
    cfg.set("cert_reqs", ssl.CERT_OPTIONAL)
    cfg.set("http_protocols", "h2,h1")
    hook = PerTenantSSLContext(str(env.config))
    listener = hook(cfg, lambda: _default(cfg))
    assert _negotiated(listener, env, "api.globex.test") == "h2"


def _default(cfg: Any) -> ssl.SSLContext:
    """gunicorn's own default_ssl_context_factory for ``cfg``."""
    from gunicorn import sock as gsock

    made: list[ssl.SSLContext] = []
    original = cfg.ssl_context

    def capture(conf: Any, factory: Any) -> ssl.SSLContext:
        made.append(factory())
        return made[0]

    cfg.settings["ssl_context"].value = capture
    try:
        gsock.ssl_context(cfg)
    finally:
        cfg.settings["ssl_context"].value = original
    return made[0]


def _negotiated(listener: ssl.SSLContext, env: Any, sni: str) -> str | None:
    """ALPN chosen on a real TLS connection over loopback to ``listener``."""
    server = socket.create_server(("127.0.0.1", 0))
    chosen: list[str | None] = []

    def accept() -> None:
        conn, _ = server.accept()
        with contextlib.suppress(OSError), listener.wrap_socket(conn, server_side=True) as tls:
            chosen.append(tls.selected_alpn_protocol())

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    context = client_context(env, "globex-device")
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(server.getsockname(), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        client_side = tls.selected_alpn_protocol()
    thread.join(10)
    server.close()
    assert chosen == [client_side]
    return client_side


# -- F3: authenticated proxies could not connect under per-tenant handshakes
#
# The proxy's own client certificate (from the proxy CA) must pass the
# handshake before certgate can check it. A per-tenant context trusts only
# the tenant's CAs, and the default rule for a missing SNI (nginx sends none
# by default: proxy_ssl_server_name off) trusts no CA at all, so the proxy's
# handshake failed whatever it sent: proxy_ca and per-tenant handshakes could
# not be used together.


def _proxied_get(
    env: Any, port: int, proxy: dict[str, Path], sni: str | None, device_der: bytes
) -> httpx.Response:
    context = ssl.create_default_context(cafile=str(env.server_ca))
    context.load_cert_chain(proxy["chain"], proxy["key"])
    context.check_hostname = sni is not None
    extensions = {"sni_hostname": sni} if sni is not None else {}
    with httpx.Client(verify=context, timeout=10) as client:
        return client.get(
            f"https://127.0.0.1:{port}/",
            headers={
                "Host": GLOBEX,
                "Cf-Client-Cert-Der-Base64": base64.b64encode(device_der).decode(),
            },
            extensions=extensions,
        )


@pytest.mark.parametrize("sni", [None, GLOBEX])
def test_authenticated_proxy_connects_under_per_tenant_handshakes(
    tmp_path: Path, sni: str | None
) -> None:
    from tests.test_servers_sni import uvicorn_in_thread

    env = make_dev_environment(tmp_path)
    proxy_ca = CA.root("Edge Proxy CA")
    proxy = proxy_ca.issue("front-proxy").write_files(tmp_path, "front-proxy")
    device_der = x509.load_pem_x509_certificate(
        env.path("globex-device.pem").read_bytes()
    ).public_bytes(Encoding.DER)
    gate = CertGate(
        load_config(env.config).registry,
        header_sources=["cloudflare"],
        proxy_ca=[proxy_ca.cert],
        proxy_names=["front-proxy"],
    )
    seen: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        identity = scope[DECISION_KEY].identity
        seen.append(None if identity is None else identity.source)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with uvicorn_in_thread(
        CertGateMiddleware(app, gate),
        ssl_certfile=str(env.server_cert),
        ssl_keyfile=str(env.server_key),
        per_tenant=gate,
    ) as server:
        response = _proxied_get(env, server.config.port, proxy, sni, device_der)
        assert response.status_code == 200, response.text
        assert seen == ["cloudflare"]
        # A device still fails another tenant's handshake.
        context = client_context(env, "acme-device")
        with (
            httpx.Client(verify=context, timeout=10) as client,
            pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
        ):
            client.get(
                f"https://127.0.0.1:{server.config.port}/",
                headers={"Host": GLOBEX},
                extensions={"sni_hostname": GLOBEX},
            )
        # The proxy's certificate is no client identity of the tenant.
        assert _get_as(env, server.config.port, proxy, GLOBEX).status_code == 403


def _get_as(env: Any, port: int, files: dict[str, Path], sni: str) -> httpx.Response:
    """A request presenting ``files`` as the client's own certificate, no header."""
    context = ssl.create_default_context(cafile=str(env.server_ca))
    context.load_cert_chain(files["chain"], files["key"])
    with httpx.Client(verify=context, timeout=10) as client:
        return client.get(
            f"https://127.0.0.1:{port}/", headers={"Host": sni}, extensions={"sni_hostname": sni}
        )


# -- F5: no unix-socket warning with proxy_ca alone -----------------------
#
# README: "certgate logs one WARNING (with this fix) when header sources are
# configured and requests arrive over a unix socket". With proxy_ca and no
# trusted_proxies the address check was skipped, and the warning with it:
# the proxy's headers were dropped with no word about trust_unix_socket.


def test_unix_socket_warning_also_with_proxy_ca_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from tests.test_servers_sni import uvicorn_in_thread

    gate = CertGate(
        InMemoryRegistry([Tenant("globex", (GLOBEX,), (CA.root("G").cert,))]),
        header_sources=["cloudflare"],
        proxy_ca=[CA.root("Proxy CA").cert],
    )
    path = str(tmp_path / "app.sock")
    with (
        caplog.at_level(logging.WARNING, logger="certgate"),
        uvicorn_in_thread(CertGateMiddleware(echo_app, gate), uds=path),
        httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=10) as client,
    ):
        for _ in range(2):
            response = client.get(
                f"http://{GLOBEX}/", headers={"Cf-Client-Cert-Der-Base64": "AA=="}
            )
            assert response.status_code == 403
    warned = [r.getMessage() for r in caplog.records if "trust_unix_socket" in r.getMessage()]
    assert len(warned) == 1, warned


# -- checked and sound (kept as regression tests) --------------------------


@pytest.mark.parametrize("per_tenant", [False, True])
def test_tls12_resumption_with_another_sni_keeps_the_sessions_name(
    tmp_path: Path, per_tenant: bool
) -> None:
    """A TLS 1.2 session made for acme, resumed with SNI and Host globex:
    OpenSSL reports the session's name, so the request is 421 sni_mismatch
    (never globex verified under acme's handshake, never a bypass)."""
    from tests.test_servers_sni import uvicorn_in_thread

    env = make_dev_environment(tmp_path)
    gate = CertGate(load_config(env.config).registry)
    kwargs: dict[str, Any] = {
        "ssl_certfile": str(env.server_cert),
        "ssl_keyfile": str(env.server_key),
    }
    if per_tenant:
        kwargs["per_tenant"] = gate
    else:
        kwargs["ssl_ca_certs"] = str(env.bundle)
    context = client_context(env, "acme-device")
    context.check_hostname = False
    context.maximum_version = ssl.TLSVersion.TLSv1_2

    def one(port: int, sni: str, session: Any = None) -> tuple[bytes, bool | None, Any]:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=sni, session=session) as tls,
        ):
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return data, tls.session_reused, tls.session

    with uvicorn_in_thread(CertGateMiddleware(echo_app, gate), **kwargs) as server:
        first, _, session = one(server.config.port, ACME)
        assert first.startswith(b"HTTP/1.1 200")
        second, reused, _ = one(server.config.port, GLOBEX, session)
    assert reused
    assert second.startswith(b"HTTP/1.1 421")
    assert b"sni_mismatch" in second
