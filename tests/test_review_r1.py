"""Review r1 of the hardening (issue 5): findings in the verification core.

1. Path-building cost within the client-intermediate limits: four crafted
   P-384 intermediates (two layers of two sharing one key, so every
   certificate verifies under both candidates of the next layer) made one
   refusal cost ~12x an ordinary refusal (3.4 ms vs 0.27 ms), far above the
   issue's ~3x bar. The verifier now bounds the signature work of a
   presented chain, weighted by key type.
2. A hung blocking registry: lookups queued behind the stuck threads stayed
   queued (each with a copy of its request's context) long after their
   requests got a 503 - unbounded memory under a flood.
3. Every gate with a blocking registry kept up to 16 lookup threads for the
   life of the process, even after the gate was gone.
4. The ASGI middleware memoised up to 4096 client-chosen header names (of
   any length) for the life of the process.
5. A scope whose headers are not (bytes, bytes) pairs raised out of the
   middleware (a 500) instead of a fail-closed refusal.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime as dt
import gc
import logging
import statistics
import threading
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from certgate import CertGate, InMemoryRegistry, Reason, Tenant, lookups
from certgate.asgi import CertGateMiddleware
from certgate.decision import Decision
from certgate.devpki import CA
from certgate.facts import RequestFacts
from certgate.lookups import LOOKUP_THREADS, MAX_BACKLOG
from certgate.sources import asgi_tls
from tests.conftest import PKI
from tests.hostile_keys import ca_builder
from tests.test_asgi import RecordingApp, http_scope, run_http
from tests.test_cache import tls_facts
from tests.test_registry_timeout import ACME, HangingRegistry

ATTACKED_HOST = "api.globex.test"


@pytest.fixture
def quiet() -> Iterator[None]:
    logger = logging.getLogger("certgate")
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(logging.NOTSET)


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _ca(subject: x509.Name, issuer: x509.Name, public: Any, signer: Any, serial: int) -> str:
    cert = ca_builder(subject, issuer, public, serial).sign(signer, hashes.SHA384())
    return cert.public_bytes(Encoding.PEM).decode()


def _fanned(
    widths: Sequence[int], curve: ec.EllipticCurve, top: x509.Name | None = None
) -> list[str]:
    """A made-up leaf and layers of crafted intermediates, nearest the leaf
    first: every certificate of a layer shares the layer's key, so each
    verifies under every candidate of the next layer. ``top``: the issuer
    name of the last layer (default: a name nobody has)."""
    keys = [ec.generate_private_key(curve) for _ in range(len(widths) + 1)]
    names = [_name(f"Crafted {i}") for i in range(len(widths) + 1)]
    if top is not None:
        names[-1] = top
    out: list[str] = []
    serial = 100
    for level, width in enumerate(widths):
        for _ in range(width):
            serial += 1
            out.append(
                _ca(
                    names[level],
                    names[level + 1],
                    keys[level].public_key(),
                    keys[level + 1],
                    serial,
                )
            )
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("device"))
        .issuer_name(names[0])
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(7)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(keys[0], hashes.SHA384())
    )
    return [leaf.public_bytes(Encoding.PEM).decode(), *out]


def _facts(chain: Sequence[str], host: str = ATTACKED_HOST) -> RequestFacts:
    presented = asgi_tls.from_scope({"extensions": {"tls": {"client_cert_chain": list(chain)}}})
    return RequestFacts(host, "/", "203.0.113.9", {}, presented)


def _median_costs(
    gate: CertGate, chains: Sequence[Sequence[str]], host: str = ATTACKED_HOST, runs: int = 11
) -> list[float]:
    """Median CPU seconds of one cold decision per chain, runs interleaved."""
    samples: list[list[float]] = [[] for _ in chains]
    for _ in range(runs):
        for index, chain in enumerate(chains):
            facts = _facts(chain, host)
            start = time.process_time()
            gate.decide(facts)
            samples[index].append(time.process_time() - start)
    return [statistics.median(s) for s in samples]


def _decide(gate: CertGate, chain: Sequence[str], host: str = ATTACKED_HOST) -> Decision:
    return gate.decide(_facts(chain, host))


# -- finding 1: signature work within the count limits ---------------------


@pytest.mark.parametrize(
    ("widths", "curve"),
    [
        ((2, 2), ec.SECP384R1()),
        ((2, 1, 1), ec.SECP521R1()),
        ((1, 1, 1, 1), ec.SECP384R1()),
    ],
    ids=["p384-2x2", "p521-2-1-1", "p384-straight-4"],
)
def test_costly_keys_within_the_count_limits_are_refused_cheaply(
    pki: PKI, quiet: None, widths: Sequence[int], curve: ec.EllipticCurve
) -> None:
    ordinary = [
        pki["acme"].client("r1-ordinary").cert_pem.decode(),
        pki["acme"].issuer.cert_pem.decode(),
    ]
    attack = _fanned(widths, curve)
    gate = CertGate(pki.registry(), cache_size=0)  # every request cold
    baseline, attacked = _median_costs(gate, [ordinary, attack])
    decision = _decide(gate, attack)
    # measured before the fix: 12.6x (2x2), 8.9x (straight 4) an ordinary refusal
    assert attacked < 3 * baseline, (attacked / baseline, decision.detail)
    assert decision.reason == "malformed_certificate", decision.detail


def test_fan_out_onto_a_tenant_root_is_bounded(quiet: None) -> None:
    """Cheap P-256 layers whose every path ends at the tenant's P-384 root:
    each path end costs one check under the tenant's (costly) key."""
    root = CA.root("R1 P-384 Root", key_type="ec384")
    issuing = root.intermediate("R1 P-384 Issuing", key_type="ec384")
    tenant = Tenant("p384", ("p384.test",), (root.cert,))
    gate = CertGate(InMemoryRegistry([tenant]), cache_size=0)
    device = issuing.issue("r1-device", key_type="ec384")
    ordinary = [device.cert_pem.decode(), issuing.cert_pem.decode()]
    assert _decide(gate, ordinary, "p384.test").allowed
    wrong = [pki_leaf_elsewhere(), issuing.cert_pem.decode()]  # an ordinary refusal here
    attack = _fanned((2, 2), ec.SECP256R1(), top=root.cert.subject)
    baseline, attacked = _median_costs(gate, [wrong, attack], "p384.test")
    decision = _decide(gate, attack, "p384.test")
    assert attacked < 3 * baseline, (attacked / baseline, decision.detail)
    assert decision.reason == "malformed_certificate", decision.detail


