"""Issue 6 core: path access (require / optional / exempt), report-only mode
(global, per tenant, per path, changed at run time), the authorization step,
refusal formats, the observer point and the route-level check.

Everything goes through the public interface (CertGate, the ASGI and WSGI
middleware) with real certificates from the test PKI.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
from collections.abc import Callable, Iterable, MutableMapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from certgate import CertGate, ClientIdentity, ConfigError, InMemoryRegistry, Reason, Tenant
from certgate.asgi import DECISION_KEY, GATE_KEY, IDENTITY_KEY, CertGateMiddleware
from certgate.decision import Decision
from certgate.events import DecisionEvent, ExpiryEvent
from certgate.policy import Policy, common_name
from certgate.problem import problem_body
from certgate.rollout import Access, Mode, Rollout, Route
from certgate.testing import RecordingObserver
from certgate.wsgi import CertGateWSGIMiddleware
from tests.conftest import PKI
from tests.test_asgi import RecordingApp, http_scope, pem_chain, run_http, run_ws

GateFactory = Callable[..., CertGate]
ACME = "pay.acme.test"
GLOBEX = "api.globex.test"


def CommonNameIn(*names: str) -> Policy:
    return common_name(*names)


Recorder = RecordingObserver


class Broken:
    def on_decision(self, event: DecisionEvent) -> None:
        raise RuntimeError("observer bug")

    def on_expiring(self, event: ExpiryEvent) -> None:
        raise RuntimeError("observer bug")


def tls(pki: PKI, tenant: str = "acme", cn: str = "dev1", **kwargs: Any) -> list[str]:
    return pem_chain(pki[tenant].client(cn, **kwargs))


# -- path rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "access"),
    [
        ("/", "require"),
        ("/healthz", "exempt"),
        ("/healthz/", "exempt"),
        ("/healthz/x", "require"),
        ("/public", "optional"),
        ("/public/", "optional"),
        ("/public/a/b", "optional"),
        ("/publicity", "require"),
        ("/public/private", "require"),  # the longer prefix wins
        ("/public/private/x", "require"),
        ("/public/private/open", "exempt"),  # an exact path beats every prefix
        ("/public/../admin", "require"),  # relaxing rules need a clean path
        ("/public//a", "require"),
        ("/public/./a", "require"),
        ("//healthz", "require"),
    ],
)
def test_route_matching(path: str, access: str) -> None:
    rollout = Rollout(
        [
            Route("/healthz", access=Access.EXEMPT),
            Route("/public/*", access="optional"),
            Route("/public/private/*", access="require"),
            Route("/public/private/open", access="exempt"),
        ]
    )
    assert rollout.rule(path).access == access


def test_tightening_rules_match_the_resolved_path() -> None:
    admin = CommonNameIn("root")
    rollout = Rollout([Route("/admin/*", policy=admin, mode="enforce")], mode="report")
    for path in ("/admin/x", "/x/../admin/y", "//admin/y", "/admin/./y"):
        rule = rollout.rule(path)
        assert rule.policy is admin, path
        assert rule.mode is Mode.ENFORCE, path
    assert rollout.rule("/administrator").policy is None


def test_unclean_paths_keep_an_optional_default() -> None:
    rollout = Rollout([Route("/x/*", access="exempt")], access="optional")
    assert rollout.rule("/x/../y").access is Access.OPTIONAL
    assert rollout.rule("/x/y").access is Access.EXEMPT
    report = Rollout([Route("/beta/*", mode="report")])
    assert report.rule("/beta/x").mode is Mode.REPORT
    assert report.rule("/beta/../x").mode is None


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Route("/*", access="exempt"), "exempts every path"),
        (lambda: Route("healthz"), "must start with '/'"),
        (lambda: Route("/a/*/b"), "only a trailing"),
        (lambda: Route("/a", access="sometimes"), "access must be one of"),
        (lambda: Route("/a", mode="audit"), "mode must be 'enforce' or 'report'"),
        (lambda: Rollout(access="exempt"), "turns certgate off"),
        (lambda: Rollout([Route("/a"), Route("/a")]), "listed twice"),
        (lambda: Rollout(mode="off"), "mode must be"),
    ],
)
def test_bad_rules_are_refused(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_optional_default_access_everywhere_is_allowed() -> None:
    assert Rollout(access="optional").rule("/anything").access is Access.OPTIONAL
    assert Route("/*", access="optional").access is Access.OPTIONAL


# -- optional access through the middleware ------------------------------------------


def test_optional_path_lets_requests_without_certificate_through(
    pki: PKI, make_gate: GateFactory
) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, make_gate(routes=[Route("/public/*", access="optional")]))
    assert run_http(mw, http_scope(host=ACME, path="/public/a")).status == 200
    seen = app.scope
    assert IDENTITY_KEY not in seen
    assert seen[DECISION_KEY].reason is None
    assert seen[DECISION_KEY].access == "optional"
    assert seen[GATE_KEY].snapshot is mw.gate.snapshot  # the gate pinned to its snapshot
    # a required path still needs one
    result = run_http(mw, http_scope(host=ACME, path="/private"))
    assert result.status == 403
    assert result.reason == "no_certificate"


def test_optional_path_verifies_a_presented_certificate(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, make_gate(access="optional"))
    ok = run_http(mw, http_scope(host=ACME, path="/", tls_chain=tls(pki)))
    assert ok.status == 200
    assert app.scope[IDENTITY_KEY].common_name == "dev1"
    # a certificate of another tenant is refused, never downgraded to anonymous
    app.scopes.clear()
    bad = run_http(mw, http_scope(host=ACME, path="/", tls_chain=tls(pki, "globex")))
    assert bad.status == 403
    assert bad.reason == "untrusted_chain"
    assert app.scopes == []


def test_upstream_identity_never_survives_an_optional_path(make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, make_gate(access="optional"))
    scope = http_scope(host=ACME, path="/")
    scope[IDENTITY_KEY] = object()
    assert run_http(mw, scope).status == 200
    assert IDENTITY_KEY not in app.scope


# -- report-only ----------------------------------------------------------------------


def test_report_only_lets_refusals_through_and_logs_them(
    pki: PKI, make_gate: GateFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = RecordingApp()
    recorder = Recorder()
    mw = CertGateMiddleware(app, make_gate(mode="report", observers=[recorder]))
    caplog.set_level(logging.INFO, "certgate")
    no_cert = run_http(mw, http_scope(host=ACME))
    other = run_http(mw, http_scope(host=ACME, tls_chain=tls(pki, "globex")))
    assert no_cert.status == other.status == 200
    assert len(app.scopes) == 2
    decisions = [scope[DECISION_KEY] for scope in app.scopes]
    assert [d.reason for d in decisions] == [Reason.NO_CERTIFICATE, Reason.UNTRUSTED_CHAIN]
    assert all(d.mode == "report" and not d.blocks and not d for d in decisions)
    assert all(IDENTITY_KEY not in scope for scope in app.scopes)
    assert [e.reason for e in recorder.decisions] == ["no_certificate", "untrusted_chain"]
    assert all(e.mode == "report" and not e.blocked for e in recorder.decisions)
    lines = [
        r.getMessage() for r in caplog.records if "would reject (report-only)" in r.getMessage()
    ]
    assert len(lines) == 2
    assert all(r.levelno == logging.WARNING for r in caplog.records if "report-only" in r.message)


def test_report_only_still_strips_forged_headers(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    gate = make_gate(mode="report", trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])
    der = base64.b64encode(pki["acme"].client().der)
    scope = http_scope(host=ACME, headers=[(b"cf-client-cert-der-base64", der)])
    scope["certgate.socket_peer"] = ("203.0.113.9", 1)
    assert run_http(CertGateMiddleware(app, gate), scope).status == 200
    assert b"cf-client-cert-der-base64" not in [n for n, _ in app.scope["headers"]]
    assert IDENTITY_KEY not in app.scope


def test_report_only_attaches_a_valid_identity_that_fails_policy(
    pki: PKI, make_gate: GateFactory
) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, make_gate(mode="report", policy=CommonNameIn("alice")))
    assert run_http(mw, http_scope(host=ACME, tls_chain=tls(pki, cn="mallory"))).status == 200
    decision = app.scope[DECISION_KEY]
    assert decision.reason is Reason.POLICY_DENIED
    assert decision.policy == "common_name in ['alice']"
    assert app.scope[IDENTITY_KEY].common_name == "mallory"


def test_mode_changes_at_run_time(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    gate = make_gate(mode="report")
    mw = CertGateMiddleware(app, gate)
    assert run_http(mw, http_scope(host=ACME)).status == 200
    gate.rollout.set_mode("enforce")
    assert run_http(mw, http_scope(host=ACME)).status == 403
    gate.rollout.set_mode("report", tenant="acme")
    assert run_http(mw, http_scope(host=ACME)).status == 200
    assert run_http(mw, http_scope(host=GLOBEX)).status == 403  # only acme reports
    gate.rollout.set_mode(None, tenant="acme")
    assert run_http(mw, http_scope(host=ACME)).status == 403
    gate.rollout.set_mode("report", path="/beta/*")
    assert run_http(mw, http_scope(host=GLOBEX, path="/beta/x")).status == 200
    assert run_http(mw, http_scope(host=GLOBEX, path="/beta/../x")).status == 403
    assert run_http(mw, http_scope(host=GLOBEX, path="/x")).status == 403
    gate.rollout.set_mode(None, path="/beta/*")
    assert run_http(mw, http_scope(host=GLOBEX, path="/beta/x")).status == 403
    with pytest.raises(ConfigError, match="global mode cannot be None"):
        gate.rollout.set_mode(None)


def test_tenant_mode_from_the_registry(pki: PKI) -> None:
    tenants = [t.tenant() for t in pki.tenants.values()]
    acme = pki["acme"]
    tenants[0] = Tenant(acme.id, acme.hosts, tuple(r.cert for r in acme.roots), mode="report")
    gate = CertGate(InMemoryRegistry(tenants))
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    assert run_http(mw, http_scope(host=ACME)).status == 200
    assert app.scope[DECISION_KEY].tenant_id == "acme"
    assert run_http(mw, http_scope(host=GLOBEX)).status == 403
    # the run-time override beats the tenant's own setting; the path beats both
    gate.rollout.set_mode("enforce", tenant="acme")
    assert run_http(mw, http_scope(host=ACME)).status == 403
    gate.rollout.set_mode("report", path="/x")
    assert run_http(mw, http_scope(host=ACME, path="/x")).status == 200
    with pytest.raises(ConfigError, match="mode must be"):
        Tenant(acme.id, acme.hosts, tuple(r.cert for r in acme.roots), mode="loud")


def test_report_only_on_wsgi(pki: PKI, make_gate: GateFactory) -> None:
    seen: list[MutableMapping[str, Any]] = []

    def app(environ: MutableMapping[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append(environ)
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    gate = make_gate(mode="report")
    mw = CertGateWSGIMiddleware(app, gate)
    status: list[str] = []
    environ = {"HTTP_HOST": ACME, "PATH_INFO": "/", "wsgi.input": io.BytesIO()}
    body = b"".join(mw(dict(environ), lambda s, h, e=None: status.append(s)))  # type: ignore[arg-type]
    assert body == b"ok"
    assert seen[0]["certgate.decision"].reason is Reason.NO_CERTIFICATE
    assert seen[0]["certgate.gate"].snapshot is gate.snapshot  # pinned to the snapshot
    gate.rollout.set_mode("enforce")
    body = b"".join(mw(dict(environ), lambda s, h, e=None: status.append(s)))  # type: ignore[arg-type]
    assert status[-1].startswith("403")
    assert json.loads(body)["reason"] == "no_certificate"


# -- authorization ------------------------------------------------------------------


def test_tenant_policy_denies_with_a_bare_reason(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    acme = pki["acme"]
    tenants = [t.tenant() for t in pki.tenants.values() if t.id != "acme"]
    tenants.append(
        Tenant(acme.id, acme.hosts, tuple(r.cert for r in acme.roots), policy=CommonNameIn("alice"))
    )
    app = RecordingApp()
    mw = CertGateMiddleware(app, CertGate(InMemoryRegistry(tenants)))
    caplog.set_level(logging.WARNING, "certgate")
    denied = run_http(mw, http_scope(host=ACME, tls_chain=tls(pki, cn="mallory")))
    assert denied.status == 403
    assert denied.body == problem_body(Reason.POLICY_DENIED)
    assert b"alice" not in denied.body
    assert b"mallory" not in denied.body
    (record,) = [r for r in caplog.records if "policy_denied" in r.getMessage()]
    assert "common_name in ['alice']" in record.getMessage()
    assert "fingerprint=" in record.getMessage()  # which certificate, in the log
    assert run_http(mw, http_scope(host=ACME, tls_chain=tls(pki, cn="alice"))).status == 200
    assert app.scope[IDENTITY_KEY].common_name == "alice"


def test_tenant_policy_replaces_the_gate_default(pki: PKI) -> None:
    acme = pki["acme"]
    tenants = [t.tenant() for t in pki.tenants.values() if t.id != "acme"]
    tenants.append(
        Tenant(acme.id, acme.hosts, tuple(r.cert for r in acme.roots), policy=CommonNameIn("bob"))
    )
    mw = CertGateMiddleware(
        RecordingApp(), CertGate(InMemoryRegistry(tenants), policy=CommonNameIn("alice"))
    )
    assert run_http(mw, http_scope(host=ACME, tls_chain=tls(pki, cn="bob"))).status == 200
    assert run_http(mw, http_scope(host=ACME, tls_chain=tls(pki, cn="alice"))).status == 403
    globex = http_scope(host=GLOBEX, tls_chain=tls(pki, "globex", cn="alice"))
    assert run_http(mw, globex).status == 200  # the gate's default applies to globex
    globex = http_scope(host=GLOBEX, tls_chain=tls(pki, "globex", cn="bob"))
    assert run_http(mw, globex).status == 403


def test_route_policy_adds_to_the_tenant_policy(pki: PKI, make_gate: GateFactory) -> None:
    gate = make_gate(
        policy=CommonNameIn("alice", "bob"),
        routes=[Route("/admin/*", policy=CommonNameIn("alice"))],
    )
    mw = CertGateMiddleware(RecordingApp(), gate)

    def status(cn: str, path: str) -> int | None:
        return run_http(mw, http_scope(host=ACME, path=path, tls_chain=tls(pki, cn=cn))).status

    assert status("bob", "/") == 200
    assert status("bob", "/admin/x") == 403
    assert status("bob", "/y/../admin/x") == 403  # the resolved path for tightening rules
    assert status("alice", "/admin/x") == 200
    assert status("carol", "/") == 403


def test_policy_denial_is_observed_with_the_rule(pki: PKI, make_gate: GateFactory) -> None:
    recorder = Recorder()
    gate = make_gate(policy=CommonNameIn("alice"), observers=[recorder])
    run_http(CertGateMiddleware(RecordingApp(), gate), http_scope(host=ACME, tls_chain=tls(pki)))
    (event,) = recorder.decisions
    assert event.reason == "policy_denied"
    assert event.policy == "common_name in ['alice']"
    assert event.tenant == "acme"
    assert event.subject is not None
    assert "dev1" in event.subject
    assert event.blocked


def test_a_raising_policy_fails_closed(pki: PKI, make_gate: GateFactory) -> None:
    class Buggy(Policy):
        def __init__(self) -> None:
            super().__init__("buggy")

        def check(self, identity: ClientIdentity, now: datetime) -> str | None:
            raise KeyError("bug")

    result = run_http(
        CertGateMiddleware(RecordingApp(), make_gate(policy=Buggy())),
        http_scope(host=ACME, tls_chain=tls(pki)),
    )
    assert result.status == 403
    assert result.reason == "internal_error"


# -- the route-level check ----------------------------------------------------------


def test_authorize_route(pki: PKI, make_gate: GateFactory) -> None:
    recorder = Recorder()
    gate = make_gate(observers=[recorder], access="optional")
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    run_http(mw, http_scope(host=ACME, tls_chain=tls(pki, cn="alice")))
    run_http(mw, http_scope(host=ACME))
    with_identity, anonymous = (scope[DECISION_KEY] for scope in app.scopes)

    missing = gate.authorize_route(None, path="/", host=ACME)
    assert missing.reason is Reason.INTERNAL_ERROR
    assert missing.blocks
    no_cert = gate.authorize_route(anonymous, path="/", host=ACME)
    assert no_cert.reason is Reason.NO_CERTIFICATE
    assert no_cert.blocks
    allowed = gate.authorize_route(with_identity, CommonNameIn("alice"), path="/", host=ACME)
    assert allowed
    assert allowed.identity is with_identity.identity
    denied = gate.authorize_route(with_identity, CommonNameIn("bob"), path="/", host=ACME)
    assert denied.reason is Reason.POLICY_DENIED
    assert denied.identity is with_identity.identity  # kept for report-only
    assert denied.blocks
    route_events = [e for e in recorder.decisions if e.stage == "route"]
    assert [e.reason for e in route_events] == [
        "internal_error",
        "no_certificate",
        None,
        "policy_denied",
    ]

    gate.rollout.set_mode("report")
    run_http(mw, http_scope(host=ACME, tls_chain=tls(pki, cn="alice")))
    reported = gate.authorize_route(app.scopes[-1][DECISION_KEY], CommonNameIn("bob"), path="/")
    assert reported.reason is Reason.POLICY_DENIED
    assert not reported.blocks


def test_route_refusal_raised_inside_the_app_is_answered_by_the_middleware(
    make_gate: GateFactory,
) -> None:
    from certgate.errors import ClientCertificateRefused

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ClientCertificateRefused(Reason.POLICY_DENIED, "route says no")

    gate = make_gate(access="optional", refusal_format="text")
    result = run_http(CertGateMiddleware(app, gate), http_scope(host=ACME))
    assert result.status == 403
    assert result.headers["certgate-reason"] == "policy_denied"
    assert result.body == gate.refusal(Reason.POLICY_DENIED).body
    ws = run_ws(CertGateMiddleware(app, gate), http_scope(host=ACME, scope_type="websocket"))
    assert ws.sent[-1] == {"type": "websocket.close", "code": 1008, "reason": "policy_denied"}


# -- refusal formats ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type", "needle"),
    [
        ("problem+json", "application/problem+json", b'"reason":"no_certificate"'),
        ("text", "text/plain; charset=utf-8", b"no_certificate"),
        ("html", "text/html; charset=utf-8", b"<code>no_certificate</code>"),
    ],
)
def test_refusal_formats(
    make_gate: GateFactory, fmt: str, content_type: str, needle: bytes
) -> None:
    result = run_http(
        CertGateMiddleware(RecordingApp(), make_gate(refusal_format=fmt)), http_scope(host=ACME)
    )
    assert result.status == 403
    assert result.headers["content-type"] == content_type
    assert result.headers["certgate-reason"] == "no_certificate"
    assert result.headers["cache-control"] == "no-store"
    assert needle in result.body
    assert int(result.headers["content-length"]) == len(result.body)


def test_custom_refusal_format_and_its_failure(
    make_gate: GateFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def page(reason: Reason) -> tuple[str, bytes]:
        return "text/x-custom", f"nope: {reason.value}".encode()

    result = run_http(
        CertGateMiddleware(RecordingApp(), make_gate(refusal_format=page)), http_scope(host=ACME)
    )
    assert (result.status, result.body) == (403, b"nope: no_certificate")
    assert result.headers["certgate-reason"] == "no_certificate"

    def broken(reason: Reason) -> tuple[str, bytes]:
        raise ValueError("template missing")

    caplog.set_level(logging.ERROR, "certgate")
    fallback = run_http(
        CertGateMiddleware(RecordingApp(), make_gate(refusal_format=broken)), http_scope(host=ACME)
    )
    assert fallback.status == 403
    assert fallback.body == problem_body(Reason.NO_CERTIFICATE)
    assert any("refusal_format callable failed" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="refusal_format"):
        make_gate(refusal_format="xml")


# -- observers ----------------------------------------------------------------------


def test_observers_see_every_decision(pki: PKI, make_gate: GateFactory) -> None:
    recorder = Recorder()
    gate = make_gate(observers=[Broken(), recorder], exempt_paths=["/healthz"])
    mw = CertGateMiddleware(RecordingApp(), gate)
    assert run_http(mw, http_scope(host=ACME, tls_chain=tls(pki))).status == 200
    assert run_http(mw, http_scope(host=ACME)).status == 403
    assert run_http(mw, http_scope(host=ACME, path="/healthz")).status == 200
    allow, refusal, exempt = recorder.decisions
    assert allow.reason is None
    assert allow.tenant == "acme"
    assert allow.source == "asgi_tls"
    assert allow.fingerprint is not None
    assert allow.latency_s > 0
    assert allow.host == ACME
    assert refusal.reason == "no_certificate"
    assert refusal.tenant is None  # no tenant has a mode of its own: no lookup
    assert refusal.peer == "203.0.113.7" or refusal.peer is None
    assert exempt.exempt
    assert exempt.access == "exempt"


def test_observer_must_have_the_methods(make_gate: GateFactory) -> None:
    with pytest.raises(TypeError, match="on_decision"):
        make_gate(observers=[object()])


def test_expiring_certificate_gives_one_event_per_verification(
    pki: PKI, make_gate: GateFactory
) -> None:
    recorder = Recorder()
    gate = make_gate(observers=[recorder])
    mw = CertGateMiddleware(RecordingApp(), gate)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)
    chain = tls(pki, cn="short-lived", not_after=soon)
    for _ in range(3):
        assert run_http(mw, http_scope(host=ACME, tls_chain=chain)).status == 200
    (event,) = recorder.expiring
    assert event.tenant == "acme"
    assert 9 < event.days_left <= 10
    assert "short-lived" in event.subject
    run_http(mw, http_scope(host=ACME, tls_chain=tls(pki, cn="long-lived")))
    assert len(recorder.expiring) == 1
    quiet = Recorder()
    mw = CertGateMiddleware(RecordingApp(), make_gate(observers=[quiet], expiry_warning_days=0))
    run_http(mw, http_scope(host=ACME, tls_chain=chain))
    assert quiet.expiring == []


# -- configuration -------------------------------------------------------------------


def test_toml_routes_modes_and_tenant_mode(pki: PKI, tmp_path: Path) -> None:
    acme = pki["acme"]
    (tmp_path / "acme.pem").write_bytes(acme.roots[0].cert.public_bytes(Encoding.PEM))
    config = tmp_path / "certgate.toml"
    config.write_text(
        """
