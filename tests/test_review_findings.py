"""Adversarial review: each weakness found, pinned by a test of the fixed behaviour.

F1 X-Forwarded-For could make an untrusted peer a trusted proxy (plain
uvicorn); F2 underscore/dash mixed spellings of certificate headers reached
WSGI bridges; F3 certificate subjects could forge log lines; F4 hostile
chains made every refusal cost the path builder's whole budget. The Host
rewritten after certgate (F5) is in test_frameworks.py, non-ASCII Hosts (F6)
in test_hosts.py.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from certgate import CertGate, InMemoryRegistry, Tenant
from certgate.asgi import ASGIApp, CertGateMiddleware, Message, Scope
from certgate.devpki import CA
from certgate.facts import RequestFacts
from certgate.sources import asgi_tls
from tests.conftest import PKI
from tests.hostile_keys import ca_builder

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.middleware.wsgi import WSGIMiddleware


# -- helpers -----------------------------------------------------------------


class _App:
    """Records the scopes it is called with and answers 200."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})


def _status(app: Any, scope: Scope) -> int:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    starts = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1
    status = starts[0]
    assert isinstance(status, int)
    return status


def _scope(client: tuple[str, int], headers: Iterable[tuple[bytes, bytes]]) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": "/whoami",
        "raw_path": b"/whoami",
        "query_string": b"",
        "root_path": "",
        "headers": list(headers),
        "client": client,
        "server": ("10.0.0.1", 443),
    }


# -- F1: X-Forwarded-For rewriting makes an untrusted socket peer "trusted" ---


@pytest.mark.parametrize(
    ("forwarded_allow_ips", "socket_client"),
    [
        # plain `uvicorn app:app` defaults: XFF believed from loopback (a local
        # sidecar / co-located service / SSRF), which is NOT a trusted cert proxy
        ("127.0.0.1,::1", ("127.0.0.1", 50000)),
        # `--forwarded-allow-ips '*'` (common in containers): any remote peer
        ("*", ("203.0.113.7", 50000)),
    ],
)
def test_xff_cannot_make_a_peer_trusted_under_plain_uvicorn(
    pki: PKI, forwarded_allow_ips: str, socket_client: tuple[str, int]
) -> None:
    gate = CertGate(pki.registry(), trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])
    inner = _App()
    # exactly the stack plain uvicorn builds: ProxyHeadersMiddleware(config.app)
    app = ProxyHeadersMiddleware(
        cast("Any", CertGateMiddleware(inner, gate)), trusted_hosts=forwarded_allow_ips
    )
    victim_leaf = pki["globex"].client("till-3").der  # certificates are not secrets
    scope = _scope(
        socket_client,
        [
            (b"host", b"api.globex.test"),
            (b"x-forwarded-for", b"10.6.6.6"),
            (b"cf-client-cert-der-base64", base64.b64encode(victim_leaf)),
        ],
    )
    status = _status(app, scope)
    # README: "X-Forwarded-For rewriting (uvicorn's proxy headers ...) cannot
    # make a peer trusted" -- the socket peer is not in trusted_proxies, so the
    # forged header must be stripped and the request refused.
    assert status == 403
    assert inner.scopes == []


# -- F2: mixed '-'/'_' spellings of stripped headers survive the ASGI strip ---


@pytest.mark.parametrize(
    "name", [b"x-ssl-client_verify", b"cf-client-cert_der-base64", b"x_forwarded-client-cert"]
)
def test_mixed_spelling_of_known_header_does_not_reach_wsgi_bridge(pki: PKI, name: bytes) -> None:
    seen: list[dict[str, Any]] = []

    def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(dict(environ))
        start_response("200 OK", [])
        return [b"ok"]

    gate = CertGate(pki.registry(), exempt_paths=["/whoami"])  # reach the app without a cert
    app = CertGateMiddleware(cast("ASGIApp", WSGIMiddleware(wsgi_app)), gate)
    scope = _scope(("203.0.113.7", 50000), [(b"host", b"pay.acme.test"), (name, b"SUCCESS")])
    assert _status(app, scope) == 200
    folded = "HTTP_" + name.decode().upper().replace("-", "_")
    # the all-underscore spelling IS removed (asgi.py keeps self._aliases for
    # exactly this reason); the mixed spelling folds onto the same key.
    assert folded not in seen[0]


