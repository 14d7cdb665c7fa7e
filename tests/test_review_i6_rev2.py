"""Adversarial review of issue 6 (framework side): routes that the docs
call protected but that ran without their certgate check.

Each test goes through the public interface (Flask's test client with the
``SSL_CLIENT_CERT`` environ keys of a TLS server, certgate's real
middleware and verifier).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Blueprint, Flask, request
from flask.views import MethodView, View

from certgate.events import DecisionEvent
from certgate.flask import CertGateFlask, protect_blueprint, require_client_cert
from certgate.policy import common_name
from certgate.rollout import Route
from certgate.testing import TestCertificate, TestPKI, wsgi_environ

F = Callable[..., Any]


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture(scope="module")
def bob(pki: TestPKI) -> TestCertificate:
    return pki.issue_client("bob")


def _app(pki: TestPKI) -> Flask:
    app = Flask(__name__)
    CertGateFlask(app, pki.gate(access="optional"))
    return app


# -- decorator order ----------------------------------------------------------------


def test_flask_require_client_cert_above_route_fails_closed(
    pki: TestPKI, bob: TestCertificate, caplog: pytest.LogCaptureFixture
) -> None:
    """``@require_client_cert()`` written *above* ``@app.get(...)`` decorates
    the function Flask already registered: Flask routes to the unchecked
    function. Before the fix the route answered 200 to anyone; now it is
    refused (403 ``internal_error``, with or without a certificate) and the
    mistake is logged."""
    app = _app(pki)

    @require_client_cert(common_name("alice"))
    @app.get("/wrong-order")
    def wrong_order() -> str:
        return "secret"

    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="certgate"):
        anonymous = client.get("/wrong-order")
        with_cert = client.get("/wrong-order", environ_base=wsgi_environ(bob))
    assert anonymous.status_code == 403, anonymous.data
    assert anonymous.headers["certgate-reason"] == "internal_error"
    assert with_cert.status_code == 403
    assert b"secret" not in anonymous.data + with_cert.data
    assert any("below @app.route" in r.getMessage() for r in caplog.records)


def test_flask_raw_function_registered_beside_its_checked_wrapper_still_works(
    pki: TestPKI, bob: TestCertificate
) -> None:
    """Registering a function raw on one rule (public) and wrapped on
    another is deliberate, not a decorator-order mistake: both behave as
    written."""
    app = _app(pki)

    def status() -> str:
        return "status"

    app.add_url_rule("/public/status", view_func=status)
    app.add_url_rule("/status", endpoint="checked", view_func=require_client_cert()(status))
    client = app.test_client()
    assert client.get("/public/status").status_code == 200
    assert client.get("/status").status_code == 403
    assert client.get("/status", environ_base=wsgi_environ(bob)).status_code == 200


# -- blueprints ------------------------------------------------------------------------


def test_flask_protect_blueprint_runs_before_the_blueprints_own_hooks(pki: TestPKI) -> None:
    """A blueprint ``before_request`` hook registered before
    ``protect_blueprint`` ran first; one that returns a response (a cache,
    a redirect, a maintenance page) answered without any certificate."""
    app = _app(pki)
    bp = Blueprint("bp", __name__, url_prefix="/bp")
    seen: list[str] = []

    @bp.before_request
    def cached() -> str | None:
        seen.append("hook")
        return "secret from cache" if request.args.get("cached") else None

    protect_blueprint(bp)

    @bp.get("/x")
    def x() -> str:
        return "secret"

    app.register_blueprint(bp)
    response = app.test_client().get("/bp/x?cached=1")
    assert response.status_code == 403, response.data
    assert response.headers["certgate-reason"] == "no_certificate"
    assert seen == []  # the user's hook never ran for a refused request


# -- class-based views -----------------------------------------------------------------


def test_flask_protected_view_class_stays_protected_in_subclasses(
    pki: TestPKI, bob: TestCertificate
) -> None:
    """``@require_client_cert`` on a ``MethodView`` class lived in the
    class's ``decorators`` list: a subclass that sets its own ``decorators``
    (caching, rate limiting) silently dropped the certificate check."""

    @require_client_cert(common_name("bob"))
    class Devices(MethodView):
        def get(self) -> str:
            return "secret devices"

    def noop(view: F) -> F:
        return view

    class CachedDevices(Devices):
        decorators = [noop]  # noqa: RUF012 - Flask's API

    @require_client_cert()
    class Plain(View):
        def dispatch_request(self) -> str:
            return "secret plain"

    class PlainChild(Plain):
        decorators = [noop]  # noqa: RUF012 - Flask's API

    app = _app(pki)
    app.add_url_rule("/devices", view_func=Devices.as_view("devices"))
    app.add_url_rule("/cached", view_func=CachedDevices.as_view("cached"))
    app.add_url_rule("/plain", view_func=PlainChild.as_view("plain"))
    client = app.test_client()
    for path in ("/devices", "/cached", "/plain"):
        refused = client.get(path)
        assert refused.status_code == 403, (path, refused.data)
        assert refused.headers["certgate-reason"] == "no_certificate"
        assert client.get(path, environ_base=wsgi_environ(bob)).status_code == 200
    alice = TestPKI.issue_client(pki, "alice")
    denied = client.get("/cached", environ_base=wsgi_environ(alice))
    assert denied.headers["certgate-reason"] == "policy_denied"


# -- report-only on an exempt path -------------------------------------------------------


def test_report_only_route_check_on_an_exempt_path_does_not_block(pki: TestPKI) -> None:
    """With ``mode="report"`` everywhere, a decorated view on an exempt path
    was refused (403 ``no_certificate``): the exempt decision carried the
    path's mode or ``enforce``, never the global report mode. Report-only
    must never block; the refusal is still observed (mode ``report``)."""
    events: list[DecisionEvent] = []

    class Recorder:
        def on_decision(self, event: DecisionEvent) -> None:
            events.append(event)

        def on_expiring(self, event: object) -> None:
            pass

    gate = pki.gate(
        mode="report", routes=[Route("/healthz", access="exempt")], observers=[Recorder()]
    )
    app = Flask(__name__)
    CertGateFlask(app, gate)

    @app.get("/healthz")
    @require_client_cert()
    def healthz() -> str:
        return "ran"

    response = app.test_client().get("/healthz")
    assert response.status_code == 200, response.data
    assert response.data == b"ran"
    route = [e for e in events if e.stage == "route"]
    assert [(e.reason, e.mode) for e in route] == [("no_certificate", "report")]
    gate.rollout.set_mode("enforce")  # switched at run time: now it blocks
    assert app.test_client().get("/healthz").status_code == 403
