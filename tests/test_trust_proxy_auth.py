"""Header trust (issue 8): authenticated proxies (``proxy_ca``), unix-socket
peers (``trust_unix_socket``), and the decision memo across both.

Real certificates throughout: the proxy's own TLS client certificate is
issued by a dedicated proxy CA made at test time (certgate.devpki), the
forwarded client certificate by the test tenants' CAs.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from certgate import CertGate, ConfigError
from certgate.asgi import DECISION_KEY, CertGateMiddleware
from certgate.devpki import CA, IssuedCert
from certgate.wsgi import CertGateWSGIMiddleware
from tests.conftest import PKI
from tests.test_asgi import RecordingApp, http_scope, pem_chain, run_http

HOST = "api.globex.test"
CF = b"cf-client-cert-der-base64"
PROXY_PEER = ("10.1.2.3", 40000)
OTHER_PEER = ("203.0.113.9", 40000)


@pytest.fixture(scope="module")
def proxy_ca() -> CA:
    return CA.root("Front Proxy CA", organization="Edge")


@pytest.fixture(scope="module")
def proxy_cert(proxy_ca: CA) -> IssuedCert:
    return proxy_ca.issue("front-proxy", uri=["spiffe://cluster.local/ns/edge/sa/proxy"])


def proxy_gate(pki: PKI, ca: CA, **kwargs: Any) -> CertGate:
    kwargs.setdefault("header_sources", ["cloudflare"])
    return CertGate(pki.registry(), proxy_ca=[ca.cert], **kwargs)


def forwarded_scope(
    client: IssuedCert, proxy: IssuedCert | None, peer: tuple[str, int] = PROXY_PEER
) -> Any:
    """A request from ``peer`` over TLS presenting ``proxy`` (its own client
    certificate), forwarding ``client`` in the Cloudflare header."""
    scope = http_scope(host=HOST, headers=[(CF, base64.b64encode(client.der))])
    scope["certgate.socket_peer"] = peer
    scope["extensions"] = {
        "tls": {
            "client_cert_chain": pem_chain(proxy) if proxy is not None else [],
            "client_cert_error": None,
        }
    }
    return scope


def wsgi_status(mw: Any, environ: dict[str, Any]) -> str:
    """Call WSGI middleware ``mw``; the status line it answered with."""
    seen: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        seen.append(status)
        return lambda data: None

    for _ in mw(environ, start_response):
        pass
    return seen[0]


def seen_cf(app: RecordingApp) -> list[bytes]:
    return [v for n, v in app.scopes[-1]["headers"] if n.replace(b"_", b"-") == CF]


def test_valid_proxy_certificate_headers_honoured(
    pki: PKI, proxy_ca: CA, proxy_cert: IssuedCert
) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, proxy_gate(pki, proxy_ca))
    client = pki["globex"].client("through-proxy")
    result = run_http(mw, forwarded_scope(client, proxy_cert))
    assert result.status == 200
    identity = app.scope[DECISION_KEY].identity
    assert identity is not None
    assert identity.common_name == "through-proxy"  # the forwarded client, never the proxy
    assert identity.source == "cloudflare"


def _bad_proxies(pki: PKI, proxy_ca: CA) -> dict[str, IssuedCert | None]:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    return {
        "no-proxy-certificate": None,
        "other-ca": pki.rogue.issue("front-proxy"),
        "tenant-ca": pki["globex"].client("front-proxy"),
        "expired": proxy_ca.issue(
            "front-proxy", not_before=long_ago, not_after=long_ago + dt.timedelta(days=1)
        ),
        "no-eku": proxy_ca.issue("front-proxy", eku=None),
    }


@pytest.mark.parametrize(
    "case", ["no-proxy-certificate", "other-ca", "tenant-ca", "expired", "no-eku"]
)
def test_failed_proxy_certificate_headers_stripped_and_not_believed(
    pki: PKI, proxy_ca: CA, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = _bad_proxies(pki, proxy_ca)[case]
    app = RecordingApp()
    mw = CertGateMiddleware(app, proxy_gate(pki, proxy_ca, access="optional"))
    client = pki["globex"].client("forged")
    with caplog.at_level(logging.WARNING, logger="certgate"):
        result = run_http(mw, forwarded_scope(client, proxy))
    if proxy is not None and case == "tenant-ca":
        # the peer's own certificate is a valid client of the tenant: it is
        # that client, not a proxy - never the forwarded identity
        assert result.status == 200
        identity = app.scope[DECISION_KEY].identity
        assert identity is not None
        assert identity.common_name == "front-proxy"
        assert identity.source == "asgi_tls"
    elif proxy is not None:
        assert result.status == 403  # its transport certificate is no tenant's client
    else:
        assert result.status == 200  # optional path: anonymous
        assert app.scope[DECISION_KEY].identity is None
    if app.scopes:
        assert seen_cf(app) == []
    stripped = [r.getMessage() for r in caplog.records if "removed forwarded" in r.getMessage()]
    assert stripped
    assert "proxy authentication failed" in stripped[0]


def test_proxy_names_match_cn_dns_or_uri_exactly(
    pki: PKI, proxy_ca: CA, proxy_cert: IssuedCert
) -> None:
    client = pki["globex"].client("named")
    dns_proxy = proxy_ca.issue("edge-7", dns=["proxy.edge.internal"])
    for names, proxy, ok in [
        (["front-proxy"], proxy_cert, True),  # subject CN
        (["spiffe://cluster.local/ns/edge/sa/proxy"], proxy_cert, True),  # URI SAN
        (["proxy.edge.internal"], dns_proxy, True),  # DNS SAN
        (["front-prox"], proxy_cert, False),  # exact, not a prefix
        (["FRONT-PROXY"], proxy_cert, False),  # exact, not case-folded
        (["spiffe://cluster.local/ns/edge/sa"], proxy_cert, False),
        (["edge-8"], dns_proxy, False),
    ]:
        app = RecordingApp()
        mw = CertGateMiddleware(app, proxy_gate(pki, proxy_ca, proxy_names=names))
        result = run_http(mw, forwarded_scope(client, proxy))
        assert (result.status == 200) is ok, (names, result.status)
        if ok:
            assert app.scope[DECISION_KEY].identity.common_name == "named"


def test_proxy_ca_combined_with_trusted_proxies_needs_both(
    pki: PKI, proxy_ca: CA, proxy_cert: IssuedCert
) -> None:
    gate = proxy_gate(pki, proxy_ca, trusted_proxies=["10.0.0.0/8"])
    client = pki["globex"].client("both")
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    assert run_http(mw, forwarded_scope(client, proxy_cert)).status == 200
    # the right certificate from outside the ranges: not a proxy
    result = run_http(mw, forwarded_scope(client, proxy_cert, OTHER_PEER))
    assert result.status == 403
    assert seen_cf(app) == [] if len(app.scopes) > 1 else True
    # inside the ranges without the certificate: not a proxy
    assert run_http(mw, forwarded_scope(client, None)).status == 403
    assert len(app.scopes) == 1


def test_same_peer_switching_never_carries_trust_over_in_the_memo(
    pki: PKI, proxy_ca: CA, proxy_cert: IssuedCert
) -> None:
    """The same IP sends the same forwarded header over a proxy-authenticated
    connection (remembered allow), then over one without or with a bad proxy
    certificate, then authenticated again: the memo must follow each."""
    gate = proxy_gate(pki, proxy_ca)
    assert gate.remembers()
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    client = pki["globex"].client("switching")
    for _ in range(3):  # remembered from the second on
        assert run_http(mw, forwarded_scope(client, proxy_cert)).status == 200
    assert any(entry is not None for entry in (gate._memo or {}).values())
    for proxy in (None, pki.rogue.issue("front-proxy"), proxy_ca.issue("front-proxy", eku=None)):
        before = len(app.scopes)
        result = run_http(mw, forwarded_scope(client, proxy))
        assert result.status == 403, proxy
        assert len(app.scopes) == before
    assert run_http(mw, forwarded_scope(client, proxy_cert)).status == 200
    assert app.scopes[-1][DECISION_KEY].identity.common_name == "switching"


def test_same_peer_switching_in_the_facts_memo_key(
    pki: PKI, proxy_ca: CA, proxy_cert: IssuedCert
) -> None:
    """The gate's own memo key (adapters passing none, e.g. WSGI) too."""
    gate = proxy_gate(pki, proxy_ca, trust_reported_peer=True)
    calls: list[dict[str, Any]] = []

    def app(environ: Any, start_response: Any) -> Any:
        calls.append(dict(environ))
        start_response("200 OK", [])
        return [b"ok"]

    mw = CertGateWSGIMiddleware(app, gate)
    client = pki["globex"].client("wsgi-switching")

    def environ(proxy: IssuedCert | None) -> dict[str, Any]:
        env: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "HTTP_HOST": HOST,
            "REMOTE_ADDR": PROXY_PEER[0],
            "wsgi.url_scheme": "https",
            "HTTP_CF_CLIENT_CERT_DER_BASE64": base64.b64encode(client.der).decode(),
        }
        if proxy is not None:
            env["SSL_CLIENT_CERT"] = proxy.cert_pem.decode()
        return env

    def status(proxy: IssuedCert | None) -> str:
        return wsgi_status(mw, environ(proxy))

    for _ in range(3):
        assert status(proxy_cert).startswith("200")
    assert status(None).startswith("403")
    assert status(pki.rogue.issue("front-proxy")).startswith("403")
    assert len(calls) == 3
    assert all("HTTP_CF_CLIENT_CERT_DER_BASE64" in c for c in calls)


