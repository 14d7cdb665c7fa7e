"""A repeated single-valued certificate header from a trusted proxy is an
attack signal (a proxy that appended its header to a client's forged one):
403 ``malformed_header`` on every path that reads certificates (require and
optional), ASGI and WSGI. Exempt paths read nothing and pass."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from certgate import CertGate, Reason
from certgate.asgi import CertGateMiddleware
from certgate.rollout import Route
from certgate.wsgi import CertGateWSGIMiddleware
from tests.conftest import PKI
from tests.test_asgi import RecordingApp, http_scope, run_http
from tests.test_trust_proxy_auth import wsgi_status

CF = b"cf-client-cert-der-base64"


def gate(pki: PKI) -> CertGate:
    return CertGate(
        pki.registry(),
        trusted_proxies=["10.0.0.0/8"],
        header_sources=["cloudflare"],
        exempt_paths=["/healthz"],
        routes=[Route("/opt/*", access="optional")],
    )


@pytest.mark.parametrize(("path", "status"), [("/", 403), ("/opt/x", 403), ("/healthz", 200)])
@pytest.mark.parametrize("second", [b"cf-client-cert-der-base64", b"CF-Client-Cert-Der-Base64"])
def test_asgi_repeated_header(pki: PKI, path: str, status: int, second: bytes) -> None:
    good = base64.b64encode(pki["globex"].client("good").der)
    forged = base64.b64encode(pki["globex"].client("forged").der)
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate(pki))
    for _ in range(3):  # also after the memo could have remembered something
        scope = http_scope(path=path, headers=[(CF, good)])
        scope["certgate.socket_peer"] = ("10.1.2.3", 5000)
        assert run_http(mw, scope).status == 200
    scope = http_scope(path=path, headers=[(second, forged), (CF, good)])
    scope["certgate.socket_peer"] = ("10.1.2.3", 5000)
    result = run_http(mw, scope)
    assert result.status == status
    if status == 403:
        assert result.reason == Reason.MALFORMED_HEADER.value


@pytest.mark.parametrize(("path", "status"), [("/", "403"), ("/opt/x", "403"), ("/healthz", "200")])
def test_wsgi_repeated_header_folded_by_the_server(pki: PKI, path: str, status: str) -> None:
    """WSGI servers fold a repeated header into one comma-joined value."""
    good = base64.b64encode(pki["globex"].client("good").der).decode()
    forged = base64.b64encode(pki["globex"].client("forged").der).decode()

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        return [b"ok"]

    mw = CertGateWSGIMiddleware(app, gate(pki))
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "HTTP_HOST": "api.globex.test",
        "REMOTE_ADDR": "10.1.2.3",
        "HTTP_CF_CLIENT_CERT_DER_BASE64": f"{forged},{good}",
    }
    mw.gate.trust.trust_reported_peer = True
    assert wsgi_status(mw, environ).startswith(status)
