"""certgate.testing: testing apps without TLS - the real middleware fed by the
ASGI TLS extension or the WSGI environ, and real identities for overrides."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from flask import Flask, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from certgate import ClientIdentity
from certgate.starlette import get_identity, install
from certgate.testing import (
    TestCertificate,
    TestPKI,
    fake_identity,
    presenting,
    with_client_cert,
    wsgi_environ,
)
from certgate.wsgi import CertGateWSGIMiddleware, identity_from_environ


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


async def whoami(request: Request) -> JSONResponse:
    identity = get_identity(request)
    if identity is None:
        return JSONResponse({"identity": None})
    return JSONResponse(
        {
            "tenant": identity.tenant_id,
            "cn": identity.common_name,
            "dns": list(identity.sans.dns),
            "fingerprint": identity.fingerprint_sha256,
            "source": identity.source,
        }
    )


def _starlette(pki: TestPKI, **kwargs: Any) -> Starlette:
    app = Starlette(routes=[Route("/whoami", whoami)])
    install(app, pki.gate(**kwargs))
    return app


def test_with_client_cert_runs_the_real_verification(pki: TestPKI) -> None:
    cert = pki.issue_client("alice", sans={"dns": ["alice.test"]})
    app = _starlette(pki)
    response = TestClient(with_client_cert(app, cert)).get("/whoami")
    assert response.status_code == 200
    assert response.json() == {
        "tenant": "test",
        "cn": "alice",
        "dns": ["alice.test"],
        "fingerprint": cert.fingerprint,
        "source": "asgi_tls",
    }
    # the same on "localhost" (the tenant's second host)
    local = TestClient(presenting(app, cert), base_url="http://localhost")
    assert local.get("/whoami").json()["cn"] == "alice"


def test_with_client_cert_does_not_bypass_verification(pki: TestPKI) -> None:
    app = _starlette(pki)
    stranger = TestPKI("other").issue_client("alice")  # same name, a CA the tenant does not trust
    refused = TestClient(with_client_cert(app, stranger)).get("/whoami")
    assert refused.status_code == 403
    assert refused.json()["reason"] == "untrusted_chain"
    leaf_only = TestClient(with_client_cert(app, pki.issue_client("a").pem_chain[:1]))
    assert leaf_only.get("/whoami").json()["reason"] == "untrusted_chain"  # intermediate missing
    assert TestClient(app).get("/whoami").json()["reason"] == "no_certificate"
    assert TestClient(with_client_cert(app, None)).get("/whoami").json()["reason"] == (
        "no_certificate"
    )
    other_host = TestClient(with_client_cert(app, pki.issue_client("a")), base_url="http://x.test")
    assert other_host.get("/whoami").json()["reason"] == "unknown_tenant"


def test_report_only_and_access_through_the_test_gate(pki: TestPKI) -> None:
    app = _starlette(pki, access="optional")
    assert TestClient(app).get("/whoami").json() == {"identity": None}
    reported = _starlette(pki, mode="report")
    assert TestClient(reported).get("/whoami").json() == {"identity": None}


def test_expired_test_certificate_is_refused(pki: TestPKI) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    expired = pki.issue_client(
        "old", not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1)
    )
    refused = TestClient(with_client_cert(_starlette(pki), expired)).get("/whoami")
    assert refused.json()["reason"] == "expired"


def _flask(pki: TestPKI) -> Flask:
    app = Flask(__name__)
    app.wsgi_app = CertGateWSGIMiddleware(app.wsgi_app, pki.gate())  # type: ignore[method-assign,arg-type]

    @app.get("/whoami")
    def flask_whoami() -> dict[str, Any]:
        identity = identity_from_environ(request.environ)
        return {"cn": identity.common_name if identity else None}

    return app


def test_wsgi_environ_through_the_flask_test_client(pki: TestPKI) -> None:
    cert = pki.issue_client("bob")
    environ = wsgi_environ(cert)
    assert set(environ) == {"SSL_CLIENT_CERT", "SSL_CLIENT_CERT_CHAIN_0"}
    client = _flask(pki).test_client()
    assert client.get("/whoami", environ_base=environ).json == {"cn": "bob"}
    stranger = wsgi_environ(TestPKI("other").issue_client("bob"))
    refused = client.get("/whoami", environ_base=stranger)
    assert refused.status_code == 403
    assert refused.json is not None
    assert refused.json["reason"] == "untrusted_chain"
    assert client.get("/whoami").status_code == 403


def test_fake_identity_is_a_real_verified_identity() -> None:
    identity = fake_identity("carol", organization="Ops", dns=["carol.test"], uri=["spiffe://t/c"])
    assert isinstance(identity, ClientIdentity)
    assert identity.tenant_id == "test"
    assert identity.common_name == "carol"
    assert identity.subject == "CN=carol,O=Ops"
    assert identity.sans.dns == ("carol.test",)
    assert identity.spiffe_id == "spiffe://t/c"
    assert len(identity.chain) == 3  # leaf, issuing CA, root: a verified path
    assert fake_identity("carol").fingerprint_sha256 != identity.fingerprint_sha256


def test_test_certificate_fields(pki: TestPKI) -> None:
    cert = pki.issue_client("dave")
    identity = pki.identity(cert)
    assert identity.fingerprint_sha256 == cert.fingerprint
    assert identity.serial == cert.serial
    assert len(cert.pem_chain) == 2
    assert all(pem.startswith("-----BEGIN CERTIFICATE-----") for pem in cert.pem_chain)
    assert cert.chain_pem == "".join(cert.pem_chain).encode()
    with pytest.raises(ValueError, match="unknown SAN kind"):
        pki.issue_client("x", sans={"upn": ["x"]})
    with pytest.raises(ValueError, match="does not verify"):
        pki.identity(TestCertificate(TestPKI("other").issuing.issue("x")))


def test_not_collected_by_pytest() -> None:
    assert TestPKI.__test__ is False
    assert TestCertificate.__test__ is False


def test_importable_without_fastapi_flask_or_starlette() -> None:
    code = (
        "import sys\n"
        "for name in ('fastapi', 'flask', 'starlette', 'werkzeug'):\n"
        "    sys.modules[name] = None\n"
        "import certgate.testing as t\n"
        "pki = t.TestPKI()\n"
        "c = pki.issue_client('x')\n"
        "assert pki.identity(c).common_name == 'x'\n"
        "assert t.wsgi_environ(c)['SSL_CLIENT_CERT'].startswith('-----BEGIN')\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