def pki_leaf_elsewhere() -> str:
    other = CA.root("R1 Elsewhere Root").intermediate("R1 Elsewhere Issuing")
    return other.issue("stranger").cert_pem.decode()


def test_ordinary_p384_chains_keep_working() -> None:
    """Two- and three-tier P-384 PKIs: the client sends its issuing CA (and,
    when the policy CA is configured on the tenant, nothing more)."""
    root = CA.root("R1 Ordinary P-384 Root", key_type="ec384")
    issuing = root.intermediate("R1 Ordinary P-384 Issuing", key_type="ec384")
    policy = root.intermediate("R1 P-384 Policy", key_type="ec384", path_length=1)
    deep = policy.intermediate("R1 P-384 Deep Issuing", key_type="ec384")
    rsa_root = CA.root("R1 RSA Root", key_type="rsa", rsa_bits=4096)
    rsa_issuing = rsa_root.intermediate("R1 RSA Issuing", key_type="rsa", rsa_bits=4096)
    tenants = [
        Tenant("two-tier", ("two.test",), (root.cert,), shared_anchors=True),
        Tenant("three-tier", ("three.test",), (root.cert,), (policy.cert,), shared_anchors=True),
        Tenant("rsa", ("rsa.test",), (rsa_root.cert,)),
    ]
    gate = CertGate(InMemoryRegistry(tenants))
    two = issuing.issue("d2", key_type="ec384")
    three = deep.issue("d3", key_type="ec384")
    rsa_device = rsa_issuing.issue("d4")
    assert _decide(gate, [two.cert_pem.decode(), issuing.cert_pem.decode()], "two.test").allowed
    assert _decide(gate, [three.cert_pem.decode(), deep.cert_pem.decode()], "three.test").allowed
    assert _decide(
        gate, [rsa_device.cert_pem.decode(), rsa_issuing.cert_pem.decode()], "rsa.test"
    ).allowed
    # P-256 chains of the shape the count limits allow keep verifying
    p256_root = CA.root("R1 P-256 Root")
    a = p256_root.intermediate("R1 A", path_length=2)
    b = a.intermediate("R1 B", path_length=1)
    c = b.intermediate("R1 C")
    gate2 = CertGate(InMemoryRegistry([Tenant("p256", ("p256.test",), (p256_root.cert,))]))
    leaf = c.issue("d5")
    chain = [leaf.cert_pem.decode(), c.cert_pem.decode(), b.cert_pem.decode(), a.cert_pem.decode()]
    assert _decide(gate2, chain, "p256.test").allowed
    # the costliest ordinary chain: a leaf under three client-sent P-384 intermediates
    deep384 = _p384_line()
    gate3 = CertGate(InMemoryRegistry([deep384.tenant]))
    assert _decide(gate3, deep384.chain, "p384line.test").allowed


