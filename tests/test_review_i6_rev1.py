"""Adversarial review of issue 6 (core): path rules, modes, the pipeline and
refusal formats. Each test reproduces one finding through the public
interface and failed before its fix."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from flask import Flask

from certgate import CertGate, ConfigError, InMemoryRegistry, Reason, Tenant
from certgate import policy as p
from certgate.asgi import DECISION_KEY, CertGateMiddleware
from certgate.errors import ClientCertificateRefused
from certgate.flask import CertGateFlask
from certgate.rollout import Route
from certgate.wsgi import CertGateWSGIMiddleware
from tests.conftest import PKI
from tests.test_asgi import (
    RecordingApp,
    Result,
    _collect,
    http_scope,
    pem_chain,
    run_http,
    run_ws,
)

GateFactory = Callable[..., CertGate]
ACME = "pay.acme.test"


def tls(pki: PKI, tenant: str = "acme", cn: str = "dev1", **kwargs: Any) -> list[str]:
    return pem_chain(pki[tenant].client(cn, **kwargs))


# -- a tenant resolver on requests without a certificate ---------------------------


def _fragile_resolver(facts: Any) -> str | None:
    """A resolver written for requests of devices: it assumes a dotted Host."""
    return str(facts.host.split(".")[1])  # IndexError on "nodots"


def test_resolver_failure_keeps_the_optional_anonymous_allow(make_gate: GateFactory) -> None:
    """Issue 6 made the gate call the tenant resolver on requests without a
    certificate (to find the tenant's mode). A resolver that fails on such a
    request turned an anonymous request on an optional path into a 403
    internal_error, and an ordinary no_certificate refusal into an
    internal_error with a traceback per request (any client, no certificate
    needed)."""
    gate = make_gate(tenant_resolver=_fragile_resolver, routes=[Route("/pub/*", access="optional")])
    mw = CertGateMiddleware(RecordingApp(), gate)
    assert run_http(mw, http_scope(host="nodots", path="/pub/x")).status == 200
    refused = run_http(mw, http_scope(host="nodots", path="/private"))
    assert refused.status == 403
    assert refused.reason == "no_certificate"  # as before issue 6


def test_resolver_failure_still_refuses_a_presented_certificate(
    pki: PKI, make_gate: GateFactory
) -> None:
    gate = make_gate(tenant_resolver=_fragile_resolver, access="optional")
    mw = CertGateMiddleware(RecordingApp(), gate)
    result = run_http(mw, http_scope(host="nodots", tls_chain=tls(pki)))
    assert result.status == 403
    assert result.reason == "internal_error"


# -- WSGI: route rules on non-ASCII paths ---------------------------------------------


def _flask_app(gate: CertGate) -> Flask:
    app = Flask(__name__)

    @app.get("/café/<name>")
    def cafe(name: str) -> str:
        return "served " + name

    CertGateFlask(app, gate)
    return app


def _wsgi_cert(pki: PKI, cn: str) -> dict[str, str]:
    pems = pem_chain(pki["acme"].client(cn))
    environ = {"SSL_CLIENT_CERT": pems[0]}
    environ.update({f"SSL_CLIENT_CERT_CHAIN_{i}": pem for i, pem in enumerate(pems[1:])})
    return environ


def test_wsgi_route_policy_applies_to_a_non_ascii_path(pki: PKI, make_gate: GateFactory) -> None:
    """PATH_INFO is UTF-8 bytes decoded as latin-1 (PEP 3333); Flask routes on
    the UTF-8 text. A route policy on "/café/*" never matched under WSGI, so
    any device of the tenant reached the route (ASGI applied it)."""
    gate = make_gate(routes=[Route("/café/*", policy=p.common_name("alice"))])
    client = _flask_app(gate).test_client()
    base = "https://" + ACME
    mallory = client.get("/caf%C3%A9/x", base_url=base, environ_base=_wsgi_cert(pki, "mallory"))
    assert mallory.status_code == 403
    assert mallory.json is not None
    assert mallory.json["reason"] == "policy_denied"
    alice = client.get("/caf%C3%A9/x", base_url=base, environ_base=_wsgi_cert(pki, "alice"))
    assert alice.status_code == 200
    assert alice.text == "served x"
    # and the ASGI middleware agrees
    mw = CertGateMiddleware(RecordingApp(), gate)
    scope = http_scope(host=ACME, path="/café/x", tls_chain=tls(pki, cn="mallory"))
    assert run_http(mw, scope).status == 403


def test_wsgi_exempt_non_ascii_path(make_gate: GateFactory) -> None:
    gate = make_gate(exempt_paths=["/café/*"])
    client = _flask_app(gate).test_client()
    assert client.get("/caf%C3%A9/x", base_url="https://" + ACME).status_code == 200
    assert client.get("/caf%C3%A9/../x", base_url="https://" + ACME).status_code == 403


# -- custom refusal formats --------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain; x=\u2603", "text/plain\x00", "text/plain\x7f", "a\x0bb", ""]
)
def test_custom_content_type_that_is_no_header_value_gives_the_default(
    make_gate: GateFactory, content_type: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A custom refusal callable returning a content type that cannot be an
    HTTP header value: a non-latin-1 character made the ASGI middleware
    raise (a 500), a NUL or control character was handed to the server."""
    gate = make_gate(refusal_format=lambda reason: (content_type, b"refused"))
    caplog.set_level(logging.ERROR, "certgate")
    result = run_http(CertGateMiddleware(RecordingApp(), gate), http_scope(host=ACME))
    assert result.status == 403
    assert result.reason == "no_certificate"  # the default body
    assert any("refusal_format" in r.getMessage() for r in caplog.records)
    status: list[str] = []
    wsgi = CertGateWSGIMiddleware(lambda e, s: [b""], gate)
    body = b"".join(
        wsgi({"HTTP_HOST": ACME, "PATH_INFO": "/"}, lambda s, h, e=None: status.append(s))  # type: ignore[arg-type]
    )
    assert status == ["403 Forbidden"]
    assert b"no_certificate" in body


def test_custom_content_type_with_parameters_is_kept(make_gate: GateFactory) -> None:
    gate = make_gate(refusal_format=lambda reason: ('text/plain; charset="utf-8"', b"no"))
    result = run_http(CertGateMiddleware(RecordingApp(), gate), http_scope(host=ACME))
    assert result.headers["content-type"] == 'text/plain; charset="utf-8"'
    assert result.body == b"no"


# -- a route refusal raised after the response started -----------------------------


def test_route_refusal_after_the_response_started_sends_no_second_response(
    make_gate: GateFactory,
) -> None:
    """The middleware answered a ClientCertificateRefused with a full
    refusal even when the app had already sent ``http.response.start``
    (a check inside a streaming body): two response starts, which a server
    treats as a protocol error. The docstring promised "if the response has
    not started"."""

    async def streams_then_refuses(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ClientCertificateRefused(Reason.POLICY_DENIED)

    mw = CertGateMiddleware(streams_then_refuses, make_gate(access="optional"))
    sent: list[dict[str, Any]] = []

    async def drive() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            sent.append(message)

        await mw(http_scope(host=ACME), receive, send)

    with pytest.raises(ClientCertificateRefused):  # the server closes the connection
        asyncio.run(drive())
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [200]


def test_route_refusal_before_the_response_started_is_answered(make_gate: GateFactory) -> None:
    async def refuses(scope: Any, receive: Any, send: Any) -> None:
        raise ClientCertificateRefused(Reason.POLICY_DENIED)

    result = run_http(
        CertGateMiddleware(refuses, make_gate(access="optional")), http_scope(host=ACME)
    )
    assert result.status == 403
    assert result.reason == "policy_denied"


def test_websocket_route_refusal_after_accept_closes_with_1008(make_gate: GateFactory) -> None:
    async def accepts_then_refuses(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        raise ClientCertificateRefused(Reason.POLICY_DENIED)

    mw = CertGateMiddleware(accepts_then_refuses, make_gate(access="optional"))
    result: Result = run_ws(mw, http_scope(host=ACME, scope_type="websocket"))
    assert [m["type"] for m in result.sent] == ["websocket.accept", "websocket.close"]
    assert result.sent[-1]["code"] == 1008


# -- modes -------------------------------------------------------------------------


def test_route_check_on_an_exempt_path_follows_the_global_report_mode(
    make_gate: GateFactory,
) -> None:
    """README: "Route-level checks (decorators, dependencies) follow the same
    mode." On an exempt path the middleware's decision was always
    ``enforce``, so in global report mode a route check there still blocked."""
    gate = make_gate(exempt_paths=["/healthz"], mode="report")
    app = RecordingApp()
    run_http(CertGateMiddleware(app, gate), http_scope(host=ACME, path="/healthz"))
    decision = app.scope[DECISION_KEY]
    assert decision.mode == "report"
    result = gate.authorize_route(decision, p.any_certificate(), path="/healthz", host=ACME)
    assert result.reason is Reason.NO_CERTIFICATE
    assert not result.blocks
    gate.rollout.set_mode("enforce")
    app.scopes.clear()
    run_http(CertGateMiddleware(app, gate), http_scope(host=ACME, path="/healthz"))
    assert gate.authorize_route(app.scope[DECISION_KEY], None, path="/healthz").blocks


class _SlowRegistry:
    """A coroutine registry whose lookups wait until released."""

    def __init__(self, inner: InMemoryRegistry) -> None:
        self.inner = inner
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def tenant_for_host(self, host: str) -> Tenant | None:
        self.entered.set()
        await self.release.wait()
        return self.inner.tenant_for_host(host)

    async def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return self.inner.tenant_by_id(tenant_id)


def test_a_request_in_flight_keeps_the_mode_it_started_with(pki: PKI) -> None:
    """README: "the next request sees the change and a request in flight
    keeps the snapshot it started with". The path rule was read before the
    registry lookup and the global/tenant modes after it, so a request that
    started in report mode was refused by a set_mode("enforce") made while
    its lookup was running."""

    async def scenario() -> tuple[Result, Result]:
        registry = _SlowRegistry(pki.registry())
        gate = CertGate(registry, mode="report")
        mw = CertGateMiddleware(RecordingApp(), gate)

        async def request() -> Result:
            sent: list[Any] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b""}

            async def send(message: Any) -> None:
                sent.append(message)

            await mw(http_scope(host=ACME), receive, send)
            return _collect(sent)

        in_flight = asyncio.create_task(request())
        await registry.entered.wait()
        gate.rollout.set_mode("enforce")  # while the lookup runs
        registry.release.set()
        started_in_report = await in_flight
        after = await request()
        return started_in_report, after

    started_in_report, after = asyncio.run(scenario())
    assert started_in_report.status == 200
    assert after.status == 403


# -- policies --------------------------------------------------------------------


def test_san_rules_never_match_non_ascii_lookalikes(pki: PKI, make_gate: GateFactory) -> None:
    """cryptography accepts a DNS or email SAN with non-ASCII characters, and
    str.lower() folds some of them into ASCII: KELVIN SIGN (U+212A) lowers to
    'k'. A certificate for '\u212aey.acme.test' (not 'key.acme.test', which a
    CA checking names would see as taken) satisfied san_dns('key.acme.test')."""
    kelvin = "\u212aey"
    names = [
        x509.DNSName._init_without_validation(f"{kelvin}.acme.test"),
        x509.DNSName._init_without_validation(f"a.{kelvin}.test"),
        x509.RFC822Name._init_without_validation(f"ops@{kelvin}.test"),
    ]
    leaf = pki["acme"].client("x", extra_extensions=[(x509.SubjectAlternativeName(names), False)])
    decision = make_gate().check(ACME, leaf.chain_ders)
    identity = decision.identity
    assert identity is not None  # cryptography's verifier accepts the names
    for rule in (
        p.san_dns("key.acme.test"),
        p.san_dns("*.key.test"),
        p.san_email("ops@key.test"),
        p.san_email("*@key.test"),
    ):
        assert rule.check(identity, identity.not_before) is not None, rule.label


def test_websocket_route_refusal_after_the_app_took_connect(make_gate: GateFactory) -> None:
    """A check that raises after the app received ``websocket.connect`` (but
    before accept): the middleware waited for a second connect message that
    never comes, and sent nothing (with the test driver: a disconnect)."""

    async def takes_connect_then_refuses(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise ClientCertificateRefused(Reason.POLICY_DENIED)

    mw = CertGateMiddleware(takes_connect_then_refuses, make_gate(access="optional"))
    result = run_ws(mw, http_scope(host=ACME, scope_type="websocket"))
    assert [m["type"] for m in result.sent] == ["websocket.close"]
    assert result.sent[-1]["code"] == 1008


@pytest.mark.parametrize("with_certificate", [False, True])
def test_a_report_only_path_covers_refusals_made_before_the_tenant_lookup(
    pki: PKI, make_gate: GateFactory, with_certificate: bool
) -> None:
    """Refusals reached before the tenant lookup (no usable Host: the
    request's ``no_certificate``, or ``invalid_host`` for a certificate)
    were given the global mode, not the path's: on a report-only path they
    still blocked, and an optional path's decision said ``access=require``."""
    recorder = _Recorder()
    gate = make_gate(routes=[Route("/beta/*", mode="report")], observers=[recorder])
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    chain = tls(pki) if with_certificate else None
    result = run_http(mw, http_scope(host=None, path="/beta/x", tls_chain=chain))
    assert result.status == 200
    assert app.scope[DECISION_KEY].mode == "report"
    assert recorder.events[-1].mode == "report"
    assert run_http(mw, http_scope(host=None, path="/x", tls_chain=chain)).status in (400, 403)


def test_optional_path_decision_without_host_says_optional(make_gate: GateFactory) -> None:
    gate = make_gate(routes=[Route("/pub/*", access="optional")])
    app = RecordingApp()
    assert (
        run_http(CertGateMiddleware(app, gate), http_scope(host=None, path="/pub/x")).status == 200
    )
    assert app.scope[DECISION_KEY].access == "optional"


class _Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def on_decision(self, event: Any) -> None:
        self.events.append(event)

    def on_expiring(self, event: Any) -> None:
        pass


@pytest.mark.parametrize("days", ["nan", "inf", "-1.0"])
def test_expiry_warning_days_out_of_range_is_a_config_error(
    tmp_path: Any, days: str, make_gate: GateFactory
) -> None:
    """TOML allows nan and inf: ``nan`` silently switched the warning off and
    ``inf`` warned on every verification; a negative value switched it off
    although the README documents 0 as "off"."""
    config = tmp_path / "certgate.toml"
    config.write_text(f"[certgate]\nexpiry_warning_days = {days}\n")
    with pytest.raises(ConfigError, match="expiry_warning_days"):
        CertGate.from_toml(config)
    with pytest.raises(ConfigError, match="expiry_warning_days"):
        make_gate(expiry_warning_days=float(days))
    assert make_gate(expiry_warning_days=0).expiry_warning_days == 0
