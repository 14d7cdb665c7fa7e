"""CertGateMiddleware driven in-process: hand-built ASGI scopes, a recording app.

The trust rules under test: forwarded certificate headers count only from a
trusted socket peer and are stripped from everyone else; the transport
certificate does not count on a trusted proxy's connection; the tenant is
the one the Host header addresses; every rejection is a problem+json answer
(or a refused WebSocket handshake) and the app never runs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from certgate import CertGate, InMemoryRegistry, Reason, Rejected, Tenant
from certgate.asgi import (
    DECISION_KEY,
    IDENTITY_KEY,
    SOCKET_PEER_KEY,
    CertGateMiddleware,
    Message,
    Scope,
    identity_from_scope,
    socket_peer,
)
from certgate.decision import Decision
from certgate.devpki import IssuedCert
from certgate.problem import problem_body
from tests.conftest import PKI

GateFactory = Callable[..., CertGate]

UNTRUSTED = ("203.0.113.7", 50123)
TRUSTED = ("10.1.2.3", 40000)
CF_CERT = b"cf-client-cert-der-base64"
CF_SHA = b"cf-client-cert-sha256"
CF_ALIAS = b"cf_client_cert_der_base64"
CF_SHA_ALIAS = b"cf_client_cert_sha256"


class RecordingApp:
    """An ASGI app that records every scope it is called with."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.messages: list[Message] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            await send({"type": "http.response.body", "body": b"app"})
        elif scope["type"] == "websocket":
            self.messages.append(await receive())
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.messages.append(message)
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    @property
    def scope(self) -> Scope:
        assert len(self.scopes) == 1
        return self.scopes[0]


@dataclass
class Result:
    sent: list[Message]
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def problem(self) -> dict[str, Any]:
        assert self.headers["content-type"] == "application/problem+json"
        document = json.loads(self.body)
        assert isinstance(document, dict)
        return document

    @property
    def reason(self) -> str:
        reason = self.problem()["reason"]
        assert isinstance(reason, str)
        return reason


def _collect(sent: list[Message]) -> Result:
    result = Result(sent=sent)
    for message in sent:
        if message["type"] in ("http.response.start", "websocket.http.response.start"):
            result.status = message["status"]
            result.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] in ("http.response.body", "websocket.http.response.body"):
            result.body += message.get("body", b"")
    return result


async def _drive(app: Any, scope: Scope, incoming: Iterable[Message]) -> Result:
    queue = list(incoming)
    sent: list[Message] = []

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return _collect(sent)


def run_http(app: Any, scope: Scope) -> Result:
    return asyncio.run(_drive(app, scope, [{"type": "http.request", "body": b""}]))


def run_ws(app: Any, scope: Scope) -> Result:
    return asyncio.run(_drive(app, scope, [{"type": "websocket.connect"}]))


def http_scope(
    *,
    host: str | None = "api.globex.test",
    path: str = "/",
    client: tuple[str, int] | None = UNTRUSTED,
    headers: Iterable[tuple[bytes, bytes]] = (),
    tls_chain: list[str] | None = None,
    scope_type: str = "http",
) -> Scope:
    raw: list[tuple[bytes, bytes]] = []
    if host is not None:
        raw.append((b"host", host.encode()))
    raw.extend(headers)
    raw.append((b"x-other", b"kept"))
    scope: Scope = {
        "type": scope_type,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": raw,
        "client": client,
        "server": ("127.0.0.1", 443),
        "extensions": {},
    }
    if tls_chain is not None:
        scope["extensions"]["tls"] = {"client_cert_chain": tls_chain, "client_cert_error": None}
    return scope


def pem_chain(client: IssuedCert) -> list[str]:
    end = "-----END CERTIFICATE-----\n"
    return [part + end for part in client.chain_pem.decode().split(end) if part.strip()]


def cf_headers(client: IssuedCert, sha: str | None = None) -> list[tuple[bytes, bytes]]:
    headers = [(CF_CERT, base64.b64encode(client.der))]
    if sha is not None:
        headers.append((CF_SHA, sha.encode()))
    return headers


def header_names(scope: Scope) -> list[bytes]:
    return [name for name, _ in scope["headers"]]