def test_proxy_certificate_verdict_is_cached_by_digest_without_exceptions(
    pki: PKI, proxy_ca: CA, proxy_cert: IssuedCert
) -> None:
    gate = proxy_gate(pki, proxy_ca)
    auth = gate.trust.proxy_auth
    assert auth is not None
    mw = CertGateMiddleware(RecordingApp(), gate)
    client = pki["globex"].client("cached")
    for proxy in (proxy_cert, pki.rogue.issue("front-proxy"), proxy_cert):
        run_http(mw, forwarded_scope(client, proxy))
    assert len(auth._verdicts) == 2
    for verdict in auth._verdicts.values():
        assert all(isinstance(v, bool | str | float | type(None)) for v in verdict)


def test_proxy_config_errors(pki: PKI, proxy_ca: CA, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="proxy_names is set but proxy_ca is not"):
        CertGate(pki.registry(), header_sources=["cloudflare"], proxy_names=["x"])
    with pytest.raises(ConfigError, match="proxy_ca is set but no header source"):
        CertGate(pki.registry(), proxy_ca=[proxy_ca.cert])
    with pytest.raises(ConfigError, match="proxy_ca"):
        CertGate(pki.registry(), header_sources=["cloudflare"], proxy_ca=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="trust_unix_socket is on but no header source"):
        CertGate(pki.registry(), trust_unix_socket=True)


