"""The gate's decision memo (issue 7's hot path): a warm allow is answered
from a memo keyed by the raw Host and the presented certificate - and never
once anything it depended on changed.

Each test makes the memo hold an allow (two identical requests: the second
promotes the key), changes one input, and checks that the third request is
decided afresh.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import pytest

from certgate import CertGate, InMemoryRegistry, Reason, Tenant
from certgate.asgi import DECISION_KEY, CertGateMiddleware
from certgate.devpki import IssuedCert
from certgate.policy import common_name
from certgate.rollout import Route
from certgate.testing import RecordingObserver
from tests.conftest import PKI
from tests.test_asgi import RecordingApp, http_scope, pem_chain, run_http

HOST = "api.globex.test"  # globex devices are issued by its root: the leaf alone verifies
OTHER = "pay.acme.test"
PROXY = ("10.1.2.3", 40000)


def cf_scope(client: IssuedCert, host: str = HOST, path: str = "/", sha: bool = True) -> Any:
    headers = [(b"cf-client-cert-der-base64", base64.b64encode(client.der))]
    if sha:
        headers.append((b"cf-client-cert-sha256", hashlib.sha256(client.der).hexdigest().encode()))
    scope = http_scope(host=host, path=path, headers=headers)
    scope["certgate.socket_peer"] = PROXY
    return scope


def header_gate(registry: Any, **kwargs: Any) -> CertGate:
    return CertGate(
        registry, trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"], **kwargs
    )


def twice(mw: CertGateMiddleware, scope_of: Callable[[], Any]) -> None:
    for _ in range(2):
        assert run_http(mw, scope_of()).status == 200


def test_a_warm_allow_is_remembered_and_served_from_the_memo(pki: PKI) -> None:
    gate = header_gate(pki.registry())
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    client = pki["globex"].client("memo-1")
    twice(mw, lambda: cf_scope(client))
    assert gate._memo is not None
    assert any(entry is not None for entry in gate._memo.values())
    hits = gate.cache.hits
    assert run_http(mw, cf_scope(client)).status == 200
    assert gate.cache.hits == hits  # answered before the verification cache
    decisions = [scope[DECISION_KEY] for scope in app.scopes]
    assert decisions[-1] is decisions[-2]  # the very decision remembered


def test_a_changed_registry_is_never_served_from_the_memo(pki: PKI) -> None:
    registry = pki.registry()
    mw = CertGateMiddleware(RecordingApp(), header_gate(registry))
    client = pki["globex"].client("memo-2")
    twice(mw, lambda: cf_scope(client))
    other_root = pki.rogue.cert
    globex = pki["globex"]
    registry.put(Tenant(globex.id, globex.hosts, (other_root,)))  # now trusts another root
    result = run_http(mw, cf_scope(client))
    assert result.status == 403
    assert result.reason == "untrusted_chain"


def test_a_removed_tenant_is_never_served_from_the_memo(pki: PKI) -> None:
    registry = pki.registry()
    mw = CertGateMiddleware(RecordingApp(), header_gate(registry))
    client = pki["globex"].client("memo-3")
    twice(mw, lambda: cf_scope(client))
    registry.remove("globex")
    assert run_http(mw, cf_scope(client)).reason == "unknown_tenant"


def test_a_rollout_change_is_never_served_from_the_memo(pki: PKI) -> None:
    gate = header_gate(pki.registry())
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    client = pki["globex"].client("memo-4")
    twice(mw, lambda: cf_scope(client))
    gate.rollout.set_route(Route("/", policy=common_name("someone-else")))
    assert run_http(mw, cf_scope(client)).reason == "policy_denied"
    gate.rollout.remove_route("/")
    twice(mw, lambda: cf_scope(client))
    gate.rollout.set_mode("report")
    assert run_http(mw, cf_scope(client)).status == 200
    assert app.scopes[-1][DECISION_KEY].mode == "report"


def test_a_cleared_cache_is_never_served_from_the_memo(pki: PKI) -> None:
    gate = header_gate(pki.registry())
    mw = CertGateMiddleware(RecordingApp(), gate)
    client = pki["globex"].client("memo-5")
    twice(mw, lambda: cf_scope(client))
    gate.cache.clear()
    misses = gate.cache.misses
    assert run_http(mw, cf_scope(client)).status == 200
    assert gate.cache.misses == misses + 1  # verified again


def test_an_expired_certificate_is_never_served_from_the_memo(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = header_gate(pki.registry())
    mw = CertGateMiddleware(RecordingApp(), gate)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    client = pki["globex"].client("memo-6", not_after=soon)
    twice(mw, lambda: cf_scope(client))
    import time

    later = soon.timestamp() + 60
    monkeypatch.setattr(time, "time", lambda: later)
    result = run_http(mw, cf_scope(client))
    assert result.status == 403
    assert result.reason == "expired"


def test_other_bytes_host_or_peer_are_other_keys(pki: PKI) -> None:
    gate = header_gate(pki.registry())
    mw = CertGateMiddleware(RecordingApp(), gate)
    alice = pki["globex"].client("memo-7")
    twice(mw, lambda: cf_scope(alice))
    # the same certificate with a wrong forwarded fingerprint: not a memo hit
    forged = cf_scope(alice)
    forged["headers"] = [
        (n, b"0" * 64 if n == b"cf-client-cert-sha256" else v) for n, v in forged["headers"]
    ]
    assert run_http(mw, forged).reason == "fingerprint_mismatch"
    # another tenant's host: verified for that tenant
    assert run_http(mw, cf_scope(alice, host=OTHER)).reason == "untrusted_chain"
    # the same headers from an untrusted peer: stripped, no certificate
    untrusted = cf_scope(alice)
    untrusted["certgate.socket_peer"] = ("203.0.113.9", 1)
    assert run_http(mw, untrusted).reason == "no_certificate"


def test_routes_with_rules_are_never_remembered(pki: PKI) -> None:
    gate = header_gate(pki.registry(), routes=[Route("/admin/*", policy=common_name("root"))])
    mw = CertGateMiddleware(RecordingApp(), gate)
    client = pki["globex"].client("memo-8")
    for _ in range(3):
        assert run_http(mw, cf_scope(client, path="/admin/x")).reason == "policy_denied"
    assert gate._memo is not None
    assert not gate._memo


def test_tenants_with_a_policy_are_never_remembered(pki: PKI) -> None:
    globex = pki["globex"]
    registry = InMemoryRegistry(
        [
            Tenant(
                globex.id,
                globex.hosts,
                tuple(r.cert for r in globex.roots),
                policy=common_name("a"),
            )
        ]
    )
    gate = header_gate(registry)
    mw = CertGateMiddleware(RecordingApp(), gate)
    client = globex.client("a")
    twice(mw, lambda: cf_scope(client))
    assert gate._memo is not None
    assert all(entry is None for entry in gate._memo.values())


def test_the_memo_is_off_where_it_could_not_see_a_change(pki: PKI) -> None:
    class Plain:  # a custom registry: no change_token
        blocking = False

        def __init__(self) -> None:
            self.inner = pki.registry()

        def tenant_for_host(self, host: str) -> Tenant | None:
            return self.inner.tenant_for_host(host)

        def tenant_by_id(self, tenant_id: str) -> Tenant | None:
            return self.inner.tenant_by_id(tenant_id)

    assert header_gate(Plain())._memo is None
    assert header_gate(pki.registry(), cache_size=0)._memo is None
    assert header_gate(pki.registry(), observers=[RecordingObserver()])._memo is None
    fixed = dt.datetime.now(dt.UTC)
    assert header_gate(pki.registry(), clock=lambda: fixed)._memo is None
    assert header_gate(pki.registry(), tenant_resolver=lambda facts: "globex")._memo is None


def test_debug_logging_sees_every_allow(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    gate = header_gate(pki.registry())
    mw = CertGateMiddleware(RecordingApp(), gate)
    client = pki["globex"].client("memo-9")
    twice(mw, lambda: cf_scope(client))
    caplog.set_level(logging.DEBUG, "certgate")
    assert run_http(mw, cf_scope(client)).status == 200
    assert any("allowed" in r.getMessage() for r in caplog.records)


def test_tls_connections_are_remembered_by_chain_digest(pki: PKI) -> None:
    gate = CertGate(pki.registry())
    mw = CertGateMiddleware(RecordingApp(), gate)
    chain = pem_chain(pki["globex"].client("memo-10"))
    tls = {"client_cert_chain": chain, "client_cert_error": None}

    def scope() -> Any:
        sc = http_scope(host=HOST)
        sc["extensions"] = {"tls": tls}  # one dict per connection, as the adapter does
        return sc

    twice(mw, scope)
    hits = gate.cache.hits
    assert run_http(mw, scope()).status == 200
    assert gate.cache.hits == hits
    other = pem_chain(pki["acme"].client("memo-11"))
    sc = http_scope(host=HOST)
    sc["extensions"] = {"tls": {"client_cert_chain": other, "client_cert_error": None}}
    assert run_http(mw, sc).reason == "untrusted_chain"
    errored = http_scope(host=HOST)
    errored["extensions"] = {"tls": {"client_cert_chain": chain, "client_cert_error": "bad"}}
    assert run_http(mw, errored).reason == Reason.UNTRUSTED_CHAIN.value


def test_a_default_policy_set_later_is_never_bypassed_by_the_memo(pki: PKI) -> None:
    gate = header_gate(pki.registry())
    mw = CertGateMiddleware(RecordingApp(), gate)
    client = pki["globex"].client("memo-12")
    twice(mw, lambda: cf_scope(client))
    gate.policy = common_name("someone-else")
    assert run_http(mw, cf_scope(client)).reason == "policy_denied"