def cf_gate(make_gate: GateFactory, **kwargs: Any) -> CertGate:
    # These scopes model a server that reports the real TCP peer in
    # scope["client"]; test_unreported_peer_is_never_trusted covers the default.
    kwargs.setdefault("trust_reported_peer", True)
    return make_gate(trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"], **kwargs)


def assert_rejected(result: Result, app: RecordingApp, reason: Reason) -> None:
    assert result.status == reason.status
    assert result.reason == reason.value
    assert result.body == problem_body(reason)
    assert app.scopes == []


# -- (a) forged headers from an untrusted peer --------------------------------


def test_untrusted_cloudflare_header_is_ignored(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate))
    client = pki["globex"].client()
    sha = hashlib.sha256(client.der).hexdigest()
    result = run_http(mw, http_scope(headers=cf_headers(client, sha)))
    assert_rejected(result, app, Reason.NO_CERTIFICATE)


def test_untrusted_cloudflare_header_stripped_when_transport_allows(
    pki: PKI, make_gate: GateFactory
) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate))
    transport_client = pki["globex"].client("transport")
    forged = pki["globex"].client("forged")
    scope = http_scope(
        headers=[*cf_headers(forged, "ab" * 32), (CF_SHA_ALIAS, b"x")],
        tls_chain=pem_chain(transport_client),
    )
    original_headers = list(scope["headers"])
    result = run_http(mw, scope)
    assert result.status == 200
    assert result.body == b"app"
    seen = app.scope
    assert header_names(seen) == [b"host", b"x-other"]
    identity = identity_from_scope(seen)
    assert identity is not None
    assert identity.source == "asgi_tls"
    assert identity.fingerprint_sha256 == hashlib.sha256(transport_client.der).hexdigest()
    # The caller's scope object is not edited in place.
    assert scope["headers"] == original_headers


def test_untrusted_cloudflare_header_does_not_rescue_other_tenant_transport(
    pki: PKI, make_gate: GateFactory
) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate))
    scope = http_scope(
        headers=cf_headers(pki["globex"].client()), tls_chain=pem_chain(pki["acme"].client())
    )
    assert_rejected(run_http(mw, scope), app, Reason.UNTRUSTED_CHAIN)


def test_untrusted_cloudflare_header_stripped_on_exempt_path(
    pki: PKI, make_gate: GateFactory
) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate, exempt_paths=["/healthz"]))
    headers = [*cf_headers(pki["globex"].client(), "00" * 32), (CF_ALIAS, b"AAAA")]
    result = run_http(mw, http_scope(path="/healthz", headers=headers))
    assert result.status == 200
    assert header_names(app.scope) == [b"host", b"x-other"]
    assert identity_from_scope(app.scope) is None


# -- (b) trusted proxy ----------------------------------------------------------


def test_trusted_cloudflare_header_accepted(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate))
    client = pki["globex"].client("cf-device")
    sha = hashlib.sha256(client.der).hexdigest()
    result = run_http(mw, http_scope(client=TRUSTED, headers=cf_headers(client, sha)))
    assert result.status == 200
    identity = identity_from_scope(app.scope)
    assert identity is not None
    assert identity.tenant_id == "globex"
    assert identity.source == "cloudflare"
    assert identity.common_name == "cf-device"
    assert identity.fingerprint_sha256 == sha
    decision = app.scope[DECISION_KEY]
    assert isinstance(decision, Decision)
    assert decision.tenant_id == "globex"
    assert decision.source == "cloudflare"
    # From a trusted proxy the headers reach the app unchanged.
    assert CF_CERT in header_names(app.scope)


def test_trusted_cloudflare_via_httpx(pki: PKI, make_gate: GateFactory) -> None:
    client = pki["initech"].client("httpx-device")

    async def go() -> tuple[httpx.Response, httpx.Response]:
        app = RecordingApp()
        mw = CertGateMiddleware(app, cf_gate(make_gate))
        headers = {
            "Cf-Client-Cert-Der-Base64": base64.b64encode(client.der).decode(),
            "Cf-Client-Cert-Sha256": hashlib.sha256(client.der).hexdigest().upper(),
        }
        trusted = httpx.ASGITransport(app=mw, client=("10.9.9.9", 1234))
        untrusted = httpx.ASGITransport(app=mw, client=("198.51.100.1", 1234))
        async with httpx.AsyncClient(transport=trusted, base_url="https://initech.test") as c:
            ok = await c.get("/x", headers=headers)
        async with httpx.AsyncClient(transport=untrusted, base_url="https://initech.test") as c:
            refused = await c.get("/x", headers=headers)
        identity = identity_from_scope(app.scope)
        assert identity is not None
        assert identity.tenant_id == "initech"
        assert identity.common_name == "httpx-device"
        return ok, refused

    ok, refused = asyncio.run(go())
    assert ok.status_code == 200
    assert ok.text == "app"
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["reason"] == "no_certificate"