@dataclasses.dataclass
class _Line:
    tenant: Tenant
    chain: list[str]


def _p384_line() -> _Line:
    """Root -> A -> B -> C -> leaf, all P-384; the client sends leaf, C, B, A."""
    root = CA.root("R1 Line Root", key_type="ec384")
    a = root.intermediate("R1 Line A", key_type="ec384", path_length=2)
    b = a.intermediate("R1 Line B", key_type="ec384", path_length=1)
    c = b.intermediate("R1 Line C", key_type="ec384")
    leaf = c.issue("line-device", key_type="ec384")
    return _Line(
        Tenant("p384line", ("p384line.test",), (root.cert,)),
        [leaf.cert_pem.decode(), c.cert_pem.decode(), b.cert_pem.decode(), a.cert_pem.decode()],
    )


def test_the_costliest_chain_within_the_budget(pki: PKI, quiet: None) -> None:
    """Three P-384 client-sent checks in a line: the most the budget allows.
    Refusing it must cost no more than verifying the ordinary chain of that
    shape (a leaf under three client-sent P-384 intermediates), measured
    side by side: the event loop is never held longer than by an ordinary
    verification."""
    line = _p384_line()
    keys = [ec.generate_private_key(ec.SECP384R1()) for _ in range(4)]
    names = [_name(f"Budget {i}") for i in range(4)]
    layers = [
        _ca(names[i], names[i + 1], keys[i].public_key(), keys[i + 1], 300 + i) for i in range(3)
    ]
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("device"))
        .issuer_name(names[0])
        .public_key(keys[1].public_key())
        .serial_number(9)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(keys[0], hashes.SHA384())
    )
    attack = [leaf.public_bytes(Encoding.PEM).decode(), *layers]
    gate = CertGate(InMemoryRegistry([line.tenant]), cache_size=0)
    assert _decide(gate, line.chain, "p384line.test").allowed
    assert _decide(gate, attack, "p384line.test").reason == "untrusted_chain"  # within limits
    ordinary, attacked = _median_costs(gate, [line.chain, attack], "p384line.test")
    assert attacked < 1.5 * ordinary, attacked / ordinary


# -- findings 2 and 3: the lookup pool under a hung registry, and per gate ----

REQUEST_DATA: contextvars.ContextVar[bytes] = contextvars.ContextVar("request_data")
"""What a framework or a logging library keeps in a context variable per
request (request ids, headers, the body...)."""