def test_control_all_underscore_alias_is_stripped(pki: PKI) -> None:
    seen: list[dict[str, Any]] = []

    def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(dict(environ))
        start_response("200 OK", [])
        return [b"ok"]

    gate = CertGate(pki.registry(), exempt_paths=["/whoami"])
    app = CertGateMiddleware(cast("ASGIApp", WSGIMiddleware(wsgi_app)), gate)
    scope = _scope(
        ("203.0.113.7", 50000),
        [(b"host", b"pay.acme.test"), (b"x_ssl_client_verify", b"SUCCESS")],
    )
    assert _status(app, scope) == 200
    assert "HTTP_X_SSL_CLIENT_VERIFY" not in seen[0]


# -- F3: rejection log lines carry attacker-controlled certificate names -------


def test_rejection_log_cannot_be_split_by_certificate_subject(
    caplog: pytest.LogCaptureFixture,
) -> None:
    acme = CA.root("Acme Root CA", organization="Acme")
    evil = CA.root("Evil Tenant Root", organization="Evil")  # a tenant's own CA (attacker e)
    forged = "x\nINFO certgate: allowed tenant=acme fp=00"
    leaf = evil.issue(forged, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    gate = CertGate(
        InMemoryRegistry(
            [
                Tenant("acme", ("pay.acme.test",), (acme.cert,)),
                Tenant("evil", ("evil.test",), (evil.cert,)),
            ]
        )
    )
    presented = asgi_tls.from_scope(
        {"extensions": {"tls": {"client_cert_chain": [leaf.cert_pem.decode()]}}}
    )
    facts = RequestFacts("pay.acme.test", "/", "203.0.113.9", {}, presented)
    with caplog.at_level(logging.INFO, logger="certgate"):
        decision = gate.decide(facts)
    assert decision.reason is not None
    messages = [r.getMessage() for r in caplog.records if r.name == "certgate"]
    assert messages
    assert all("\n" not in m for m in messages), messages


# -- F4: path-building amplification by any holder of a device certificate ----


def _fake_ca(
    signer: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    issuer: x509.Name,
    public: Any,
    serial: int,
) -> str:
    """A "CA" certificate an attacker signs with a device key (PEM)."""
    cert = ca_builder(subject, issuer, public, serial).sign(signer, hashes.SHA256())
    return cert.public_bytes(Encoding.PEM).decode()


def _loop_chain(pki: PKI) -> tuple[list[str], list[str]]:
    """(attack chain, ordinary chain) of an Acme device, both PEM lists.

    The attacker holds only an ordinary Acme device certificate and its key.
    With that key they sign extra "CA" certificates: one carrying the real
    Acme Issuing CA name and public key (so the leaf's signature verifies
    under it) but issued by "Loop", and several self-issued "Loop" CAs with
    the device's own key. OpenSSL's handshake ignores them (the real
    intermediate is sent first); cryptography's path builder explores every
    combination until its signature budget is exhausted.
    """
    acme = pki["acme"]
    issuing = acme.issuer
    device = acme.client("sensor-17")
    key = device.key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    loop = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Loop")])

    fake_issuing = _fake_ca(key, issuing.cert.subject, loop, issuing.key.public_key(), 77)
    loops = [_fake_ca(key, loop, loop, key.public_key(), 100 + i) for i in range(5)]
    real = [device.cert_pem.decode(), issuing.cert_pem.decode()]
    return [*real, fake_issuing, *loops], real


def test_cross_tenant_rejection_cost_is_bounded(pki: PKI) -> None:
    attack, ordinary = _loop_chain(pki)
    gate = CertGate(pki.registry())
    logging.getLogger("certgate").setLevel(logging.CRITICAL)

    def total(chain: list[str], rounds: int = 20) -> float:
        start = time.perf_counter()
        for _ in range(rounds):  # same connection, same bytes, pipelined requests
            presented = asgi_tls.from_scope({"extensions": {"tls": {"client_cert_chain": chain}}})
            facts = RequestFacts("api.globex.test", "/", "203.0.113.9", {}, presented)
            decision = gate.decide(facts)
            assert decision.reason is not None
        return time.perf_counter() - start

    try:
        baseline = min(total(ordinary) for _ in range(3))
        attacked = min(total(attack) for _ in range(3))
    finally:
        logging.getLogger("certgate").setLevel(logging.NOTSET)
    # An ordinary cross-tenant rejection and the crafted one should cost the
    # same order of magnitude; measured: ~0.2 ms vs ~13.6 ms each.
    assert attacked < 10 * baseline, (attacked, baseline)


def _cycle_chain(pki: PKI) -> tuple[list[str], list[str]]:
    """Like ``_loop_chain`` but without self-issued certificates: the made-up
    CAs issue each other in a name cycle (A <- B <- A, A <- C <- A, B <- C)."""
    acme = pki["acme"]
    issuing = acme.issuer
    device = acme.client("sensor-cycle")
    key = device.key
    assert isinstance(key, ec.EllipticCurvePrivateKey)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    fake = _fake_ca(key, issuing.cert.subject, name("A"), issuing.key.public_key(), 7)
    pairs = [("A", "B"), ("B", "A"), ("A", "C"), ("C", "A"), ("B", "C")]
    cycle = [
        _fake_ca(key, name(s), name(i), key.public_key(), n) for n, (s, i) in enumerate(pairs, 1)
    ]
    real = [device.cert_pem.decode(), issuing.cert_pem.decode()]
    return [*real, fake, *cycle], real


def test_fresh_hostile_chains_cost_about_as_much_as_ordinary_ones(pki: PKI) -> None:
    """Without any cache help (every request a new chain), a chain built to
    send the path builder round in circles is refused about as cheaply as an
    ordinary cross-tenant certificate, and the device's own tenant still
    accepts it (the hostile extras are simply not used)."""
    gate = CertGate(pki.registry(), cache_size=0)
    logging.getLogger("certgate").setLevel(logging.CRITICAL)

    def cost(chain: list[str], host: str, rounds: int = 10) -> tuple[float, str | None]:
        presented = asgi_tls.from_scope({"extensions": {"tls": {"client_cert_chain": chain}}})
        facts = RequestFacts(host, "/", "203.0.113.9", {}, presented)
        start = time.perf_counter()
        for _ in range(rounds):
            decision = gate.decide(facts)
        reason = decision.reason.value if decision.reason else None
        return time.perf_counter() - start, reason

    try:
        for chain_of in (_loop_chain, _cycle_chain):
            attack, ordinary = chain_of(pki)
            baseline, base_reason = min(cost(ordinary, "api.globex.test") for _ in range(3))
            attacked, reason = min(cost(attack, "api.globex.test") for _ in range(3))
            assert base_reason == reason == "untrusted_chain"
            assert attacked < 10 * baseline, (chain_of.__name__, attacked, baseline)
            assert cost(attack, "pay.acme.test", rounds=1)[1] is None
    finally:
        logging.getLogger("certgate").setLevel(logging.NOTSET)


def test_a_refusal_is_never_truthy(pki: PKI) -> None:
    """``if gate.decide(facts):`` must not let a refusal through: a NamedTuple
    of non-empty fields is always true unless it says otherwise."""
    gate = CertGate(pki.registry())
    refused = gate.decide(RequestFacts("pay.acme.test", "/", "203.0.113.9", {}, None))
    assert refused.reason is not None
    assert not refused
    assert not refused.allowed
    exempt = CertGate(pki.registry(), exempt_paths=["/healthz"]).decide(
        RequestFacts("pay.acme.test", "/healthz", "203.0.113.9", {}, None)
    )
    assert exempt
    assert exempt.allowed