def test_trusted_cloudflare_leaf_needs_configured_intermediate(
    pki: PKI, make_gate: GateFactory
) -> None:
    # acme clients must send their intermediate; Cloudflare forwards the leaf only.
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate))
    scope = http_scope(
        host="pay.acme.test", client=TRUSTED, headers=cf_headers(pki["acme"].client())
    )
    result = run_http(mw, scope)
    assert_rejected(result, app, Reason.UNTRUSTED_CHAIN)


# -- (c) fingerprint -------------------------------------------------------------


def test_cloudflare_sha256_mismatch(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate))
    client = pki["globex"].client()
    other = hashlib.sha256(pki["globex"].client().der).hexdigest()
    result = run_http(mw, http_scope(client=TRUSTED, headers=cf_headers(client, other)))
    assert_rejected(result, app, Reason.FINGERPRINT_MISMATCH)


# -- (d) the problem document ------------------------------------------------------


def test_rejection_body_is_problem_json_without_details(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, make_gate())
    client = pki["acme"].client("secret-device-name")
    result = run_http(mw, http_scope(tls_chain=pem_chain(client)))
    assert result.status == 403
    assert result.headers["content-type"] == "application/problem+json"
    assert result.headers["cache-control"] == "no-store"
    assert result.headers["content-length"] == str(len(result.body))
    document = result.problem()
    assert document == {
        "type": "urn:certgate:reason:untrusted_chain",
        "title": Reason.UNTRUSTED_CHAIN.summary,
        "status": 403,
        "reason": "untrusted_chain",
    }
    for leaked in (b"globex", b"acme", b"Acme", b"secret-device-name", b"detail", b"subject"):
        assert leaked not in result.body
    assert app.scopes == []


# -- (e) the ASGI tls extension --------------------------------------------------


def test_tls_extension_own_tenant_allowed(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, make_gate())
    client = pki["acme"].client("tls-device")
    for host in ("pay.acme.test", "shop.acme.test", "PAY.ACME.TEST:8443"):
        result = run_http(mw, http_scope(host=host, tls_chain=pem_chain(client)))
        assert result.status == 200, host
    assert len(app.scopes) == 3
    identity = identity_from_scope(app.scopes[0])
    assert identity is not None
    assert identity.tenant_id == "acme"
    assert identity.source == "asgi_tls"
    assert identity.common_name == "tls-device"
    assert app.scopes[0][IDENTITY_KEY] is identity


@pytest.mark.parametrize("host", ["api.globex.test", "initech.test"])
def test_tls_extension_other_tenant_untrusted(pki: PKI, make_gate: GateFactory, host: str) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, make_gate())
    result = run_http(mw, http_scope(host=host, tls_chain=pem_chain(pki["acme"].client())))
    assert_rejected(result, app, Reason.UNTRUSTED_CHAIN)


def test_tls_extension_error_rejects(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, make_gate())
    scope = http_scope(host="pay.acme.test", tls_chain=pem_chain(pki["acme"].client()))
    scope["extensions"]["tls"]["client_cert_error"] = "certificate has expired"
    assert_rejected(run_http(mw, scope), app, Reason.UNTRUSTED_CHAIN)


def test_tls_extension_ignored_when_transport_disabled(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, make_gate(transport=False))
    scope = http_scope(host="pay.acme.test", tls_chain=pem_chain(pki["acme"].client()))
    assert_rejected(run_http(mw, scope), app, Reason.NO_CERTIFICATE)


# -- (f) transport certificate on a trusted proxy's connection -------------------


def test_trusted_proxy_transport_certificate_not_used(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate))
    scope = http_scope(client=TRUSTED, tls_chain=pem_chain(pki["globex"].client("proxy")))
    assert_rejected(run_http(mw, scope), app, Reason.NO_CERTIFICATE)