def test_lookups_queued_behind_a_hung_registry_do_not_pile_up(pki: PKI, quiet: None) -> None:
    """Every stuck lookup thread busy: each further request's lookup waited in
    an unbounded queue - with a copy of the request's context, so whatever
    the request kept in context variables - long after the request got its
    503. 300 requests kept 300 x 64 KiB alive."""
    hanging = HangingRegistry(pki.registry())
    gate = CertGate(hanging, registry_timeout=0.01)
    facts = tls_facts(ACME, pki["acme"].client())
    try:
        gc.collect()
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        for index in range(300):
            context = contextvars.copy_context()
            context.run(REQUEST_DATA.set, index.to_bytes(4, "big") * (16 * 1024))
            decision = context.run(gate.decide, facts)
            assert decision.reason is Reason.TRUST_STORE_UNAVAILABLE
            del context
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
        hanging.release.set()
    # bounded: at most the stuck threads' and the backlog's requests
    assert held < (LOOKUP_THREADS + MAX_BACKLOG + 10) * 64 * 1024, held


def test_a_full_backlog_is_refused_without_waiting(
    pki: PKI, quiet: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted = threading.Semaphore(0)
    submit = lookups.LookupPool.submit

    def counted(self: lookups.LookupPool, fn: Any) -> Any:
        try:
            return submit(self, fn)
        finally:
            submitted.release()

    monkeypatch.setattr(lookups.LookupPool, "submit", counted)
    hanging = HangingRegistry(pki.registry())
    gate = CertGate(hanging, registry_timeout=60.0)
    facts = tls_facts(ACME, pki["acme"].client())
    waiting = LOOKUP_THREADS + MAX_BACKLOG
    try:
        with ThreadPoolExecutor(waiting) as callers:
            pending = [callers.submit(gate.decide, facts) for _ in range(LOOKUP_THREADS)]
            deadline = time.monotonic() + 30
            while hanging.calls < LOOKUP_THREADS and time.monotonic() < deadline:
                time.sleep(0.01)  # polling a condition, with a deadline
            assert hanging.calls == LOOKUP_THREADS  # every thread stuck
            pending += [callers.submit(gate.decide, facts) for _ in range(MAX_BACKLOG)]
            for _ in range(waiting):  # and the backlog full
                assert submitted.acquire(timeout=30)
            started = time.monotonic()
            decision = gate.decide(facts)
            elapsed = time.monotonic() - started
            assert decision.reason is Reason.TRUST_STORE_UNAVAILABLE
            assert "without waiting" in decision.detail
            assert elapsed < 10.0, elapsed  # not the 60 s registry_timeout
            hanging.release.set()
            assert all(f.result(timeout=30).allowed for f in pending)
    finally:
        hanging.release.set()


def _pool_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("certgate-registry")}


