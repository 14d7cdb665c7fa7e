"""FastAPI: async dependencies, policy dependencies with Depends and Security,
one refusal format, report-only, the installer, the OpenAPI ``mutualTLS``
scheme and dependency overrides - through FastAPI's TestClient with the real
middleware, and one real uvicorn server over real TLS."""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from examples.devenv import DevEnv, make_dev_environment
from fastapi import APIRouter, Depends, FastAPI, Security, WebSocket
from fastapi.security import OAuth2PasswordBearer
from fastapi.testclient import TestClient
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

import certgate.starlette
from certgate import CertGate, ClientIdentity, Reason
from certgate.asgi import CertGateMiddleware
from certgate.errors import ServerSetupError
from certgate.events import DecisionEvent, ExpiryEvent
from certgate.fastapi import (
    RequireClientCert,
    certificate_operations,
    client_identity,
    install,
    mutual_tls_openapi,
    optional_client_identity,
    require_client_cert,
)
from certgate.rollout import Access
from certgate.rollout import Route as GateRoute
from certgate.testing import (
    TestCertificate,
    TestPKI,
    fake_identity,
    override_identity,
    with_client_cert,
)
from tests.policies import CommonName
from tests.servers import free_port, serve

ops_only = require_client_cert(CommonName("ops-console"))
oauth2 = OAuth2PasswordBearer(tokenUrl="token", auto_error=False)


def build_app() -> FastAPI:
    """Public and certificate-only routes side by side (no middleware)."""
    app = FastAPI()

    @app.get("/")
    async def home(identity: ClientIdentity | None = Depends(optional_client_identity)) -> Any:  # noqa: B008
        return {"who": identity.common_name if identity else None}

    @app.get("/whoami")
    async def whoami(identity: ClientIdentity | None = Depends(client_identity)) -> Any:  # noqa: B008
        return {"who": identity.common_name if identity else None}

    @app.post("/ops")
    async def ops(identity: ClientIdentity | None = Security(ops_only)) -> Any:  # noqa: B008
        return {"ops": identity.common_name if identity else None}

    @app.get("/ops/depends")
    def ops_sync_route(identity: ClientIdentity | None = Depends(ops_only)) -> Any:  # noqa: B008
        return {"ops": identity.common_name if identity else None}

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"ok": True}

    @app.get("/strict/plain")
    async def strict_plain() -> Any:
        return {"strict": True}

    @app.get("/both")
    async def both(
        token: str | None = Depends(oauth2),
        identity: ClientIdentity | None = Depends(client_identity),  # noqa: B008
    ) -> Any:
        return {"token": token}

    router = APIRouter(prefix="/team", dependencies=[Depends(client_identity)])

    @router.get("/list")
    async def team_list() -> Any:
        return []

    app.include_router(router)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, identity: ClientIdentity | None = Depends(ops_only)) -> None:  # noqa: B008
        await websocket.accept()
        await websocket.send_json({"ops": identity.common_name if identity else None})
        await websocket.close()

    return app


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture(scope="module")
def alice(pki: TestPKI) -> TestCertificate:
    return pki.issue_client("alice")


@pytest.fixture(scope="module")
def ops(pki: TestPKI) -> TestCertificate:
    return pki.issue_client("ops-console")


def _gate(pki: TestPKI, **kwargs: Any) -> CertGate:
    kwargs.setdefault("access", "optional")
    routes = [
        GateRoute("/strict/*", access=Access.REQUIRE),
        GateRoute("/healthz", access=Access.EXEMPT),
    ]
    return pki.gate(routes=routes, **kwargs)


def _installed(gate: CertGate) -> FastAPI:
    app = build_app()
    install(app, gate)
    return app


def _client(app: Any, cert: TestCertificate | None) -> TestClient:
    return TestClient(with_client_cert(app, cert) if cert is not None else app)


class Recorder:
    def __init__(self) -> None:
        self.events: list[DecisionEvent] = []
        self.threads: list[int] = []

    def on_decision(self, event: DecisionEvent) -> None:
        self.events.append(event)
        self.threads.append(threading.get_ident())

    def on_expiring(self, event: ExpiryEvent) -> None:
        pass


# -- async ----------------------------------------------------------------------


def test_dependencies_are_coroutine_functions() -> None:
    assert certgate.starlette.client_identity is client_identity
    assert inspect.iscoroutinefunction(client_identity)
    assert inspect.iscoroutinefunction(optional_client_identity)
    assert inspect.iscoroutinefunction(RequireClientCert.__call__)