def test_trusted_proxy_header_wins_over_transport(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate))
    forwarded = pki["globex"].client("forwarded")
    scope = http_scope(
        client=TRUSTED,
        headers=cf_headers(forwarded),
        tls_chain=pem_chain(pki["globex"].client("proxy")),
    )
    assert run_http(mw, scope).status == 200
    identity = identity_from_scope(app.scope)
    assert identity is not None
    assert identity.common_name == "forwarded"
    assert identity.source == "cloudflare"


# -- (g) the recorded socket peer ----------------------------------------------------


def test_recorded_socket_peer_wins_over_rewritten_client(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate, exempt_paths=["/healthz"]))
    client = pki["globex"].client()
    scope = http_scope(client=TRUSTED, headers=cf_headers(client))
    scope[SOCKET_PEER_KEY] = UNTRUSTED
    assert socket_peer(scope) == UNTRUSTED[0]
    assert_rejected(run_http(mw, scope), app, Reason.NO_CERTIFICATE)
    exempt = http_scope(path="/healthz", client=TRUSTED, headers=cf_headers(client))
    exempt[SOCKET_PEER_KEY] = UNTRUSTED
    assert run_http(mw, exempt).status == 200
    assert header_names(app.scope) == [b"host", b"x-other"]


def test_recorded_trusted_peer_with_rewritten_client(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate))
    scope = http_scope(client=UNTRUSTED, headers=cf_headers(pki["globex"].client()))
    scope[SOCKET_PEER_KEY] = ["10.0.0.9", 1]
    assert run_http(mw, scope).status == 200
    identity = identity_from_scope(app.scope)
    assert identity is not None
    assert identity.source == "cloudflare"


def test_recorded_none_peer_is_not_replaced_by_client(pki: PKI, make_gate: GateFactory) -> None:
    # A unix-socket connection: the recorded peer is None. uvicorn's proxy
    # headers middleware may still have rewritten scope["client"].
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate))
    scope = http_scope(client=TRUSTED, headers=cf_headers(pki["globex"].client()))
    scope[SOCKET_PEER_KEY] = None
    assert socket_peer(scope, trust_reported=True) is None
    assert_rejected(run_http(mw, scope), app, Reason.NO_CERTIFICATE)


