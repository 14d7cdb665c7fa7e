"""Host vs SNI (issue 8, the emissary-ingress #3340 attack): a certificate
accepted in a TLS handshake addressed to one tenant must not be used with
the Host of another.

Rule (certgate.gate.CertGate._sni_check): when the server adapter recorded
the connection's SNI and the certificate came with the TLS connection (the
peer is not a trusted proxy), the tenant of the SNI must be the tenant of the
Host, else 421 ``sni_mismatch``; an SNI naming no tenant while the Host does
is a mismatch. No SNI known -> no check. Exempt paths: no check.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

from certgate import CertGate, InMemoryRegistry, Reason, Tenant
from certgate.asgi import DECISION_KEY, CertGateMiddleware
from certgate.devpki import IssuedCert
from certgate.facts import RequestFacts
from certgate.servers.tls import client_auth_context, trust_bundle_pem
from certgate.sni import SCOPE_KEY, remember
from certgate.sources import asgi_tls
from certgate.wsgi import CertGateWSGIMiddleware
from tests.conftest import PKI
from tests.test_asgi import RecordingApp, http_scope, pem_chain, run_http

GLOBEX = "api.globex.test"
ACME = "pay.acme.test"


def tls_scope(client: IssuedCert, host: str, sni: str | None, path: str = "/") -> Any:
    scope = http_scope(host=host, path=path, tls_chain=pem_chain(client))
    scope["certgate.socket_peer"] = ("203.0.113.7", 5000)
    scope[SCOPE_KEY] = sni
    return scope


@pytest.mark.parametrize(
    ("host", "sni", "status"),
    [
        (GLOBEX, GLOBEX, 200),
        (GLOBEX, None, 200),  # no SNI known: no check
        (GLOBEX, "API.GLOBEX.TEST", 200),  # compared as host names
        (GLOBEX, ACME, 421),  # another tenant's name
        (GLOBEX, "nobody.example", 421),  # a name of no tenant
    ],
)
def test_sni_must_name_the_hosts_tenant(pki: PKI, host: str, sni: str | None, status: int) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, CertGate(pki.registry()))
    result = run_http(mw, tls_scope(pki["globex"].client("sni"), host, sni))
    assert result.status == status
    if status == 421:
        assert result.reason == Reason.SNI_MISMATCH.value
        assert app.scopes == []


def test_same_tenant_other_name_passes(pki: PKI) -> None:
    mw = CertGateMiddleware(RecordingApp(), CertGate(pki.registry()))
    client = pki["acme"].client("wild")
    scope = tls_scope(client, "eu.acme.test", ACME)
    scope["extensions"]["tls"]["client_cert_chain"] = pem_chain(client)
    assert run_http(mw, scope).status == 200


def test_the_emissary_attack_acme_sni_globex_host(pki: PKI) -> None:
    """A globex device's handshake says SNI api.globex.test; the request's Host
    says pay.acme.test. With a gate that (say, by a shared root) would verify
    the certificate for both, only the SNI check stops it."""
    shared = pki["globex"].roots[0].cert
    registry = InMemoryRegistry(
        [
            Tenant("globex", (GLOBEX,), (shared,), shared_anchors=True),
            Tenant("acme", (ACME,), (shared,), shared_anchors=True),
        ]
    )
    mw = CertGateMiddleware(RecordingApp(), CertGate(registry))
    client = pki["globex"].client("device")
    assert run_http(mw, tls_scope(client, ACME, None)).status == 200  # no SNI: no check
    result = run_http(mw, tls_scope(client, ACME, GLOBEX))
    assert result.status == 421
    assert result.reason == Reason.SNI_MISMATCH.value


def test_exempt_path_is_not_checked(pki: PKI) -> None:
    mw = CertGateMiddleware(RecordingApp(), CertGate(pki.registry(), exempt_paths=["/healthz"]))
    client = pki["globex"].client("exempt")
    assert run_http(mw, tls_scope(client, GLOBEX, ACME, "/healthz")).status == 200
    assert run_http(mw, tls_scope(client, GLOBEX, ACME, "/")).status == 421


def test_forwarded_certificate_from_trusted_proxy_is_not_checked(pki: PKI) -> None:
    gate = CertGate(pki.registry(), trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])
    client = pki["globex"].client("proxied")
    scope = http_scope(
        host=GLOBEX, headers=[(b"cf-client-cert-der-base64", base64.b64encode(client.der))]
    )
    scope["certgate.socket_peer"] = ("10.1.2.3", 5000)
    scope[SCOPE_KEY] = "proxy.internal"  # the proxy's connection's name
    assert run_http(CertGateMiddleware(RecordingApp(), gate), scope).status == 200


def test_the_memo_never_serves_a_remembered_allow_for_another_sni(pki: PKI) -> None:
    gate = CertGate(pki.registry())
    assert gate.remembers()
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    client = pki["globex"].client("memo")
    for _ in range(3):
        assert run_http(mw, tls_scope(client, GLOBEX, GLOBEX)).status == 200
    assert app.scopes[-1][DECISION_KEY] is app.scopes[-2][DECISION_KEY]  # remembered
    result = run_http(mw, tls_scope(client, GLOBEX, ACME))
    assert result.status == 421
    assert result.reason == Reason.SNI_MISMATCH.value
    # the gate's own key (facts, no adapter key) too
    facts = RequestFacts(GLOBEX, "/", "203.0.113.7", {}, _transport(client), False, GLOBEX)
    for _ in range(3):
        assert gate.decide(facts).reason is None
    assert gate.decide(facts._replace(sni=ACME)).reason is Reason.SNI_MISMATCH


def _transport(client: IssuedCert) -> Any:
    return asgi_tls.from_scope({"extensions": {"tls": {"client_cert_chain": pem_chain(client)}}})


def wsgi_status(mw: Any, environ: dict[str, Any]) -> str:
    """Call WSGI middleware ``mw``; the status line it answered with."""
    seen: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        seen.append(status)
        return lambda data: None

    for _ in mw(environ, start_response):
        pass
    return seen[0]


class BlockingRegistry:
    """A registry whose lookups go through certgate's lookup pool (the
    blocking path with deadlines) and count calls."""

    blocking = True

    def __init__(self, inner: InMemoryRegistry) -> None:
        self.inner = inner
        self.hosts: list[str] = []

    def tenant_for_host(self, host: str) -> Tenant | None:
        self.hosts.append(host)
        return self.inner.tenant_for_host(host)

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return self.inner.tenant_by_id(tenant_id)


class AsyncRegistry:
    def __init__(self, inner: InMemoryRegistry) -> None:
        self.inner = inner

    async def tenant_for_host(self, host: str) -> Tenant | None:
        await asyncio.sleep(0)
        return self.inner.tenant_for_host(host)

    async def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return self.inner.tenant_by_id(tenant_id)


@pytest.mark.parametrize("kind", ["blocking", "async"])
def test_sync_and_async_paths_with_registries_that_wait(pki: PKI, kind: str) -> None:
    registry: Any = (
        BlockingRegistry(pki.registry()) if kind == "blocking" else AsyncRegistry(pki.registry())
    )
    gate = CertGate(registry)
    client = pki["globex"].client("paths")
    good = RequestFacts(GLOBEX, "/", "203.0.113.7", {}, _transport(client), False, GLOBEX)
    bad = good._replace(sni=ACME)
    unknown = good._replace(sni="nobody.example")
    assert gate.decide(good).reason is None
    assert gate.decide(bad).reason is Reason.SNI_MISMATCH
    assert gate.decide(unknown).reason is Reason.SNI_MISMATCH
    assert asyncio.run(gate.adecide(good)).reason is None
    assert asyncio.run(gate.adecide(bad)).reason is Reason.SNI_MISMATCH
    assert asyncio.run(gate.adecide(unknown)).reason is Reason.SNI_MISMATCH
    if isinstance(registry, BlockingRegistry):
        assert ACME in registry.hosts  # the SNI's tenant was looked up through the pool


def test_tenant_resolver_compared_by_tenant_id(pki: PKI) -> None:
    gate = CertGate(pki.registry(), tenant_resolver=lambda facts: "globex")
    client = pki["globex"].client("resolved")
    facts = RequestFacts(None, "/", "203.0.113.7", {}, _transport(client), False, GLOBEX)
    assert gate.decide(facts).reason is None
    assert gate.decide(facts._replace(sni=ACME)).reason is Reason.SNI_MISMATCH


# -- WSGI, and a real TLS server ---------------------------------------------


class _Sock(socket.socket):
    """A socket with a __dict__, so certgate.sni.remember can record on it."""


def test_wsgi_reads_sni_from_the_server_socket(pki: PKI) -> None:
    left, right = socket.socketpair()
    sock = _Sock(fileno=left.detach())
    try:
        client = pki["globex"].client("wsgi")
        statuses: list[str] = []

        def app(environ: Any, start_response: Any) -> Any:
            start_response("200 OK", [])
            return [b"ok"]

        mw = CertGateWSGIMiddleware(app, CertGate(pki.registry()))
        for sni in (GLOBEX, ACME, None):
            remember(sock, sni)
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": "/",
                "HTTP_HOST": GLOBEX,
                "wsgi.url_scheme": "https",
                "werkzeug.socket": sock,
                "SSL_CLIENT_CERT": client.cert_pem.decode(),
            }
            statuses.append(wsgi_status(mw, environ))
        assert [s[:3] for s in statuses] == ["200", "421", "200"]
    finally:
        sock.close()
        right.close()


@pytest.fixture
def werkzeug_tls(pki: PKI, tmp_path: Any) -> Iterator[tuple[int, ssl.SSLContext]]:
    """Werkzeug's server over real TLS, its context recording the SNI with
    certgate.sni.remember (what helper C's server contexts install)."""
    server_cert = pki.server_ca.server([GLOBEX, ACME, "127.0.0.1"])
    files = server_cert.write_files(tmp_path, "server")
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(trust_bundle_pem(t.tenant() for t in pki.tenants.values()))
    context = client_auth_context(files["cert"], files["key"], ca_file=bundle)
    context.sni_callback = lambda conn, name, ctx: remember(conn, name)

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    server = make_server(
        "127.0.0.1", 0, CertGateWSGIMiddleware(app, CertGate(pki.registry())), ssl_context=context
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cadata=pki.server_ca.cert_pem.decode())
    client_ctx.check_hostname = False
    try:
        yield server.port, client_ctx
    finally:
        server.shutdown()
        thread.join(10)


def _https_get(port: int, context: ssl.SSLContext, sni: str, host: str) -> bytes:
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        tls.sendall(request)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data


def test_real_tls_server_host_vs_sni(
    pki: PKI, werkzeug_tls: tuple[int, ssl.SSLContext], tmp_path: Any
) -> None:
    port, base = werkzeug_tls
    client = pki["globex"].client("real")
    files = client.write_files(tmp_path, "client")
    base.load_cert_chain(files["chain"], files["key"])
    same = _https_get(port, base, GLOBEX, GLOBEX)
    assert same.split(b" ", 2)[1] == b"200", same[:200]
    other = _https_get(port, base, ACME, GLOBEX)  # handshake for acme, request for globex
    assert other.split(b" ", 2)[1] == b"421", other[:200]
    assert b"sni_mismatch" in other
    unknown = _https_get(port, base, "nobody.example", GLOBEX)
    assert b"sni_mismatch" in unknown