def test_idle_lookup_threads_end(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gate per configuration reload (or per test) left up to 16 threads
    behind for ever: pool threads never ended, even after the gate was gone."""
    monkeypatch.setattr(lookups, "IDLE_TIMEOUT", 0.05)
    registry = HangingRegistry(pki.registry())
    registry.release.set()
    before = _pool_threads()
    facts = tls_facts(ACME, pki["acme"].client())
    for _ in range(20):
        assert CertGate(registry).decide(facts).allowed
    deadline = time.monotonic() + 20
    while _pool_threads() - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _pool_threads() - before
    gate = CertGate(registry)  # a pool whose threads ended still works
    assert gate.decide(facts).allowed
    time.sleep(0.3)
    assert gate.decide(facts).allowed


# -- findings 4 and 5: the ASGI middleware -----------------------------------


def test_header_names_sent_by_clients_are_not_kept(pki: PKI, quiet: None) -> None:
    """The middleware memoised up to 4096 header names for good: a client
    sending long made-up names (8 KiB each here; a server allows tens of KiB)
    pinned 32 MiB of its bytes for the life of the process."""
    app = RecordingApp()
    middleware = CertGateMiddleware(app, CertGate(pki.registry()))
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for index in range(4096):
            name = b"x-" + index.to_bytes(4, "big").hex().encode() * 1024  # 8 KiB
            run_http(middleware, http_scope(headers=[(name, b"v")]))
        app.scopes.clear()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert held < 4 * 1024 * 1024, held


@pytest.mark.parametrize(
    "headers",
    [
        [("host", "api.globex.test")],  # str pairs from an upstream middleware
        [(b"host", "api.globex.test")],
        [(b"cf-client-cert-der-base64", "abc")],
        [(b"host", b"api.globex.test", b"extra")],
        [None],
        5,
        [(bytearray(b"host"), b"x")],
    ],
    ids=["str-pair", "str-value", "str-cert-value", "triple", "none", "int", "bytearray"],
)
def test_a_malformed_scope_is_refused_not_a_500(pki: PKI, quiet: None, headers: Any) -> None:
    """Headers that are not (bytes, bytes) pairs - a bug upstream - raised
    out of the middleware: a 500 from the server instead of certgate's
    fail-closed answer."""
    app = RecordingApp()
    gate = CertGate(
        pki.registry(),
        trusted_proxies=["10.0.0.0/8"],
        header_sources=["cloudflare"],
        trust_reported_peer=True,
    )
    middleware = CertGateMiddleware(app, gate)
    for client, reasons in (
        (("10.1.2.3", 5000), {"internal_error"}),
        # from anyone else a certificate header is dropped unread
        (("203.0.113.9", 5000), {"internal_error", "no_certificate"}),
    ):
        scope = http_scope(client=client)
        scope["headers"] = headers
        result = run_http(middleware, scope)
        assert result.status == 403
        assert result.reason in reasons
        assert not app.scopes


# -- final review: names of hundreds of attributes; the walk's depth ----------


def _big_name(tag: str, attributes: int = 560) -> x509.Name:
    """A name of ``attributes`` RDNs (about 6.7 KB encoded at 560)."""
    filler = x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "a")])
    last = x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, tag)])
    return x509.Name([filler] * (attributes - 1) + [last])


@pytest.mark.parametrize("self_issued", [0, 3], ids=["line-of-4", "line-of-4-plus-3-self-issued"])
def test_huge_names_are_refused_before_any_name_is_handled(quiet: None, self_issued: int) -> None:
    """Every certificate within the other limits, but its names hundreds of
    attributes long: handling them as Python ``Name`` objects cost 8-14x
    verifying an ordinary leaf + three P-384 intermediates, before any limit
    applied. Now refused on the encoded size alone."""
    key = ec.generate_private_key(ec.SECP256R1())
    layers = [
        ca_builder(_big_name(f"L{i}"), _big_name(f"L{i + 1}"), key.public_key(), 10 + i)
        for i in range(4)
    ] + [
        ca_builder(_big_name(f"S{i}"), _big_name(f"S{i}"), key.public_key(), 20 + i)
        for i in range(self_issued)
    ]
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_big_name("device"))
        .issuer_name(_big_name("L0"))
        .public_key(key.public_key())
        .serial_number(9)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    attack = [leaf.public_bytes(Encoding.PEM).decode()] + [
        layer.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM).decode() for layer in layers
    ]
    line = _p384_line()
    gate = CertGate(InMemoryRegistry([line.tenant]), cache_size=0)
    decision = _decide(gate, attack, "p384line.test")
    ordinary, attacked = _median_costs(gate, [line.chain, attack], "p384line.test")
    assert attacked < ordinary, attacked / ordinary  # measured before the fix: 8.1x / 14.1x
    assert decision.reason == "malformed_certificate", decision.detail
    assert "name of" in decision.detail


def test_the_work_walk_counts_the_builders_last_level(pki: PKI, quiet: None) -> None:
    """With ``max_chain_depth=1`` the path builder still checks the issuers
    of a certificate at depth 1; the estimate skipped that level and let
    layers of P-384 look-alikes through at twice the budget."""
    root = CA.root("R1 Depth Root", key_type="ec384")
    gate = CertGate(
        InMemoryRegistry([Tenant("depth", ("depth.test",), (root.cert,))]),
        max_chain_depth=1,
        cache_size=0,
    )
    attack = _fanned((2, 2), ec.SECP384R1(), top=root.cert.subject)
    decision = _decide(gate, attack, "depth.test")
    assert decision.reason == "malformed_certificate", decision.detail
    assert "signature checks" in decision.detail