def test_unreported_peer_is_never_trusted(
    pki: PKI, make_gate: GateFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Without certgate's uvicorn protocols, scope["client"] may have been
    rewritten from X-Forwarded-For: by default it is not believed, headers
    are stripped, and the operator is told why (once)."""
    app = RecordingApp()
    gate = cf_gate(make_gate, trust_reported_peer=False)
    mw = CertGateMiddleware(app, gate)
    with caplog.at_level(logging.WARNING, logger="certgate"):
        for _ in range(2):
            scope = http_scope(client=TRUSTED, headers=cf_headers(pki["globex"].client()))
            assert_rejected(run_http(mw, scope), app, Reason.NO_CERTIFICATE)
    hints = [r for r in caplog.records if "socket peer is unknown" in r.getMessage()]
    assert len(hints) == 1
    assert "trust_reported_peer" in hints[0].getMessage()


@pytest.mark.parametrize(
    ("scope", "peer"),
    [
        ({"client": ("1.2.3.4", 5)}, "1.2.3.4"),
        ({"client": ["1.2.3.4", 5]}, "1.2.3.4"),
        ({"client": None}, None),
        ({}, None),
        ({"client": "1.2.3.4"}, None),
        ({"client": (1234, 5)}, None),
        ({"client": ()}, None),
        ({SOCKET_PEER_KEY: ("5.6.7.8", 1), "client": ("1.2.3.4", 5)}, "5.6.7.8"),
    ],
)
def test_socket_peer(scope: Scope, peer: str | None) -> None:
    assert socket_peer(scope, trust_reported=True) == peer
    recorded = scope.get(SOCKET_PEER_KEY)
    expected_default = recorded[0] if isinstance(recorded, tuple) else None
    assert socket_peer(scope) == expected_default


# -- (h) underscore aliases -----------------------------------------------------------


@pytest.mark.parametrize("peer", [UNTRUSTED, TRUSTED])
def test_underscore_alias_stripped_from_every_peer(
    pki: PKI, make_gate: GateFactory, peer: tuple[str, int]
) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate, exempt_paths=["/healthz"]))
    alias = (CF_ALIAS, base64.b64encode(pki["globex"].client().der))
    result = run_http(mw, http_scope(path="/healthz", client=peer, headers=[alias]))
    assert result.status == 200
    assert header_names(app.scope) == [b"host", b"x-other"]


def test_underscore_alias_is_never_read_as_certificate(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate))
    alias = (CF_ALIAS, base64.b64encode(pki["globex"].client().der))
    assert_rejected(
        run_http(mw, http_scope(client=TRUSTED, headers=[alias])), app, (Reason.NO_CERTIFICATE)
    )


def test_underscore_alias_stripped_next_to_real_header(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate))
    client = pki["globex"].client()
    headers = [*cf_headers(client), (CF_SHA_ALIAS, b"00" * 32)]
    assert run_http(mw, http_scope(client=TRUSTED, headers=headers)).status == 200
    assert header_names(app.scope) == [b"host", CF_CERT, b"x-other"]


# -- (i) Host --------------------------------------------------------------------------


def test_two_host_headers(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate))
    client = pki["globex"].client()
    headers = [*cf_headers(client), (b"host", b"api.globex.test")]
    result = run_http(mw, http_scope(client=TRUSTED, headers=headers))
    assert_rejected(result, app, Reason.INVALID_HOST)
    assert result.status == 400


def test_missing_host(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate))
    scope = http_scope(host=None, client=TRUSTED, headers=cf_headers(pki["globex"].client()))
    result = run_http(mw, scope)
    assert result.status == 400
    assert_rejected(result, app, Reason.INVALID_HOST)


@pytest.mark.parametrize("host", ["unknown.test", "acme.test", "a.b.acme.test", "10.0.0.1"])
def test_unknown_host(pki: PKI, make_gate: GateFactory, host: str) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, cf_gate(make_gate))
    scope = http_scope(host=host, client=TRUSTED, headers=cf_headers(pki["globex"].client()))
    assert_rejected(run_http(mw, scope), app, Reason.UNKNOWN_TENANT)


# -- (j) WebSocket -------------------------------------------------------------------------


def ws_scope(**kwargs: Any) -> Scope:
    return http_scope(scope_type="websocket", **kwargs)


def test_websocket_rejected_with_http_response(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, make_gate())
    scope = ws_scope(tls_chain=pem_chain(pki["acme"].client()))
    scope["extensions"]["websocket.http.response"] = {}
    result = run_ws(mw, scope)
    types = [m["type"] for m in result.sent]
    assert types == ["websocket.http.response.start", "websocket.http.response.body"]
    assert result.status == 403
    assert result.headers["cache-control"] == "no-store"
    assert result.reason == "untrusted_chain"
    assert app.scopes == []


def test_websocket_rejected_with_close(make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, make_gate())
    result = run_ws(mw, ws_scope())
    assert result.sent == [{"type": "websocket.close", "code": 1008, "reason": "no_certificate"}]
    assert app.scopes == []


def test_websocket_rejected_without_connect_sends_nothing(make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, make_gate())
    result = asyncio.run(_drive(mw, ws_scope(), [{"type": "websocket.disconnect", "code": 1001}]))
    assert result.sent == []
    assert app.scopes == []


def test_websocket_allowed(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, make_gate())
    scope = ws_scope(host="pay.acme.test", tls_chain=pem_chain(pki["acme"].client("ws")))
    result = run_ws(mw, scope)
    assert [m["type"] for m in result.sent] == ["websocket.accept", "websocket.close"]
    assert app.messages == [{"type": "websocket.connect"}]
    identity = identity_from_scope(app.scope)
    assert identity is not None
    assert identity.tenant_id == "acme"
    assert identity.common_name == "ws"


# -- (k) exempt paths ----------------------------------------------------------------------


def test_exempt_path_without_certificate(make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, make_gate(exempt_paths=["/healthz", "/public/*"]))
    for path in ("/healthz", "/public/logo.png"):
        assert run_http(mw, http_scope(path=path, host=None)).status == 200
    assert len(app.scopes) == 2
    for seen in app.scopes:
        assert identity_from_scope(seen) is None
        assert IDENTITY_KEY not in seen
        assert seen[DECISION_KEY] == Decision(exempt=True, access="exempt")
    assert run_http(mw, http_scope(path="/healthz/", host=None)).status == 200  # same route
    assert len(app.scopes) == 3
    for path in ("/healthz/x", "/public/../admin", "/public//x", "/publicity"):
        result = run_http(mw, http_scope(path=path))
        assert result.status == 403, path
        assert result.reason == "no_certificate"
    assert len(app.scopes) == 3


# -- (l) lifespan ----------------------------------------------------------------------------


def test_lifespan_passes_through(make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, make_gate())
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    incoming: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    result = asyncio.run(_drive(mw, scope, incoming))
    assert app.scope is scope
    assert scope == {"type": "lifespan", "asgi": {"version": "3.0"}}
    assert [m["type"] for m in result.sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


# -- (m) registries --------------------------------------------------------------------------


class FailingRegistry:
    blocking = False

    def __init__(self, error: Exception) -> None:
        self.error = error

    def tenant_for_host(self, host: str) -> Tenant | None:
        raise self.error

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        raise self.error


class AsyncRegistry:
    def __init__(self, inner: InMemoryRegistry, fail: bool = False) -> None:
        self.inner = inner
        self.fail = fail
        self.calls: list[str] = []

    async def tenant_for_host(self, host: str) -> Tenant | None:
        self.calls.append(host)
        await asyncio.sleep(0)
        if self.fail:
            raise ConnectionError("db down")
        return self.inner.tenant_for_host(host)

    async def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        await asyncio.sleep(0)
        return self.inner.tenant_by_id(tenant_id)


class ThreadRecordingRegistry:
    def __init__(self, inner: InMemoryRegistry, blocking: bool) -> None:
        self.inner = inner
        self.blocking = blocking
        self.threads: list[int] = []

    def tenant_for_host(self, host: str) -> Tenant | None:
        self.threads.append(threading.get_ident())
        return self.inner.tenant_for_host(host)

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        self.threads.append(threading.get_ident())
        return self.inner.tenant_by_id(tenant_id)


@pytest.mark.parametrize(
    "error", [RuntimeError("db down"), TimeoutError(), KeyError("x"), ValueError("bad row")]
)
def test_registry_failure_is_503(pki: PKI, error: Exception) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, CertGate(FailingRegistry(error)))
    scope = http_scope(host="pay.acme.test", tls_chain=pem_chain(pki["acme"].client()))
    result = run_http(mw, scope)
    assert result.status == 503
    assert_rejected(result, app, Reason.TRUST_STORE_UNAVAILABLE)


def test_registry_refusing_on_purpose_keeps_its_reason(pki: PKI) -> None:
    app = RecordingApp()
    registry = FailingRegistry(Rejected(Reason.UNKNOWN_TENANT, "suspended"))
    mw = CertGateMiddleware(app, CertGate(registry))
    scope = http_scope(host="pay.acme.test", tls_chain=pem_chain(pki["acme"].client()))
    assert_rejected(run_http(mw, scope), app, Reason.UNKNOWN_TENANT)


def test_async_registry(pki: PKI) -> None:
    registry = AsyncRegistry(pki.registry())
    app = RecordingApp()
    mw = CertGateMiddleware(app, CertGate(registry))
    client = pki["acme"].client()
    ok = run_http(mw, http_scope(host="pay.acme.test", tls_chain=pem_chain(client)))
    assert ok.status == 200
    identity = identity_from_scope(app.scope)
    assert identity is not None
    assert identity.tenant_id == "acme"
    refused = run_http(mw, http_scope(host="api.globex.test", tls_chain=pem_chain(client)))
    assert refused.status == 403
    assert refused.reason == "untrusted_chain"
    assert registry.calls == ["pay.acme.test", "api.globex.test"]


def test_async_registry_failure_is_503(pki: PKI) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, CertGate(AsyncRegistry(pki.registry(), fail=True)))
    scope = http_scope(host="pay.acme.test", tls_chain=pem_chain(pki["acme"].client()))
    assert_rejected(run_http(mw, scope), app, Reason.TRUST_STORE_UNAVAILABLE)


def test_async_registry_with_resolver(pki: PKI) -> None:
    app = RecordingApp()
    gate = CertGate(AsyncRegistry(pki.registry()), tenant_resolver=lambda facts: "acme")
    mw = CertGateMiddleware(app, gate)
    scope = http_scope(host="anything.example", tls_chain=pem_chain(pki["acme"].client()))
    assert run_http(mw, scope).status == 200
    identity = identity_from_scope(app.scope)
    assert identity is not None
    assert identity.tenant_id == "acme"


@pytest.mark.parametrize("blocking", [True, False])
def test_sync_registry_thread(pki: PKI, blocking: bool) -> None:
    registry = ThreadRecordingRegistry(pki.registry(), blocking=blocking)
    app = RecordingApp()
    mw = CertGateMiddleware(app, CertGate(registry))
    scope = http_scope(host="pay.acme.test", tls_chain=pem_chain(pki["acme"].client()))

    async def go() -> tuple[int, Result]:
        loop_thread = threading.get_ident()
        return loop_thread, await _drive(mw, scope, [{"type": "http.request", "body": b""}])

    loop_thread, result = asyncio.run(go())
    assert result.status == 200
    assert len(registry.threads) == 1
    if blocking:
        assert registry.threads[0] != loop_thread
    else:
        assert registry.threads[0] == loop_thread


def test_default_registry_blocking_is_off_loop(pki: PKI) -> None:
    class NoFlag:
        def __init__(self) -> None:
            self.inner = pki.registry()
            self.threads: list[int] = []

        def tenant_for_host(self, host: str) -> Tenant | None:
            self.threads.append(threading.get_ident())
            return self.inner.tenant_for_host(host)

        def tenant_by_id(self, tenant_id: str) -> Tenant | None:
            return self.inner.tenant_by_id(tenant_id)

    registry = NoFlag()
    mw = CertGateMiddleware(RecordingApp(), CertGate(registry))
    scope = http_scope(host="pay.acme.test", tls_chain=pem_chain(pki["acme"].client()))
    assert run_http(mw, scope).status == 200
    assert registry.threads != [threading.get_ident()]
    assert len(registry.threads) == 1


# -- (n) logging ----------------------------------------------------------------------------


def _formatted(records: Iterable[logging.LogRecord]) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(r) + repr(r.__dict__) for r in records)


def test_rejection_is_logged_without_certificate_material(
    pki: PKI, make_gate: GateFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="certgate")
    client = pki["acme"].client("log-device")
    fingerprint = hashlib.sha256(client.der).hexdigest()
    mw = CertGateMiddleware(RecordingApp(), cf_gate(make_gate))
    run_http(mw, http_scope(tls_chain=pem_chain(client)))
    forged_b64 = base64.b64encode(pki["globex"].client().der)
    run_http(mw, http_scope(client=TRUSTED, headers=[(CF_CERT, forged_b64[:-8] + b"!!!!!!!!")]))
    failing = CertGateMiddleware(RecordingApp(), CertGate(FailingRegistry(RuntimeError("db"))))
    run_http(failing, http_scope(host="pay.acme.test", tls_chain=pem_chain(client)))

    records = [r for r in caplog.records if r.name == "certgate"]
    rejected = [r for r in records if "rejected reason=untrusted_chain" in r.getMessage()]
    assert len(rejected) == 1
    record = rejected[0]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "tenant=globex" in message
    assert f"fingerprint={fingerprint}" in message
    assert "source=asgi_tls" in message
    extra = getattr(record, "certgate")  # noqa: B009
    assert {k: extra[k] for k in ("reason", "tenant", "source", "fingerprint", "peer")} == {
        "reason": "untrusted_chain",
        "tenant": "globex",
        "source": "asgi_tls",
        "fingerprint": fingerprint,
        "peer": UNTRUSTED[0],
    }
    assert extra["path"] == "/"
    assert extra["host"] == "api.globex.test"
    assert extra["detail"]
    assert any("reason=malformed_certificate" in r.getMessage() for r in records)
    assert any("reason=trust_store_unavailable" in r.getMessage() for r in records)
    text = _formatted(records)
    assert "BEGIN" not in text
    assert "PRIVATE KEY" not in text
    der_b64 = base64.b64encode(client.der).decode()
    for start in range(0, len(der_b64) - 40, 40):
        assert der_b64[start : start + 40] not in text
    assert forged_b64[:40].decode() not in text


def test_no_certificate_logged_at_info(
    make_gate: GateFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="certgate")
    scope = http_scope()
    # A plain-HTTP scope: an https scope without the tls extension is now a
    # misconfiguration certgate warns about (issue 8; test_trust_misconfig.py).
    scope["scheme"] = "http"
    run_http(CertGateMiddleware(RecordingApp(), make_gate()), scope)
    records = [r for r in caplog.records if r.name == "certgate"]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert "reason=no_certificate" in records[0].getMessage()