def test_dependency_runs_on_the_event_loop_not_in_a_thread(
    pki: TestPKI, alice: TestCertificate
) -> None:
    recorder = Recorder()
    app = FastAPI()
    loop_threads: list[int] = []

    @app.get("/whoami")
    async def whoami(identity: ClientIdentity | None = Depends(client_identity)) -> Any:  # noqa: B008
        loop_threads.append(threading.get_ident())  # an async endpoint runs on the loop
        return {}

    install(app, _gate(pki, observers=[recorder]))
    assert _client(app, alice).get("/whoami").status_code == 200
    route_threads = [
        t for e, t in zip(recorder.events, recorder.threads, strict=True) if e.stage == "route"
    ]
    assert route_threads == loop_threads  # the dependency's check ran on the loop thread


# -- refusals --------------------------------------------------------------------


def test_mixed_public_and_certificate_routes(pki: TestPKI, alice: TestCertificate) -> None:
    app = _installed(_gate(pki))
    assert _client(app, None).get("/").json() == {"who": None}
    assert _client(app, alice).get("/").json() == {"who": "alice"}
    assert _client(app, alice).get("/whoami").json() == {"who": "alice"}
    refused = _client(app, None).get("/whoami")
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["reason"] == "no_certificate"
    # the same body as the middleware's own refusal on a require path
    assert refused.content == _client(app, None).get("/strict/plain").content
    assert _client(app, None).get("/team/list").json()["reason"] == "no_certificate"
    assert _client(app, None).get("/healthz").json() == {"ok": True}


def test_bad_certificate_on_a_public_route_is_refused(pki: TestPKI) -> None:
    app = _installed(_gate(pki))
    stranger = TestPKI("other").issue_client("alice")  # same CN, another PKI
    refused = _client(app, stranger).get("/")
    assert refused.status_code == 403
    assert refused.json()["reason"] == "untrusted_chain"


def test_policy_with_security_and_depends(
    pki: TestPKI, alice: TestCertificate, ops: TestCertificate, caplog: pytest.LogCaptureFixture
) -> None:
    gate = _gate(pki)
    app = _installed(gate)
    caplog.set_level(logging.INFO, logger="certgate")
    assert _client(app, ops).post("/ops").json() == {"ops": "ops-console"}
    assert _client(app, ops).get("/ops/depends").json() == {"ops": "ops-console"}
    for method, path in (("post", "/ops"), ("get", "/ops/depends")):
        refused = getattr(_client(app, alice), method)(path)
        assert refused.status_code == 403
        assert refused.content == gate.refusal(Reason.POLICY_DENIED).body
        assert refused.headers["certgate-reason"] == "policy_denied"
        assert b"secret-rule-text" not in refused.content
    logged = [r for r in caplog.records if "secret-rule-text" in repr(r.__dict__)]
    assert logged, "the failing rule must be in the log"


def test_policy_on_a_websocket(pki: TestPKI, alice: TestCertificate, ops: TestCertificate) -> None:
    from starlette.testclient import WebSocketDenialResponse

    gate = _gate(pki)
    app = _installed(gate)
    with _client(app, ops).websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"ops": "ops-console"}
    with (
        pytest.raises(WebSocketDenialResponse) as denied,
        _client(app, alice).websocket_connect("/ws"),
    ):
        pass
    assert denied.value.status_code == 403
    assert denied.value.content == gate.refusal(Reason.POLICY_DENIED).body


def test_report_only_never_blocks_then_enforce_at_run_time(
    pki: TestPKI, alice: TestCertificate
) -> None:
    gate = _gate(pki, mode="report")
    app = _installed(gate)
    assert _client(app, None).get("/whoami").json() == {"who": None}
    assert _client(app, alice).post("/ops").json() == {"ops": "alice"}  # policy fails: reported
    assert _client(app, None).get("/strict/plain").json() == {"strict": True}
    gate.rollout.set_mode("enforce")
    assert _client(app, None).get("/whoami").json()["reason"] == "no_certificate"
    assert _client(app, alice).post("/ops").json()["reason"] == "policy_denied"
    gate.rollout.set_mode("report", path="/ops")
    assert _client(app, alice).post("/ops").json() == {"ops": "alice"}