[certgate]
access = "optional"
mode = "enforce"
refusal_format = "text"
expiry_warning_days = 14

[[certgate.routes]]
path = "/devices/*"
access = "require"

[[certgate.routes]]
path = "/beta/*"
mode = "report"

[[tenants]]
id = "acme"
hosts = ["pay.acme.test"]
roots = ["acme.pem"]
mode = "report"
"""
    )
    gate = CertGate.from_toml(config)
    assert gate.rollout.rule("/").access is Access.OPTIONAL
    assert gate.rollout.rule("/devices/1").access is Access.REQUIRE
    assert gate.rollout.rule("/beta/1").mode is Mode.REPORT
    assert gate.expiry_warning_days == 14
    assert gate.refusal(Reason.NO_CERTIFICATE).headers[0][1].startswith("text/plain")
    app = RecordingApp()
    result = run_http(CertGateMiddleware(app, gate), http_scope(host=ACME, path="/devices/1"))
    assert result.status == 200  # the tenant reports only
    assert app.scope[DECISION_KEY].reason is Reason.NO_CERTIFICATE


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ('[certgate]\nmode = "audit"\n', "mode must be"),
        ('[certgate]\naccess = "public"\n', "access must be one of"),
        ('[[certgate.routes]]\npath = "/a"\ncolour = "red"\n', "unknown key"),
        ('[[certgate.routes]]\naccess = "exempt"\n', "'path' must be a string"),
        ('[[certgate.routes]]\npath = "/*"\naccess = "exempt"\n', "exempts every path"),
        ('[[certgate.routes]]\npath = "/a"\nmode = "x"\n', "route /a"),
        ("[certgate]\nroutes = [1]\n", "is not a table"),
        ("[certgate]\npolicy = 1\n", "wrong type"),
    ],
)
def test_toml_rule_errors(tmp_path: Path, snippet: str, message: str) -> None:
    config = tmp_path / "certgate.toml"
    config.write_text(snippet)
    with pytest.raises(ConfigError, match=message):
        CertGate.from_toml(config)


def test_decision_is_false_for_a_report_only_refusal() -> None:
    refused = Decision(reason=Reason.NO_CERTIFICATE, mode="report")
    assert not refused
    assert not refused.blocks
    assert Decision(reason=Reason.NO_CERTIFICATE).blocks
    assert Decision()
    assert not Decision().blocks


def test_toml_policies_of_tenant_route_and_default(pki: PKI, tmp_path: Path) -> None:
    acme, globex = pki["acme"], pki["globex"]
    (tmp_path / "acme.pem").write_bytes(acme.roots[0].cert.public_bytes(Encoding.PEM))
    (tmp_path / "globex.pem").write_bytes(globex.roots[0].cert.public_bytes(Encoding.PEM))
    config = tmp_path / "certgate.toml"
    config.write_text(
        """
