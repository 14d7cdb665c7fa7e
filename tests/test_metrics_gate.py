"""Decision events and Prometheus metrics through a real gate and middleware.

``CertGate(observers=[...])`` with the dev PKI of conftest.py, driven through
the ASGI middleware (hand-built scopes) and the WSGI middleware (environs):
every request is counted once per tenant and reason; an expiring client
certificate gives one ExpiryEvent per verification, not one per request
answered from the verification cache.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from certgate import CertGate
from certgate.asgi import DECISION_KEY, CertGateMiddleware
from certgate.events import DecisionEvent, ExpiryEvent
from certgate.prometheus import PrometheusObserver
from certgate.rollout import Access, Route
from certgate.testing import RecordingObserver
from certgate.wsgi import CertGateWSGIMiddleware
from tests.conftest import PKI
from tests.test_asgi import RecordingApp, http_scope, pem_chain, run_http
from tests.test_wsgi import RecordingApp as WSGIRecordingApp
from tests.test_wsgi import call, make_environ, ssl_env

GateFactory = Callable[..., CertGate]

DECISIONS = "certgate_decisions_total"
EXPIRING = "certgate_expiring_certificates_total"
LATENCY = "certgate_decision_latency_seconds"


Recorder = RecordingObserver


def decisions(
    registry: CollectorRegistry,
    tenant: str,
    reason: str,
    source: str,
    *,
    mode: str = "enforce",
    stage: str = "request",
) -> float:
    value = registry.get_sample_value(
        DECISIONS,
        {"tenant": tenant, "reason": reason, "mode": mode, "stage": stage, "source": source},
    )
    return 0.0 if value is None else value


def expiring(registry: CollectorRegistry, tenant: str) -> float:
    value = registry.get_sample_value(EXPIRING, {"tenant": tenant})
    return 0.0 if value is None else value


def in_days(days: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=days)


def test_asgi_counts_decisions_per_tenant_and_reason(pki: PKI, make_gate: GateFactory) -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    gate = make_gate(observers=[PrometheusObserver(registry), recorder])
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    globex = pki["globex"].client("globex-device")
    acme = pki["acme"].client("acme-device")
    for _ in range(3):
        assert run_http(mw, http_scope(tls_chain=pem_chain(globex))).status == 200
    assert run_http(mw, http_scope(host="pay.acme.test", tls_chain=pem_chain(acme))).status == 200
    # another tenant's certificate, no certificate, a host no tenant serves
    assert run_http(mw, http_scope(tls_chain=pem_chain(acme))).reason == "untrusted_chain"
    assert run_http(mw, http_scope()).reason == "no_certificate"
    for i in range(5):  # distinct unknown hosts and paths make no series
        scope = http_scope(host=f"h{i}.unknown.test", path=f"/p{i}", tls_chain=pem_chain(acme))
        assert run_http(mw, scope).reason == "unknown_tenant"

    assert decisions(registry, "globex", "allowed", "asgi_tls") == 3
    assert decisions(registry, "acme", "allowed", "asgi_tls") == 1
    assert decisions(registry, "globex", "untrusted_chain", "asgi_tls") == 1
    assert decisions(registry, "_none", "no_certificate", "none") == 1
    assert decisions(registry, "_none", "unknown_tenant", "asgi_tls") == 5
    total = registry.get_sample_value(
        f"{LATENCY}_count", {"stage": "request", "outcome": "allowed"}
    )
    assert total == 4
    refused = registry.get_sample_value(
        f"{LATENCY}_count", {"stage": "request", "outcome": "refused"}
    )
    assert refused == 7

    # the events carry what the labels leave out
    assert len(recorder.decisions) == 11
    first = recorder.decisions[0]
    assert first.tenant == "globex"
    assert first.source == "asgi_tls"
    assert first.fingerprint == hashlib.sha256(globex.der).hexdigest()
    assert first.reason is None
    assert first.path == "/"
    assert first.latency_s > 0
    unknown = recorder.decisions[-1]
    assert unknown.reason == "unknown_tenant"
    assert unknown.path == "/p4"
    assert unknown.host is not None
    assert "h4.unknown.test" in unknown.host


def test_wsgi_counts_decisions_per_tenant_and_reason(pki: PKI, make_gate: GateFactory) -> None:
    registry = CollectorRegistry()
    gate = make_gate(observers=[PrometheusObserver(registry, tenant_label=False)])
    mw = CertGateWSGIMiddleware(WSGIRecordingApp(), gate)
    acme = pki["acme"].client("acme-device")
    for _ in range(2):
        environ = make_environ(host="pay.acme.test", **ssl_env(acme))
        assert call(mw, environ).status == "200 OK"
    assert call(mw, make_environ(**ssl_env(acme))).reason == "untrusted_chain"
    assert call(mw, make_environ(host="initech.test")).reason == "no_certificate"
    assert decisions(registry, "_all", "allowed", "wsgi_environ") == 2
    assert decisions(registry, "_all", "untrusted_chain", "wsgi_environ") == 1
    assert decisions(registry, "_all", "no_certificate", "none") == 1
    assert decisions(registry, "acme", "allowed", "wsgi_environ") == 0


def test_expiring_certificate_once_per_verification(
    pki: PKI, make_gate: GateFactory, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    gate = make_gate(observers=[PrometheusObserver(registry), recorder])
    mw = CertGateMiddleware(RecordingApp(), gate)
    soon = pki["globex"].client("expires-soon", not_after=in_days(10))
    later = pki["globex"].client("expires-later", not_after=in_days(90))
    with caplog.at_level(logging.WARNING, logger="certgate"):
        for _ in range(4):  # one verification, three answers from the cache
            assert run_http(mw, http_scope(tls_chain=pem_chain(soon))).status == 200
            assert run_http(mw, http_scope(tls_chain=pem_chain(later))).status == 200
    assert decisions(registry, "globex", "allowed", "asgi_tls") == 8
    assert expiring(registry, "globex") == 1
    (event,) = recorder.expiring
    assert event.tenant == "globex"
    assert event.fingerprint == hashlib.sha256(soon.der).hexdigest()
    assert 9 < event.days_left <= 10
    assert "expires-soon" in event.subject
    warnings = [r for r in caplog.records if "expires in" in r.getMessage()]
    assert len(warnings) == 1

    # a second certificate expiring soon is its own verification
    other = pki["globex"].client("also-soon", not_after=in_days(3))
    assert run_http(mw, http_scope(tls_chain=pem_chain(other))).status == 200
    assert expiring(registry, "globex") == 2


def test_expiring_is_per_verification_without_a_cache(pki: PKI, make_gate: GateFactory) -> None:
    registry = CollectorRegistry()
    gate = make_gate(observers=[PrometheusObserver(registry)], cache_size=0)
    mw = CertGateMiddleware(RecordingApp(), gate)
    soon = pki["globex"].client("expires-soon", not_after=in_days(10))
    for _ in range(3):
        assert run_http(mw, http_scope(tls_chain=pem_chain(soon))).status == 200
    assert expiring(registry, "globex") == 3  # every request was a verification


def test_a_raising_observer_never_changes_a_decision(pki: PKI, make_gate: GateFactory) -> None:
    class Broken:
        def on_decision(self, event: DecisionEvent) -> None:
            raise RuntimeError("metrics backend down")

        def on_expiring(self, event: ExpiryEvent) -> None:
            raise RuntimeError("metrics backend down")

    registry = CollectorRegistry()
    gate = make_gate(observers=[Broken(), PrometheusObserver(registry)])
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    soon = pki["globex"].client("expires-soon", not_after=in_days(10))
    assert run_http(mw, http_scope(tls_chain=pem_chain(soon))).status == 200
    assert run_http(mw, http_scope()).reason == "no_certificate"
    assert len(app.scopes) == 1
    assert decisions(registry, "globex", "allowed", "asgi_tls") == 1
    assert decisions(registry, "_none", "no_certificate", "none") == 1
    assert expiring(registry, "globex") == 1


def test_optional_exempt_and_report_only_paths(pki: PKI, make_gate: GateFactory) -> None:
    registry = CollectorRegistry()
    gate = make_gate(
        observers=[PrometheusObserver(registry)],
        exempt_paths=["/health"],
        routes=[Route("/public/*", access=Access.OPTIONAL)],
    )
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    globex = pki["globex"].client("globex-device")
    acme = pki["acme"].client("acme-device")
    assert run_http(mw, http_scope(path="/health")).status == 200
    assert run_http(mw, http_scope(path="/public/x")).status == 200
    assert run_http(mw, http_scope(path="/public/y", tls_chain=pem_chain(globex))).status == 200
    # optional still verifies what is presented
    assert run_http(mw, http_scope(path="/public/z", tls_chain=pem_chain(acme))).status == 403

    gate.rollout.set_mode("report")  # at run time: refusals counted, requests pass
    assert run_http(mw, http_scope(tls_chain=pem_chain(acme))).status == 200
    assert run_http(mw, http_scope()).status == 200
    assert run_http(mw, http_scope(tls_chain=pem_chain(globex))).status == 200

    assert decisions(registry, "_none", "exempt", "none") == 1
    assert decisions(registry, "_none", "anonymous", "none") == 1
    assert decisions(registry, "globex", "allowed", "asgi_tls") == 1
    assert decisions(registry, "globex", "untrusted_chain", "asgi_tls") == 1
    assert decisions(registry, "globex", "untrusted_chain", "asgi_tls", mode="report") == 1
    assert decisions(registry, "_none", "no_certificate", "none", mode="report") == 1
    assert decisions(registry, "globex", "allowed", "asgi_tls", mode="report") == 1
    assert len(app.scopes) == 6


def test_route_stage_decisions_are_counted(pki: PKI, make_gate: GateFactory) -> None:
    registry = CollectorRegistry()
    gate = make_gate(
        observers=[PrometheusObserver(registry)],
        routes=[Route("/public/*", access=Access.OPTIONAL)],
    )
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    globex = pki["globex"].client("globex-device")
    run_http(mw, http_scope(path="/public/a"))
    run_http(mw, http_scope(path="/public/b", tls_chain=pem_chain(globex)))
    anonymous, verified = (scope[DECISION_KEY] for scope in app.scopes)
    host = "api.globex.test"
    assert gate.authorize_route(verified, None, path="/public/b", host=host).reason is None
    refused = gate.authorize_route(anonymous, None, path="/public/a", host=host)
    assert refused.blocks
    assert gate.authorize_route(None, None, path="/public/c", host=host).blocks
    assert decisions(registry, "globex", "allowed", "asgi_tls", stage="route") == 1
    assert decisions(registry, "_none", "no_certificate", "none", stage="route") == 1
    assert decisions(registry, "_none", "internal_error", "none", stage="route") == 1
    routed = registry.get_sample_value(f"{LATENCY}_count", {"stage": "route", "outcome": "refused"})
    assert routed == 2


@pytest.mark.parametrize(("window", "expected"), [(0, 0), (5, 0), (11, 1), (30, 1)])
def test_expiry_warning_window(
    pki: PKI, make_gate: GateFactory, window: float, expected: int
) -> None:
    registry = CollectorRegistry()
    gate = make_gate(observers=[PrometheusObserver(registry)], expiry_warning_days=window)
    mw = CertGateWSGIMiddleware(WSGIRecordingApp(), gate)
    soon = pki["acme"].client("expires-soon", not_after=in_days(10))
    for _ in range(3):
        assert call(mw, make_environ(host="pay.acme.test", **ssl_env(soon))).status == "200 OK"
    assert expiring(registry, "acme") == expected