def test_refusal_format_text_for_dependency_refusals(pki: TestPKI, alice: TestCertificate) -> None:
    app = _installed(_gate(pki, refusal_format="text"))
    refused = _client(app, alice).post("/ops")
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "text/plain; charset=utf-8"
    assert refused.text.startswith("403 Forbidden: policy_denied")
    assert _client(app, None).get("/whoami").text.startswith("403 Forbidden: no_certificate")


class CatchAll:
    """A user middleware that turns every unknown exception into a 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception:  # noqa: BLE001
            await PlainTextResponse("oops", status_code=500)(scope, receive, send)


def test_installed_handler_survives_a_catch_all_middleware(
    pki: TestPKI, alice: TestCertificate
) -> None:
    gate = _gate(pki)
    app = build_app()
    app.add_middleware(CatchAll)  # inside certgate's middleware
    install(app, gate)
    refused = _client(app, alice).post("/ops")
    assert refused.status_code == 403
    assert refused.content == gate.refusal(Reason.POLICY_DENIED).body
    # Without the handler the catch-all would have answered 500:
    bare = build_app()
    bare.add_middleware(CatchAll)
    bare.add_middleware(CertGateMiddleware, gate=gate)
    assert _client(bare, alice).post("/ops").status_code == 500


def test_install_refuses_a_second_middleware(pki: TestPKI) -> None:
    app = _installed(_gate(pki))
    with pytest.raises(ServerSetupError, match="already has CertGateMiddleware"):
        install(app, _gate(pki))


def test_without_middleware_a_plain_403_and_an_error_log(
    alice: TestCertificate, caplog: pytest.LogCaptureFixture
) -> None:
    app = build_app()
    with caplog.at_level(logging.ERROR, logger="certgate"):
        refused = _client(app, alice).get("/whoami")
        policy = _client(app, alice).post("/ops")
    assert refused.status_code == 403
    assert refused.json() == {"detail": "The client certificate could not be checked"}
    assert policy.status_code == 403
    assert any("without certgate's middleware" in r.getMessage() for r in caplog.records)
    assert _client(app, alice).get("/").json() == {"who": None}  # optional: never refuses


# -- OpenAPI ------------------------------------------------------------------------


def _secured(document: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {
        (path, method): operation["security"]
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "security" in operation
    }


def test_openapi_mutual_tls_on_exactly_the_right_operations(pki: TestPKI) -> None:
    app = _installed(_gate(pki))
    document = TestClient(app).get("/openapi.json")
    # /openapi.json itself is on an optional path: served without a certificate
    assert document.status_code == 200
    schema = document.json()
    assert schema["openapi"].startswith("3.1")
    assert schema["components"]["securitySchemes"]["mutualTLS"]["type"] == "mutualTLS"
    secured = _secured(schema)
    mtls: list[dict[str, list[str]]] = [{"mutualTLS": []}]
    assert secured == {
        ("/whoami", "get"): mtls,
        ("/ops", "post"): mtls,
        ("/ops/depends", "get"): mtls,
        ("/team/list", "get"): mtls,
        ("/strict/plain", "get"): mtls,  # no dependency, but the gate requires it
        ("/both", "get"): [{"OAuth2PasswordBearer": [], "mutualTLS": []}],
    }
    assert app.openapi() is app.openapi()  # cached and idempotent
    assert _secured(app.openapi()) == secured


def test_openapi_with_the_default_require_access(pki: TestPKI) -> None:
    app = build_app()
    app.add_middleware(CertGateMiddleware, gate=pki.gate(exempt_paths=["/healthz"]))
    mutual_tls_openapi(app)  # finds the gate of the middleware
    ops = certificate_operations(app, pki.gate(exempt_paths=["/healthz"]))
    assert ("/healthz", "get") not in ops
    assert ("/", "get") in ops  # access require: even the public-looking route
    assert set(_secured(app.openapi())) == ops


def test_openapi_without_a_gate_marks_dependencies_only() -> None:
    app = build_app()
    mutual_tls_openapi(app, scheme_name="clientCert")
    secured = _secured(app.openapi())
    assert ("/strict/plain", "get") not in secured
    assert secured[("/whoami", "get")] == [{"clientCert": []}]
    assert app.openapi()["components"]["securitySchemes"]["clientCert"]["type"] == "mutualTLS"


# -- overrides ------------------------------------------------------------------------


def test_dependency_overrides_without_tls() -> None:
    app = build_app()  # no middleware at all
    alice = fake_identity("alice")
    app.dependency_overrides[client_identity] = lambda: alice
    app.dependency_overrides[ops_only] = lambda: fake_identity("ops-console")
    client = TestClient(app)
    assert client.get("/whoami").json() == {"who": "alice"}
    assert client.post("/ops").json() == {"ops": "ops-console"}
    assert client.get("/team/list").json() == []


def test_override_identity_keeps_route_policies(pki: TestPKI) -> None:
    app = build_app()
    override_identity(app, fake_identity("alice"))
    client = TestClient(app)
    assert client.get("/whoami").json() == {"who": "alice"}
    assert client.get("/").json() == {"who": "alice"}
    refused = client.post("/ops")
    assert refused.status_code == 403
    assert refused.headers["certgate-reason"] == "policy_denied"
    override_identity(app, fake_identity("ops-console"))
    assert client.post("/ops").json() == {"ops": "ops-console"}
    override_identity(app, None)
    assert client.get("/whoami").status_code == 403
    assert client.get("/").json() == {"who": None}
    # With certgate installed, overridden refusals use the gate's format.
    installed = _installed(_gate(pki))
    override_identity(installed, fake_identity("alice"))
    refused = TestClient(installed).post("/ops")
    assert refused.content == _gate(pki).refusal(Reason.POLICY_DENIED).body


# -- a real server over real TLS -----------------------------------------------------


@pytest.fixture(scope="module")
def tls_env(tmp_path_factory: pytest.TempPathFactory) -> DevEnv:
    return make_dev_environment(tmp_path_factory.mktemp("fastapi-deps"))


@pytest.fixture(scope="module")
def tls_server(tls_env: DevEnv) -> Iterator[Any]:
    port = free_port()
    cmd = [
        "python", "-m", "certgate.servers.uvicorn", "tests.fastapi_routes_app:create_app",
        "--factory", "--host", "127.0.0.1", "--port", str(port),
        "--ssl-certfile", str(tls_env.server_cert), "--ssl-keyfile", str(tls_env.server_key),
        "--ssl-ca-certs", str(tls_env.bundle), "--ssl-cert-reqs", "1", "--log-level", "warning",
    ]  # fmt: skip
    import sys

    cmd[0] = sys.executable
    with serve(cmd, tls_env, port) as server:
        yield server


def test_real_uvicorn_over_tls(tls_server: Any) -> None:
    # acme-device is CN=sensor-17: the route's policy lets in only that CN.
    assert tls_server.get("acme-device", "pay.acme.test", "/sensor").json() == {"cn": "sensor-17"}
    refused = tls_server.get("globex-device", "api.globex.test", "/sensor")
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["reason"] == "policy_denied"
    assert "secret-rule-text" not in refused.text
    assert "secret-rule-text" in tls_server.log_text()
    # optional public route: with and without a certificate
    assert tls_server.get(None, "pay.acme.test", "/").json() == {"cn": None}
    assert tls_server.get("initech-device", "initech.test", "/").json() == {"cn": "printer-9"}
    # a certificate-only route on the optional path, without a certificate
    assert tls_server.get(None, "pay.acme.test", "/whoami").json()["reason"] == "no_certificate"
    schema = tls_server.get(None, "pay.acme.test", "/openapi.json").json()
    assert set(_secured(schema)) == {("/sensor", "get"), ("/whoami", "get")}


# -- the example app ------------------------------------------------------------------


def _pem_list(path: Any) -> list[str]:
    text = path.read_text()
    marker = "-----END CERTIFICATE-----"
    return [part + marker + "\n" for part in text.split(marker) if "BEGIN" in part]


@pytest.mark.skipif(
    not hasattr(__import__("certgate.policy").policy, "spiffe_path_prefix"),
    reason="needs the real certgate.policy module (issue 6, helper 'policy')",
)
def test_example_app_report_only_by_config(tls_env: DevEnv) -> None:
    from examples.fastapi_app.app import create_app

    globex = _pem_list(tls_env.path("globex-device-chain.pem"))
    for mode, status in (("enforce", 403), ("report", 200)):
        app = create_app(str(tls_env.config), mode=mode)
        client = TestClient(with_client_cert(app, globex), base_url="http://api.globex.test")
        assert client.post("/telemetry").status_code == status, mode
        anonymous = TestClient(app, base_url="http://api.globex.test")
        assert anonymous.get("/").json() == {"hello": "anonymous"}
        assert anonymous.get("/whoami").status_code == status
        schema = anonymous.get("/openapi.json").json()
        assert set(_secured(schema)) == {("/whoami", "get"), ("/telemetry", "post")}