[certgate]
policy = { common_name = ["gw"] }

[[certgate.routes]]
path = "/admin/*"
policy = { not = { common_name = ["bob"] } }

[[tenants]]
id = "acme"
hosts = ["pay.acme.test"]
roots = ["acme.pem"]
policy = { any = [ { common_name = ["alice"] }, { common_name = ["bob"] } ] }

[[tenants]]
id = "globex"
hosts = ["api.globex.test"]
roots = ["globex.pem"]
"""
    )
    mw = CertGateMiddleware(RecordingApp(), CertGate.from_toml(config))

    def status(tenant: str, host: str, cn: str, path: str = "/") -> int | None:
        scope = http_scope(host=host, path=path, tls_chain=tls(pki, tenant, cn=cn))
        return run_http(mw, scope).status

    assert status("acme", ACME, "alice") == 200
    assert status("acme", ACME, "bob") == 200
    assert status("acme", ACME, "gw") == 403  # the tenant's policy replaces the default
    assert status("acme", ACME, "bob", "/admin/x") == 403  # the route's adds to it
    assert status("acme", ACME, "alice", "/admin/x") == 200
    assert status("globex", GLOBEX, "gw") == 200  # globex has no policy: the default
    assert status("globex", GLOBEX, "alice") == 403


def test_toml_policy_errors_name_the_place(pki: PKI, tmp_path: Path) -> None:
    acme = pki["acme"]
    (tmp_path / "acme.pem").write_bytes(acme.roots[0].cert.public_bytes(Encoding.PEM))
    config = tmp_path / "certgate.toml"
    base = '[[tenants]]\nid = "acme"\nhosts = ["pay.acme.test"]\nroots = ["acme.pem"]\n'
    config.write_text(base + 'policy = { common_nam = ["x"] }\n')
    with pytest.raises(ConfigError, match=r"tenant 'acme'.*common_nam"):
        CertGate.from_toml(config)
    config.write_text('[[certgate.routes]]\npath = "/a"\npolicy = { san_dns = [] }\n' + base)
    with pytest.raises(ConfigError, match=r"route /a.*san_dns"):
        CertGate.from_toml(config)
    config.write_text(base + 'policy = "cn=alice"\n')
    with pytest.raises(ConfigError, match="must be a table"):
        CertGate.from_toml(config)


class CountingRegistry:
    """An in-memory registry that counts host lookups."""

    blocking = False

    def __init__(self, inner: InMemoryRegistry, **attrs: Any) -> None:
        self.inner = inner
        self.lookups = 0
        for name, value in attrs.items():
            setattr(self, name, value)

    def tenant_for_host(self, host: str) -> Tenant | None:
        self.lookups += 1
        return self.inner.tenant_for_host(host)

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return self.inner.tenant_by_id(tenant_id)


def test_requests_without_certificate_cost_no_lookup_unless_a_tenant_mode_matters(
    pki: PKI,
) -> None:
    plain = pki.registry()
    assert plain.has_tenant_modes is False
    quiet = CountingRegistry(plain, has_tenant_modes=False)
    mw = CertGateMiddleware(RecordingApp(), CertGate(quiet))
    for n in range(20):
        assert run_http(mw, http_scope(host=f"h{n}.example.com")).reason == "no_certificate"
    assert quiet.lookups == 0
    # a run-time tenant override: the tenant's mode now matters
    gate = CertGate(quiet)
    gate.rollout.set_mode("report", tenant="acme")
    assert run_http(CertGateMiddleware(RecordingApp(), gate), http_scope(host=ACME)).status == 200
    assert quiet.lookups == 1
    # a registry that does not say: looked up (correct before cheap)
    unknown = CountingRegistry(plain)
    mw = CertGateMiddleware(RecordingApp(), CertGate(unknown))
    assert run_http(mw, http_scope(host=ACME)).reason == "no_certificate"
    assert unknown.lookups == 1
    # a path with a mode of its own never needs the tenant's
    gate = CertGate(unknown, routes=[Route("/beta/*", mode="enforce")])
    run_http(CertGateMiddleware(RecordingApp(), gate), http_scope(host=ACME, path="/beta/x"))
    assert unknown.lookups == 1
    acme = pki["acme"]
    moded = InMemoryRegistry(
        [Tenant(acme.id, acme.hosts, tuple(r.cert for r in acme.roots), mode="enforce")]
    )
    assert moded.has_tenant_modes is True
