"""The FastAPI/Starlette and Flask helpers, in process.

Certificates arrive as Cloudflare headers from a trusted proxy address so no
TLS server is needed here (test_e2e.py covers the TLS transport).
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from flask import Flask
from starlette.requests import Request

from certgate import CertGate, ClientIdentity
from certgate.asgi import CertGateMiddleware
from certgate.flask import CertGateFlask, get_identity, require_identity
from certgate.starlette import client_identity
from certgate.starlette import get_identity as starlette_identity
from certgate.wsgi import CertGateWSGIMiddleware
from tests.conftest import PKI

PROXY = "10.0.0.1"


def _gate(pki: PKI) -> CertGate:
    return CertGate(
        pki.registry(),
        trusted_proxies=["10.0.0.0/8"],
        header_sources=["cloudflare"],
        exempt_paths=["/open", "/open/*"],
        trust_reported_peer=True,  # ASGITransport / Werkzeug's test client report the peer
    )


def _cf(pki: PKI, tenant: str) -> dict[str, str]:
    der = pki[tenant].issuer.issue(f"fw-{tenant}").der
    return {"Cf-Client-Cert-Der-Base64": base64.b64encode(der).decode()}


def _fastapi(pki: PKI) -> FastAPI:
    app = FastAPI()
    app.add_middleware(CertGateMiddleware, gate=_gate(pki))

    @app.get("/whoami")
    def whoami(identity: ClientIdentity = Depends(client_identity)) -> dict[str, Any]:  # noqa: B008
        return {"tenant": identity.tenant_id, "cn": identity.common_name}

    @app.get("/open")
    def open_route(identity: ClientIdentity = Depends(client_identity)) -> dict[str, Any]:  # noqa: B008
        return {"tenant": identity.tenant_id}

    @app.get("/open/maybe")
    def maybe(request: Request) -> dict[str, Any]:
        identity = starlette_identity(request)
        return {"identity": None if identity is None else identity.tenant_id}

    return app


def _get(app: FastAPI, path: str, host: str, headers: dict[str, str]) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(PROXY, 4444))
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(go())


def test_fastapi_dependency_gives_the_identity(pki: PKI) -> None:
    app = _fastapi(pki)
    response = _get(app, "/whoami", "initech.test", _cf(pki, "initech"))
    assert response.status_code == 200
    assert response.json() == {"tenant": "initech", "cn": "fw-initech"}


def test_fastapi_rejection_never_reaches_the_route(pki: PKI) -> None:
    response = _get(_fastapi(pki), "/whoami", "initech.test", _cf(pki, "globex"))
    assert response.status_code == 403
    assert response.json()["reason"] == "untrusted_chain"


def test_fastapi_dependency_refuses_an_exempt_request(pki: PKI) -> None:
    """Issue 6 (one refusal format): the dependency's refusal is the gate's
    problem+json ``no_certificate``, no longer FastAPI's ``{"detail": ...}``."""
    response = _get(_fastapi(pki), "/open", "initech.test", {})
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "urn:certgate:reason:no_certificate",
        "title": "A client certificate is required",
        "status": 403,
        "reason": "no_certificate",
    }


def test_starlette_get_identity_is_none_on_exempt_paths(pki: PKI) -> None:
    response = _get(_fastapi(pki), "/open/maybe", "initech.test", {})
    assert response.json() == {"identity": None}


def _flask(pki: PKI) -> Flask:
    app = Flask(__name__)
    CertGateFlask(app, _gate(pki))

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        identity = require_identity()
        again = get_identity()
        assert again is not None
        return {"tenant": identity.tenant_id, "proxy": again.tenant_id}

    @app.get("/open")
    def open_route() -> dict[str, Any]:
        return {"identity": None if get_identity() is None else "set"}

    @app.get("/open/required")
    def required() -> dict[str, Any]:
        return {"tenant": require_identity().tenant_id}

    return app


def test_flask_identity_helpers(pki: PKI) -> None:
    client = _flask(pki).test_client()
    ok = client.get(
        "/whoami",
        headers={"Host": "api.globex.test", **_cf(pki, "globex")},
        environ_base={"REMOTE_ADDR": PROXY},
    )
    assert ok.status_code == 200
    assert ok.json == {"tenant": "globex", "proxy": "globex"}
    refused = client.get(
        "/whoami",
        headers={"Host": "api.globex.test", **_cf(pki, "initech")},
        environ_base={"REMOTE_ADDR": PROXY},
    )
    assert refused.status_code == 403
    assert refused.json == {
        "type": "urn:certgate:reason:untrusted_chain",
        "title": "The client certificate is not trusted for this host",
        "status": 403,
        "reason": "untrusted_chain",
    }
    assert client.get("/open", headers={"Host": "api.globex.test"}).json == {"identity": None}
    assert client.get("/open/required", headers={"Host": "api.globex.test"}).status_code == 403