def test_proxy_ca_from_toml(pki: PKI, proxy_ca: CA, proxy_cert: IssuedCert, tmp_path: Path) -> None:
    globex = pki["globex"]
    (tmp_path / "globex.pem").write_bytes(globex.roots[0].cert_pem)
    (tmp_path / "proxy-ca.pem").write_bytes(proxy_ca.cert_pem)
    (tmp_path / "certgate.toml").write_text(
        "[certgate]\n"
        'header_sources = ["cloudflare"]\n'
        'proxy_ca = "proxy-ca.pem"\n'
        'proxy_names = ["front-proxy"]\n'
        "trust_unix_socket = false\n"
        '[[tenants]]\nid = "globex"\nhosts = ["api.globex.test"]\nroots = ["globex.pem"]\n'
    )
    gate = CertGate.from_toml(tmp_path / "certgate.toml")
    mw = CertGateMiddleware(RecordingApp(), gate)
    client = globex.client("toml")
    assert run_http(mw, forwarded_scope(client, proxy_cert)).status == 200
    assert run_http(mw, forwarded_scope(client, proxy_ca.issue("other-name"))).status == 403


# -- unix-socket peers -----------------------------------------------------


def unix_scope(client: IssuedCert) -> Any:
    scope = http_scope(host=HOST, headers=[(CF, base64.b64encode(client.der))], client=None)
    scope["scheme"] = "http"
    scope["certgate.socket_peer"] = ("unix:", 0)
    return scope


def test_unix_socket_peer_needs_the_opt_in(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    client = pki["globex"].client("over-unix")
    app = RecordingApp()
    gate = CertGate(pki.registry(), trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])
    mw = CertGateMiddleware(app, gate)
    with caplog.at_level(logging.WARNING, logger="certgate"):
        for _ in range(3):
            assert run_http(mw, unix_scope(client)).status == 403
    assert app.scopes == []
    hints = [r.getMessage() for r in caplog.records if "unix socket" in r.getMessage()]
    assert len(hints) == 1  # once
    assert "trust_unix_socket = true" in hints[0]

    app = RecordingApp()
    opted = CertGate(pki.registry(), trust_unix_socket=True, header_sources=["cloudflare"])
    mw = CertGateMiddleware(app, opted)
    for _ in range(3):
        assert run_http(mw, unix_scope(client)).status == 200
    assert app.scopes[-1][DECISION_KEY].identity.common_name == "over-unix"


def test_unix_socket_opt_in_does_not_trust_ip_peers(pki: PKI) -> None:
    opted = CertGate(pki.registry(), trust_unix_socket=True, header_sources=["cloudflare"])
    client = pki["globex"].client("over-tcp")
    scope = unix_scope(client)
    scope["certgate.socket_peer"] = ("127.0.0.1", 5000)
    assert run_http(CertGateMiddleware(RecordingApp(), opted), scope).status == 403


def test_wsgi_unix_socket_peer(pki: PKI, tmp_path: Path) -> None:
    from certgate.wsgi import socket_peer

    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    client_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client_sock.connect(path)
    conn, _ = server.accept()
    try:
        assert socket_peer({"gunicorn.socket": conn}) == "unix:"
        client = pki["globex"].client("wsgi-unix")
        env = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "HTTP_HOST": HOST,
            "wsgi.url_scheme": "http",
            "werkzeug.socket": conn,
            "HTTP_CF_CLIENT_CERT_DER_BASE64": base64.b64encode(client.der).decode(),
        }
        seen: list[str] = []

        def app(environ: Any, start_response: Any) -> Any:
            start_response("200 OK", [])
            return [b"ok"]

        plain = CertGate(
            pki.registry(), trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"]
        )
        seen.append(wsgi_status(CertGateWSGIMiddleware(app, plain), dict(env)))
        opted = CertGate(pki.registry(), trust_unix_socket=True, header_sources=["cloudflare"])
        seen.append(wsgi_status(CertGateWSGIMiddleware(app, opted), dict(env)))
        assert seen[0].startswith("403")
        assert seen[1].startswith("200")
    finally:
        for s in (conn, client_sock, server):
            s.close()
