"""Starlette: the authentication backend (``request.user``, ``request.auth``,
``@requires``) and the ``@require_client_cert`` endpoint decorator, through
Starlette's TestClient and the real middleware (certificates presented as the
ASGI TLS extension by certgate.testing)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from certgate import CertGate, ClientIdentity, Reason
from certgate.asgi import CertGateMiddleware
from certgate.errors import ServerSetupError
from certgate.policy import Policy
from certgate.rollout import Access
from certgate.rollout import Route as GateRoute
from certgate.starlette import (
    CertificateAuthBackend,
    CertificateUser,
    get_identity,
    require_client_cert,
)
from certgate.testing import TestCertificate, TestPKI, with_client_cert
from tests.policies import CommonName

OPS = CommonName("ops-console")


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture(scope="module")
def alice(pki: TestPKI) -> TestCertificate:
    return pki.issue_client("alice")


@pytest.fixture(scope="module")
def ops(pki: TestPKI) -> TestCertificate:
    return pki.issue_client("ops-console")


def _user(request: Request) -> JSONResponse:
    user = request.user
    return JSONResponse(
        {
            "authenticated": user.is_authenticated,
            "name": user.display_name,
            "scopes": request.auth.scopes,
            "fingerprint": user.identity if isinstance(user, CertificateUser) else None,
        }
    )


@requires("admin")
async def admin(request: Request) -> JSONResponse:
    return JSONResponse({"admin": request.user.display_name})


@require_client_cert()
async def cert_only(request: Request) -> JSONResponse:
    identity = get_identity(request)
    return JSONResponse({"cn": identity.common_name if identity else None})


@require_client_cert(OPS)
def ops_sync(request: Request) -> JSONResponse:
    identity = get_identity(request)
    return JSONResponse({"cn": identity.common_name if identity else None})


class OpsEndpoint(HTTPEndpoint):
    @require_client_cert(OPS)
    async def get(self, request: Request) -> Response:
        return JSONResponse({"endpoint": True})


@require_client_cert(OPS)
async def ops_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    identity = get_identity(websocket)
    await websocket.send_json({"cn": identity.common_name if identity else None})
    await websocket.close()


def _app(gate: CertGate | None, *, backend: bool = True) -> Starlette:
    middleware = []
    if gate is not None:
        middleware.append(Middleware(CertGateMiddleware, gate=gate))
    if backend:
        scopes = {"admin": OPS, "alice": CommonName("alice")}
        middleware.append(
            Middleware(AuthenticationMiddleware, backend=CertificateAuthBackend(scopes))
        )
    routes = [
        Route("/user", _user),
        Route("/admin", admin),
        Route("/cert", cert_only),
        Route("/ops", ops_sync),
        Route("/ops-endpoint", OpsEndpoint),
        Route("/strict/user", _user),
        WebSocketRoute("/ws", ops_ws),
    ]
    return Starlette(routes=routes, middleware=middleware)


def _gate(pki: TestPKI, **kwargs: Any) -> CertGate:
    kwargs.setdefault("access", "optional")
    return pki.gate(routes=[GateRoute("/strict/*", access=Access.REQUIRE)], **kwargs)


def _client(app: Any, cert: TestCertificate | None) -> TestClient:
    return TestClient(with_client_cert(app, cert) if cert is not None else app)


def test_backend_user_and_scopes(
    pki: TestPKI, alice: TestCertificate, ops: TestCertificate
) -> None:
    app = _app(_gate(pki))
    body = _client(app, alice).get("/user").json()
    assert body == {
        "authenticated": True,
        "name": "alice",
        "scopes": ["authenticated", "client_cert", "alice"],
        "fingerprint": alice.fingerprint,
    }
    assert _client(app, ops).get("/user").json()["scopes"] == [
        "authenticated",
        "client_cert",
        "admin",
    ]
    anonymous = _client(app, None).get("/user").json()
    assert anonymous == {"authenticated": False, "name": "", "scopes": [], "fingerprint": None}


def test_requires_uses_policy_scopes(
    pki: TestPKI, alice: TestCertificate, ops: TestCertificate
) -> None:
    app = _app(_gate(pki))
    assert _client(app, ops).get("/admin").json() == {"admin": "ops-console"}
    assert _client(app, alice).get("/admin").status_code == 403
    assert _client(app, None).get("/admin").status_code == 403


def test_backend_policy_that_raises_grants_nothing(pki: TestPKI, alice: TestCertificate) -> None:
    class Broken(Policy):
        def __init__(self) -> None:
            object.__setattr__(self, "label", "broken")

        def check(self, identity: ClientIdentity, now: datetime) -> str | None:
            raise RuntimeError("bug")

    app = Starlette(
        routes=[Route("/user", _user)],
        middleware=[
            Middleware(CertGateMiddleware, gate=_gate(pki)),
            Middleware(AuthenticationMiddleware, backend=CertificateAuthBackend({"x": Broken()})),
        ],
    )
    assert _client(app, alice).get("/user").json()["scopes"] == ["authenticated", "client_cert"]


def test_decorator_refusal_is_the_middlewares_refusal(
    pki: TestPKI, alice: TestCertificate, ops: TestCertificate
) -> None:
    gate = _gate(pki)
    app = _app(gate)
    # The middleware's own refusal on a require path, for comparison.
    middleware = _client(app, None).get("/strict/user")
    assert middleware.status_code == 403
    decorator = _client(app, None).get("/cert")
    assert decorator.status_code == 403
    assert decorator.content == middleware.content
    assert decorator.headers["content-type"] == "application/problem+json"
    assert decorator.headers["certgate-reason"] == "no_certificate"
    assert decorator.content == gate.refusal(Reason.NO_CERTIFICATE).body
    assert _client(app, alice).get("/cert").json() == {"cn": "alice"}


def test_decorator_policy_denied_logs_the_rule_not_the_client(
    pki: TestPKI, alice: TestCertificate, ops: TestCertificate, caplog: pytest.LogCaptureFixture
) -> None:
    gate = _gate(pki)
    app = _app(gate)
    caplog.set_level(logging.INFO, logger="certgate")
    for path in ("/ops", "/ops-endpoint"):
        refused = _client(app, alice).get(path)
        assert refused.status_code == 403, path
        assert refused.json()["reason"] == "policy_denied"
        assert refused.content == gate.refusal(Reason.POLICY_DENIED).body
        assert b"secret-rule-text" not in refused.content
        assert b"common_name" not in refused.content
    logged = "\n".join(r.getMessage() + repr(getattr(r, "certgate", "")) for r in caplog.records)
    assert "secret-rule-text" in logged
    assert _client(app, ops).get("/ops").json() == {"cn": "ops-console"}
    assert _client(app, ops).get("/ops-endpoint").json() == {"endpoint": True}


def test_decorator_on_websockets(
    pki: TestPKI, alice: TestCertificate, ops: TestCertificate
) -> None:
    gate = _gate(pki)
    app = _app(gate)
    with _client(app, ops).websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"cn": "ops-console"}
    # Refused before accept, with the gate's refusal as the handshake answer.
    from starlette.testclient import WebSocketDenialResponse

    with (
        pytest.raises(WebSocketDenialResponse) as denied,
        _client(app, alice).websocket_connect("/ws"),
    ):
        pass
    assert denied.value.status_code == 403
    assert denied.value.content == gate.refusal(Reason.POLICY_DENIED).body
    with (
        pytest.raises(WebSocketDenialResponse) as anonymous,
        _client(app, None).websocket_connect("/ws"),
    ):
        pass
    assert anonymous.value.headers["certgate-reason"] == "no_certificate"


def test_websocket_refusal_without_the_http_response_extension_closes_1008(
    pki: TestPKI, alice: TestCertificate
) -> None:
    inner = _app(_gate(pki))

    async def no_denial_extension(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope = dict(scope)
            scope["extensions"] = {
                k: v for k, v in scope["extensions"].items() if k != "websocket.http.response"
            }
        await inner(scope, receive, send)

    client = TestClient(with_client_cert(no_denial_extension, alice))
    with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/ws"):
        pass
    assert closed.value.code == 1008
    assert closed.value.reason == "policy_denied"


def test_report_only_never_blocks_then_enforce_at_run_time(
    pki: TestPKI, alice: TestCertificate
) -> None:
    gate = _gate(pki, mode="report")
    app = _app(gate)
    assert _client(app, alice).get("/ops").json() == {"cn": "alice"}  # policy fails: reported
    assert _client(app, None).get("/cert").json() == {"cn": None}  # no certificate: reported
    with _client(app, alice).websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"cn": "alice"}
    gate.rollout.set_mode("enforce")
    assert _client(app, alice).get("/ops").json()["reason"] == "policy_denied"
    assert _client(app, None).get("/cert").json()["reason"] == "no_certificate"


def test_refusal_format_text_is_used_by_the_decorator(pki: TestPKI, alice: TestCertificate) -> None:
    gate = _gate(pki, refusal_format="text")
    refused = _client(_app(gate), alice).get("/ops")
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "text/plain; charset=utf-8"
    assert (
        refused.text
        == "403 Forbidden: policy_denied - The client certificate is not allowed here\n"
    )


def test_decorator_without_middleware_refuses_and_logs(
    alice: TestCertificate, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app(None, backend=False)
    with caplog.at_level(logging.ERROR, logger="certgate"):
        refused = _client(app, alice).get("/cert")
    assert refused.status_code == 403
    assert refused.json()["reason"] == "internal_error"
    assert any("without certgate's middleware" in r.getMessage() for r in caplog.records)


def test_decorator_needs_a_request_argument() -> None:
    with pytest.raises(ServerSetupError, match="'request' or 'websocket'"):

        @require_client_cert()
        async def endpoint(req: Request) -> Response:  # pragma: no cover - never called
            return Response()