def test_flask_view_branching_on_the_documented_check(pki: PKI) -> None:
    """Issue 5: one view, served on an exempt and on a protected path,
    branches on the documented ``get_identity() is None``. An anonymous
    request on the exempt path takes the anonymous branch (not 200 as a
    device, not a 500); a verified request gets its identity."""
    app = Flask(__name__)
    CertGateFlask(app, _gate(pki))

    def hello() -> dict[str, Any]:
        identity = get_identity()
        if identity is None:
            return {"who": "anonymous"}
        return {"who": "device", "tenant": identity.tenant_id, "cn": identity.common_name}

    app.add_url_rule("/open/hello", "open_hello", hello)
    app.add_url_rule("/hello", "hello", hello)
    client = app.test_client()

    anonymous = client.get("/open/hello", headers={"Host": "api.globex.test"})
    assert anonymous.status_code == 200
    assert anonymous.json == {"who": "anonymous"}
    device = client.get(
        "/hello",
        headers={"Host": "api.globex.test", **_cf(pki, "globex")},
        environ_base={"REMOTE_ADDR": PROXY},
    )
    assert device.status_code == 200
    assert device.json == {"who": "device", "tenant": "globex", "cn": "fw-globex"}
    # The exempt path never hands out an identity, even with a certificate.
    presented = client.get(
        "/open/hello",
        headers={"Host": "api.globex.test", **_cf(pki, "globex")},
        environ_base={"REMOTE_ADDR": PROXY},
    )
    assert presented.json == {"who": "anonymous"}


def test_flask_current_identity_proxy_is_gone_and_says_why() -> None:
    """Issue 5: the old ``current_identity`` proxy was never ``None``, so
    ``current_identity is None`` treated anonymous requests as devices. The
    name must fail at import time, pointing at the replacements - not
    silently misbehave at request time."""
    import certgate.flask

    with pytest.raises(ImportError, match=r"get_identity\(\).*require_identity\(\)"):
        from certgate.flask import current_identity  # type: ignore[attr-defined]  # noqa: F401
    with pytest.raises(ImportError, match="never None"):
        _ = certgate.flask.current_identity  # type: ignore[attr-defined]
    assert not hasattr(certgate.flask, "current_user")  # other names: plain AttributeError
    assert "current_identity" not in certgate.flask.__all__


def test_flask_reads_the_config_path(pki: PKI, tmp_path: Path) -> None:
    root = pki["globex"].roots[0]
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    (tmp_path / "certgate.toml").write_text(
        '[[tenants]]\nid = "globex"\nhosts = ["api.globex.test"]\nroots = ["root.pem"]\n'
    )
    app = Flask(__name__)
    app.config["CERTGATE_CONFIG"] = str(tmp_path / "certgate.toml")
    extension = CertGateFlask(app)
    # Issue 6: per-app state lives in app.extensions, not on the extension.
    state = app.extensions["certgate"]
    assert state.extension is extension
    assert state.gate.registry.tenant_for_host("api.globex.test") is not None
    assert extension.gate is None  # no gate was given to the constructor
    response = app.test_client().get("/anything", headers={"Host": "api.globex.test"})
    assert response.status_code == 403
    assert response.json is not None
    assert response.json["reason"] == "no_certificate"


def test_flask_without_gate_or_config_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="CERTGATE_CONFIG"):
        CertGateFlask(Flask(__name__))


def test_host_rewritten_after_certgate_withholds_the_identity(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    """ProxyFix(x_host=1) inside certgate: certgate verified a Globex
    certificate for Host api.globex.test, the app would serve
    X-Forwarded-Host initech.test. The identity must not reach the view."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    app = _flask(pki)
    inner = app.wsgi_app
    assert isinstance(inner, CertGateWSGIMiddleware)
    inner.app = ProxyFix(inner.app, x_host=1)  # type: ignore[assignment]
    client = app.test_client()
    headers = {"Host": "api.globex.test", **_cf(pki, "globex")}
    ok = client.get("/whoami", headers=headers, environ_base={"REMOTE_ADDR": PROXY})
    assert ok.status_code == 200
    assert ok.json == {"tenant": "globex", "proxy": "globex"}
    with caplog.at_level("ERROR", logger="certgate"):
        moved = client.get(
            "/whoami",
            headers={**headers, "X-Forwarded-Host": "initech.test"},
            environ_base={"REMOTE_ADDR": PROXY},
        )
    assert moved.status_code == 403
    assert any("identity is withheld" in r.getMessage() for r in caplog.records)


def test_starlette_identity_needs_the_verified_host(pki: PKI) -> None:
    from certgate.asgi import DECISION_KEY, IDENTITY_KEY, identity_from_scope

    gate = _gate(pki)
    decision = gate.check("initech.test", [pki["initech"].issuer.issue("h").der])
    assert decision.identity is not None
    verified = decision._replace(host="initech.test")
    scope: dict[str, Any] = {
        "headers": [(b"host", b"initech.test:443")],
        IDENTITY_KEY: decision.identity,
        DECISION_KEY: verified,
    }
    assert identity_from_scope(scope) is decision.identity
    scope["headers"] = [(b"host", b"pay.acme.test")]
    assert identity_from_scope(scope) is None
    scope["headers"] = []
    assert identity_from_scope(scope) is None
