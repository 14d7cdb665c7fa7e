"""Well-known proxy certificate headers never reach the app from untrusted peers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from certgate import CertGate
from certgate.asgi import CertGateMiddleware, Message, Scope
from certgate.sources.known_headers import KNOWN_CERTIFICATE_HEADERS
from certgate.wsgi import CertGateWSGIMiddleware, Environ, StartResponse

FORGED = [
    (b"x-ssl-client-verify", b"SUCCESS"),
    (b"x-forwarded-client-cert", b"By=spiffe://x;Hash=00"),
    (b"client-cert", b":AAAA:"),
    (b"x_ssl_client_verify", b"SUCCESS"),  # underscore spelling of the same header
    (b"x-request-id", b"keep-me"),
]


def _run_asgi(gate: CertGate, peer: str) -> list[tuple[bytes, bytes]]:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        return None

    scope: Scope = {
        "type": "http",
        "path": "/healthz",
        "headers": [(b"host", b"pay.acme.test"), *FORGED],
        "client": (peer, 5000),
        "certgate.socket_peer": (peer, 5000),  # as certgate's uvicorn adapter records it
    }
    asyncio.run(CertGateMiddleware(app, gate)(scope, receive, send))
    assert len(seen) == 1
    return list(seen[0]["headers"])


def _run_wsgi(gate: CertGate, peer: str) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seen.append(dict(environ))
        start_response("200 OK", [])
        return [b""]

    environ: dict[str, Any] = {
        "PATH_INFO": "/healthz",
        "HTTP_HOST": "pay.acme.test",
        "REMOTE_ADDR": peer,
        "HTTP_X_SSL_CLIENT_VERIFY": "SUCCESS",
        "HTTP_X_FORWARDED_CLIENT_CERT": "By=spiffe://x;Hash=00",
        "HTTP_X_REQUEST_ID": "keep-me",
    }
    start: Callable[..., Any] = lambda *args: None  # noqa: E731
    CertGateWSGIMiddleware(app, gate)(environ, start)
    assert len(seen) == 1
    return seen[0]


@pytest.fixture
def gates(make_gate: Callable[..., CertGate]) -> dict[str, CertGate]:
    return {
        "default": make_gate(exempt_paths=["/healthz"]),
        "proxied": make_gate(
            exempt_paths=["/healthz"],
            trusted_proxies=["10.0.0.0/8"],
            header_sources=["cloudflare"],
            trust_reported_peer=True,
        ),
        "off": make_gate(exempt_paths=["/healthz"], strip_known_headers=False),
    }


def test_known_list_covers_every_documented_format() -> None:
    for name in (
        "cf-client-cert-der-base64",
        "client-cert",
        "client-cert-chain",
        "x-forwarded-client-cert",
        "x-forwarded-tls-client-cert",
        "x-amzn-mtls-clientcert",
        "x-arr-clientcert",
        "ssl-client-verify",
    ):
        assert name in KNOWN_CERTIFICATE_HEADERS


def test_asgi_untrusted_peer_loses_all_known_headers(gates: dict[str, CertGate]) -> None:
    headers = _run_asgi(gates["default"], "203.0.113.9")
    assert headers == [(b"host", b"pay.acme.test"), (b"x-request-id", b"keep-me")]


def test_asgi_trusted_proxy_keeps_them_but_not_underscore_aliases(
    gates: dict[str, CertGate],
) -> None:
    headers = dict(_run_asgi(gates["proxied"], "10.1.2.3"))
    assert headers[b"x-ssl-client-verify"] == b"SUCCESS"
    assert headers[b"client-cert"] == b":AAAA:"
    assert b"x_ssl_client_verify" not in headers


def test_asgi_strip_known_headers_off_keeps_unconfigured_ones(gates: dict[str, CertGate]) -> None:
    headers = dict(_run_asgi(gates["off"], "203.0.113.9"))
    assert headers[b"x-ssl-client-verify"] == b"SUCCESS"


def test_wsgi_untrusted_peer_loses_all_known_headers(gates: dict[str, CertGate]) -> None:
    environ = _run_wsgi(gates["default"], "203.0.113.9")
    assert "HTTP_X_SSL_CLIENT_VERIFY" not in environ
    assert "HTTP_X_FORWARDED_CLIENT_CERT" not in environ
    assert environ["HTTP_X_REQUEST_ID"] == "keep-me"


def test_wsgi_trusted_proxy_keeps_them(gates: dict[str, CertGate]) -> None:
    environ = _run_wsgi(gates["proxied"], "10.1.2.3")
    assert environ["HTTP_X_SSL_CLIENT_VERIFY"] == "SUCCESS"


def test_removal_is_logged(gates: dict[str, CertGate], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="certgate"):
        _run_asgi(gates["default"], "203.0.113.9")
    messages = [r.getMessage() for r in caplog.records if r.name == "certgate"]
    assert any("x-ssl-client-verify" in m and "203.0.113.9" in m for m in messages)


def test_exempt_requests_never_carry_an_identity_set_upstream(
    gates: dict[str, CertGate], pki: Any
) -> None:
    """Only certgate puts an identity on a request: one planted by anything in
    front of it is removed on exempt paths, where certgate verified nothing."""
    from certgate.asgi import IDENTITY_KEY as ASGI_KEY
    from certgate.wsgi import IDENTITY_KEY as WSGI_KEY

    planted = gates["default"].check("pay.acme.test", pki["acme"].client().chain_ders).identity
    assert planted is not None
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope)

    scope: Scope = {
        "type": "http",
        "path": "/healthz",
        "headers": [],
        "client": ("1.2.3.4", 1),
        ASGI_KEY: planted,
    }

    async def noop() -> Message:
        return {}

    async def send(message: Message) -> None:
        return None

    asyncio.run(CertGateMiddleware(app, gates["default"])(scope, noop, send))
    assert ASGI_KEY not in seen[0]

    environs: list[Environ] = []

    def wsgi_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        environs.append(environ)
        return [b""]

    environ: Environ = {"PATH_INFO": "/healthz", "REMOTE_ADDR": "1.2.3.4", WSGI_KEY: planted}
    start: Callable[..., Any] = lambda *args: None  # noqa: E731
    CertGateWSGIMiddleware(wsgi_app, gates["default"])(environ, start)
    assert WSGI_KEY not in environs[0]
