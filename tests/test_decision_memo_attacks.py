"""Attacks on the decision memo (issue 7 review): a remembered allow must
never answer a request that the full pipeline would decide differently.

Each test makes the memo hold an allow (two identical requests) and then
sends a request, or changes a setting, where the pipeline's answer differs.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from typing import Any

from certgate import CertGate, Reason
from certgate.asgi import DECISION_KEY, CertGateMiddleware
from certgate.verification import CachedVerification
from certgate.verifier import ChainVerifier
from tests.conftest import PKI
from tests.test_asgi import RecordingApp, http_scope, pem_chain, run_http
from tests.test_decision_memo import HOST, cf_scope, header_gate, twice

CERT = b"cf-client-cert-der-base64"
SHA = b"cf-client-cert-sha256"


def test_a_repeated_header_never_collides_with_the_remembered_pair(pki: PKI) -> None:
    """The memo key must tell ``{cert: [b64], sha: [hex]}`` from
    ``{cert: [b64, "cf-client-cert-sha256", hex]}`` (the header sent three
    times: ``malformed_header``, an attack signal)."""
    gate = header_gate(pki.registry())
    mw = CertGateMiddleware(RecordingApp(), gate)
    client = pki["globex"].client("attack-1")
    twice(mw, lambda: cf_scope(client))
    b64 = base64.b64encode(client.der)
    hexdigest = hashlib.sha256(client.der).hexdigest().encode()
    repeated = http_scope(host=HOST, headers=[(CERT, b64), (CERT, SHA), (CERT, hexdigest)])
    repeated["certgate.socket_peer"] = ("10.1.2.3", 40000)
    result = run_http(mw, repeated)
    assert result.status != 200
    assert result.reason == Reason.MALFORMED_HEADER.value


def test_a_tenant_resolver_set_later_is_never_bypassed_by_the_memo(pki: PKI) -> None:
    gate = header_gate(pki.registry())
    mw = CertGateMiddleware(RecordingApp(), gate)
    client = pki["globex"].client("attack-2")
    twice(mw, lambda: cf_scope(client))
    gate.tenant_resolver = lambda facts: "acme"  # every request now addresses acme
    result = run_http(mw, cf_scope(client))
    assert result.status == 403
    assert result.reason == Reason.UNTRUSTED_CHAIN.value


def test_a_verification_clock_set_later_is_never_bypassed_by_the_memo(pki: PKI) -> None:
    gate = header_gate(pki.registry())
    mw = CertGateMiddleware(RecordingApp(), gate)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    client = pki["globex"].client("attack-3", not_after=soon)
    twice(mw, lambda: cf_scope(client))
    gate.verification.clock = lambda: soon + dt.timedelta(days=1)
    result = run_http(mw, cf_scope(client))
    assert result.status == 403
    assert result.reason == Reason.EXPIRED.value


def test_a_replaced_verification_is_never_bypassed_by_the_memo(pki: PKI) -> None:
    """A verification swapped in later (a revocation check, say) decides
    every request: its fresh cache's generation must not match the old one's,
    and an allow it makes is not remembered past it."""

    class Revoking(CachedVerification):
        def __init__(self) -> None:
            super().__init__(ChainVerifier())
            self.calls = 0

        def verify(self, tenant: Any, presented: Any) -> Any:
            self.calls += 1
            return super().verify(tenant, presented)

    gate = header_gate(pki.registry())
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    client = pki["globex"].client("attack-4")
    twice(mw, lambda: cf_scope(client))
    revoking = Revoking()
    gate.verification = revoking
    for _ in range(3):
        assert run_http(mw, cf_scope(client)).status == 200
    assert revoking.calls == 3  # asked every time, never answered from the memo
    assert app.scopes[-1][DECISION_KEY].identity is not None


def test_a_chain_changed_in_place_is_never_served_from_the_connection_memo(pki: PKI) -> None:
    """A server that keeps one ``tls`` dict and one chain list per connection
    and rewrites the list in place (a re-handshake, or a pooled dict) must
    not get the previous chain's certificate back."""
    gate = CertGate(pki.registry())  # the TLS transport only
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    chain = pem_chain(pki["globex"].client("attack-5"))
    tls = {"client_cert_chain": chain, "client_cert_error": None}

    def scope() -> Any:
        sc = http_scope(host=HOST)
        sc["extensions"] = {"tls": tls}
        return sc

    twice(mw, scope)
    chain[:] = pem_chain(pki["acme"].client("attack-6"))  # in place: same list object
    result = run_http(mw, scope())
    assert result.status == 403
    assert result.reason == Reason.UNTRUSTED_CHAIN.value


def test_a_verification_swapped_in_later_decides_the_next_request(pki: PKI) -> None:
    """A plain :class:`CachedVerification` assigned later (other verifier
    settings, say) starts a cache whose generation no earlier cache had."""
    gate = header_gate(pki.registry())
    mw = CertGateMiddleware(RecordingApp(), gate)
    client = pki["globex"].client("attack-7")
    twice(mw, lambda: cf_scope(client))
    fresh = CachedVerification(ChainVerifier(), cache_size=100)
    gate.verification = fresh
    assert run_http(mw, cf_scope(client)).status == 200
    assert fresh.cache.misses == 1  # verified by the new one, not answered from the memo


def test_a_full_memo_still_promotes_a_marked_key(pki: PKI) -> None:
    """The second allow of a key is remembered even when the memo is full
    (its marker is replaced in place, not emptied away with the rest): with
    ``cache_size=1`` the memo holds one key, and the third request is a hit."""
    gate = header_gate(pki.registry(), cache_size=1)
    mw = CertGateMiddleware(RecordingApp(), gate)
    client = pki["globex"].client("attack-8")
    twice(mw, lambda: cf_scope(client))
    hits, misses = gate.cache.hits, gate.cache.misses
    assert run_http(mw, cf_scope(client)).status == 200
    assert (gate.cache.hits, gate.cache.misses) == (hits, misses)  # the memo answered
