"""Review of the ASGI decision-memo fast path (``CertGateMiddleware._memo_key``
with ``CertGate.recall``): for every request, the fast path must return the
decision the full path (``_facts`` + ``adecide``) would return - or step
aside and let the full path decide.

Each test builds a scope an ASGI server or an outer middleware could hand
over (the spec types ``headers`` as an iterable of byte-string pairs) on
which the fast path's one pass over the raw headers used to disagree with
the full path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from certgate import CertGate, Reason
from certgate.asgi import DECISION_KEY, CertGateMiddleware
from tests.conftest import PKI
from tests.test_asgi import RecordingApp, http_scope, pem_chain, run_http
from tests.test_decision_memo import HOST, cf_scope, header_gate, twice


def _tls_scope(chain: list[str]) -> Any:
    scope = http_scope(host=HOST, tls_chain=chain)
    scope["certgate.socket_peer"] = ("198.51.100.7", 50000)
    return scope


def test_a_bytearray_host_is_decided_not_a_500(pki: PKI) -> None:
    """A ``bytearray`` header value decodes on the full path, but in the
    fast path's key it made the memo lookup raise ``TypeError: unhashable``
    out of the middleware (a 500 from the server) on every default path."""
    gate = CertGate(pki.registry())  # the TLS transport only
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    chain = pem_chain(pki["globex"].client("rev4-1"))

    def scope() -> Any:
        sc = _tls_scope(chain)
        sc["headers"] = [(n, bytearray(v)) for n, v in sc["headers"]]
        return sc

    for _ in range(3):
        result = run_http(mw, scope())
        assert result.status == 200
        assert app.scopes[-1][DECISION_KEY].identity is not None


def test_a_bytearray_certificate_header_is_decided_not_a_500(pki: PKI) -> None:
    gate = header_gate(pki.registry())
    mw = CertGateMiddleware(RecordingApp(), gate)
    client = pki["globex"].client("rev4-2")

    def scope() -> Any:
        sc = cf_scope(client)
        sc["headers"] = [(n, bytearray(v)) for n, v in sc["headers"]]
        return sc

    for _ in range(3):
        assert run_http(mw, scope()).status == 200


def test_a_memoryview_host_never_matches_a_remembered_bytes_key(pki: PKI) -> None:
    """``memoryview(b"x") == b"x"`` and they hash alike, so a scope whose
    values are memoryviews found the allow remembered for bytes - while the
    full path cannot read such a scope and refuses it (``internal_error``)."""
    gate = CertGate(pki.registry())
    mw = CertGateMiddleware(RecordingApp(), gate)
    chain = pem_chain(pki["globex"].client("rev4-3"))
    twice(mw, lambda: _tls_scope(chain))  # the allow is remembered under bytes
    odd = _tls_scope(chain)
    odd["headers"] = [(n, memoryview(v)) for n, v in odd["headers"]]
    fresh = run_http(CertGateMiddleware(RecordingApp(), CertGate(pki.registry())), odd)
    assert fresh.status == 403  # the full path's answer
    assert fresh.reason == Reason.INTERNAL_ERROR.value
    odd = _tls_scope(chain)
    odd["headers"] = [(n, memoryview(v)) for n, v in odd["headers"]]
    result = run_http(mw, odd)
    assert result.status == 403
    assert result.reason == Reason.INTERNAL_ERROR.value


def test_a_memoryview_certificate_header_never_matches_a_remembered_key(pki: PKI) -> None:
    gate = header_gate(pki.registry())
    mw = CertGateMiddleware(RecordingApp(), gate)
    client = pki["globex"].client("rev4-4")
    twice(mw, lambda: cf_scope(client))
    odd = cf_scope(client)
    odd["headers"] = [
        (memoryview(n), memoryview(v)) if n.startswith(b"cf-") else (n, v)
        for n, v in odd["headers"]
    ]
    result = run_http(mw, odd)
    assert result.status == 403
    assert result.reason == Reason.INTERNAL_ERROR.value


def test_one_shot_headers_are_read_by_the_full_path_too(pki: PKI) -> None:
    """``headers`` given as a one-shot iterator: the fast path's pass used it
    up, so the full path saw no Host and no certificate and refused a request
    it allows on its own."""
    gate = header_gate(pki.registry())
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    client = pki["globex"].client("rev4-5")

    def scope() -> Any:
        sc = cf_scope(client)
        listed: list[tuple[bytes, bytes]] = sc["headers"]
        once: Iterator[tuple[bytes, bytes]] = iter(listed)
        sc["headers"] = once
        return sc

    for _ in range(3):
        result = run_http(mw, scope())
        assert result.status == 200
        assert app.scopes[-1][DECISION_KEY].identity is not None


def test_one_shot_tls_request_headers_are_read_by_the_full_path_too(pki: PKI) -> None:
    gate = CertGate(pki.registry())
    app = RecordingApp()
    mw = CertGateMiddleware(app, gate)
    chain = pem_chain(pki["globex"].client("rev4-6"))

    def scope() -> Any:
        sc = _tls_scope(chain)
        sc["headers"] = (pair for pair in list(sc["headers"]))
        return sc

    for _ in range(3):
        assert run_http(mw, scope()).status == 200


class _BrokenChain:
    """A ``client_cert_chain`` a buggy server hands over: iterating it raises."""

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("chain went away")


def test_an_unreadable_tls_extension_is_refused_not_a_500(pki: PKI) -> None:
    """The full path reads the ``tls`` extension inside its guard (an
    unreadable scope is ``internal_error``); the fast path read it outside
    any guard, so the exception left the middleware (a 500)."""
    gate = CertGate(pki.registry())
    mw = CertGateMiddleware(RecordingApp(), gate)
    scope = _tls_scope([])
    scope["extensions"]["tls"]["client_cert_chain"] = _BrokenChain()
    result = run_http(mw, scope)
    assert result.status == 403
    assert result.reason == Reason.INTERNAL_ERROR.value
