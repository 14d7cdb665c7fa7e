"""No silent misconfiguration (issue 8): with the transport source on, a
server that exposes no TLS information, or a TLS server that does not ask
for a client certificate, is reported once, loudly, with the fix."""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from certgate import CertGate
from certgate.asgi import CertGateMiddleware
from certgate.devpki import CA
from certgate.wsgi import CertGateWSGIMiddleware
from tests.conftest import PKI
from tests.test_asgi import RecordingApp, http_scope, run_http
from tests.test_trust_proxy_auth import wsgi_status


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


@pytest.mark.parametrize("scheme", ["https", "wss"])
def test_asgi_tls_without_tls_extension_warns_once(
    pki: PKI, caplog: pytest.LogCaptureFixture, scheme: str
) -> None:
    """Plain uvicorn (or its gunicorn worker) serving TLS: https scopes with
    no tls extension and no certgate adapter - every certificate absent."""
    mw = CertGateMiddleware(RecordingApp(), CertGate(pki.registry()))
    with caplog.at_level(logging.WARNING, logger="certgate"):
        for _ in range(3):
            scope = http_scope()
            scope["scheme"] = scheme
            assert run_http(mw, scope).status == 403
    found = _warnings(caplog, "exposes no TLS information")
    assert len(found) == 1
    assert "certgate.servers.uvicorn" in found[0]  # the fix


def test_asgi_not_requested_warns_once(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    mw = CertGateMiddleware(RecordingApp(), CertGate(pki.registry()))
    with caplog.at_level(logging.WARNING, logger="certgate"):
        for _ in range(3):
            scope = http_scope(tls_chain=[])
            scope["extensions"]["tls"]["certgate.client_cert_requested"] = False
            scope["certgate.socket_peer"] = ("203.0.113.7", 5000)
            assert run_http(mw, scope).status == 403
    found = _warnings(caplog, "does not request client certificates")
    assert len(found) == 1
    assert "--ssl-cert-reqs 1" in found[0]


@pytest.mark.parametrize(
    "case", ["plain-http", "adapter-plain-connection", "requested", "transport-off"]
)
def test_asgi_no_warning_when_configured(
    pki: PKI, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    gate = CertGate(pki.registry(), transport=case != "transport-off")
    scope = http_scope(tls_chain=[] if case == "requested" else None)
    if case == "plain-http":
        scope["scheme"] = "http"
    if case == "adapter-plain-connection":  # https from X-Forwarded-Proto, adapter present
        scope["certgate.socket_peer"] = ("203.0.113.7", 5000)
    if case == "requested":
        scope["extensions"]["tls"]["certgate.client_cert_requested"] = True
    with caplog.at_level(logging.WARNING, logger="certgate"):
        run_http(CertGateMiddleware(RecordingApp(), gate), scope)
    assert _warnings(caplog, "certgate: the") == []


def _environ(**extra: Any) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "HTTP_HOST": "api.globex.test",
        "wsgi.url_scheme": "https",
        **extra,
    }


def test_wsgi_https_without_tls_information_warns_once(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    """gunicorn's plain socket with an https scheme, no SSL_* variable."""
    left, right = socket.socketpair()
    try:
        mw = CertGateWSGIMiddleware(lambda e, s: [], CertGate(pki.registry()))
        with caplog.at_level(logging.WARNING, logger="certgate"):
            for _ in range(3):
                assert wsgi_status(mw, _environ(**{"gunicorn.socket": left})).startswith("403")
        found = _warnings(caplog, "exposes no TLS information")
        assert len(found) == 1
        assert "cert_reqs = 1" in found[0]
        caplog.clear()
        quiet = CertGateWSGIMiddleware(lambda e, s: [], CertGate(pki.registry()))
        with caplog.at_level(logging.WARNING, logger="certgate"):
            wsgi_status(quiet, _environ(SSL_PROTOCOL="TLSv1.3"))  # mod_wsgi, no client cert
            wsgi_status(quiet, _environ(**{"wsgi.url_scheme": "http"}))
        assert _warnings(caplog, "certgate: the") == []
    finally:
        left.close()
        right.close()


def test_wsgi_tls_socket_not_requesting_warns_once(
    pki: PKI, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A real TLS server socket whose context has verify_mode CERT_NONE
    (Werkzeug's ``ssl_context=(cert, key)`` tuple form)."""
    server_cert = CA.root("srv").server(["127.0.0.1"])
    files = server_cert.write_files(tmp_path, "srv")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files["cert"], files["key"])
    raw = socket.socket()
    sock = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
    try:
        mw = CertGateWSGIMiddleware(lambda e, s: [], CertGate(pki.registry()))
        with caplog.at_level(logging.WARNING, logger="certgate"):
            for _ in range(3):
                assert wsgi_status(mw, _environ(**{"werkzeug.socket": sock})).startswith("403")
        found = _warnings(caplog, "does not request client certificates")
        assert len(found) == 1
        assert "client_auth_context" in found[0]
    finally:
        sock.close()
