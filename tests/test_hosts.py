"""Host normalisation, host patterns, the host index and tenant selection."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from certgate import (
    CertGate,
    ConfigError,
    InMemoryRegistry,
    Reason,
    Rejected,
    RequestFacts,
    Tenant,
)
from certgate.devpki import IssuedCert
from certgate.hosts import normalize_host, normalize_pattern, parent_domain
from certgate.registry import HostIndex
from certgate.sources.asgi_tls import from_scope
from tests.conftest import PKI

# -- normalize_host ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("pay.acme.test", "pay.acme.test"),
        ("PAY.Acme.TEST", "pay.acme.test"),
        ("  pay.acme.test  ", "pay.acme.test"),
        ("pay.acme.test:443", "pay.acme.test"),
        ("pay.acme.test:8443", "pay.acme.test"),
        ("pay.acme.test:0", "pay.acme.test"),
        ("pay.acme.test:65535", "pay.acme.test"),
        ("pay.acme.test.", "pay.acme.test"),
        ("Pay.Acme.Test.:443", "pay.acme.test"),
        ("localhost", "localhost"),
        ("x", "x"),
        ("a-b.c_d.test", "a-b.c_d.test"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("bücher.example:8443", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("münchen.de.", "xn--mnchen-3ya.de"),
        ("192.0.2.1", "192.0.2.1"),
        ("192.0.2.1:8080", "192.0.2.1"),
        ("[::1]", "::1"),
        ("[::1]:8443", "::1"),
        ("[2001:DB8:0:0:0:0:0:1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("a" * 63 + ".test", "a" * 63 + ".test"),
        (".".join(["a" * 61] * 4), ".".join(["a" * 61] * 4)),  # 247 characters
    ],
)
def test_normalize_host(raw: str, expected: str) -> None:
    assert normalize_host(raw, allow_unicode=True) == expected
    if raw.isascii():
        assert normalize_host(raw) == expected
    else:  # a request's Host must be ASCII: clients send A-labels
        with pytest.raises(Rejected) as caught:
            normalize_host(raw)
        assert caught.value.reason is Reason.INVALID_HOST
        assert normalize_host(expected) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "p\u00aay.globex.test",
        "stra\u00dfe.test",
        "a\u00adb.test",
        "api.globex.test\u00a0",
        "\u0085api.globex.test",
    ],
)
def test_request_host_never_folds_non_ascii(raw: str) -> None:
    """IDNA 2003 would fold these to other ASCII names (pªy -> pay, ß -> ss,
    soft hyphen dropped, NBSP/NEL stripped) that a router might not agree on."""
    with pytest.raises(Rejected) as caught:
        normalize_host(raw)
    assert caught.value.reason is Reason.INVALID_HOST


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param(".", id="dot"),
        pytest.param("a b", id="space"),
        pytest.param("a\tb.test", id="tab"),
        pytest.param("host:99999", id="port-too-big"),
        pytest.param("host:65536", id="port-65536"),
        pytest.param("host:abc", id="port-not-numeric"),
        pytest.param("host:", id="port-empty"),
        pytest.param("host:443:443", id="two-ports"),
        pytest.param("host:-1", id="port-negative"),
        pytest.param("[::1", id="unterminated-ipv6"),
        pytest.param("[::1]x", id="ipv6-junk-after"),
        pytest.param("[::1]:99999", id="ipv6-bad-port"),
        pytest.param("[not-an-ip]", id="brackets-not-ip"),
        pytest.param("[192.0.2.1]", id="ipv4-in-brackets"),
        pytest.param("::1", id="ipv6-without-brackets"),
        pytest.param("a..b", id="empty-label"),
        pytest.param(".a.b", id="leading-dot"),
        pytest.param("a.b..", id="two-trailing-dots"),
        pytest.param("x" * 300, id="300-chars"),
        pytest.param(".".join(["a" * 63] * 4), id="255-chars"),
        pytest.param("a" * 64 + ".test", id="64-char-label"),
        pytest.param("a" * 64 + ".test.", id="64-char-label-trailing-dot"),
        pytest.param("-a.test", id="leading-hyphen"),
        pytest.param("a.-b.test", id="label-leading-hyphen"),
        pytest.param("a-.test", id="label-trailing-hyphen"),
        pytest.param("user@host", id="userinfo"),
        pytest.param("user:pw@host", id="userinfo-password"),
        pytest.param("host/path", id="slash"),
        pytest.param("host\\x", id="backslash"),
        pytest.param("ho*st", id="asterisk"),
        pytest.param("*.acme.test", id="wildcard-as-host"),
        pytest.param("a\u05d0.test", id="idna-bidi"),
        pytest.param("\ufffd.test", id="idna-prohibited"),
        pytest.param("ü" * 64 + ".test", id="idna-label-too-long"),
        pytest.param("host\x00.test", id="nul"),
    ],
)
def test_invalid_hosts_are_rejected(raw: str | None) -> None:
    with pytest.raises(Rejected) as info:
        normalize_host(raw)
    assert info.value.reason is Reason.INVALID_HOST


def _outcome(raw: str) -> str | Reason:
    try:
        return normalize_host(raw)
    except Rejected as exc:
        return exc.reason


_LABELS = st.text(alphabet="ab-_09", max_size=66)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LABELS, min_size=1, max_size=5).map(".".join))
def test_fast_and_slow_paths_agree(name: str) -> None:
    """A trailing dot or a port forces the slow path; the result must not change."""
    outcome = _outcome(name)
    if not name.endswith("."):  # one trailing dot is stripped, a second is not
        assert _outcome(name + ".") == outcome
    assert _outcome(name + ":443") == outcome
    assert _outcome(name.upper()) == outcome
    if isinstance(outcome, str):
        assert normalize_host(outcome) == outcome  # idempotent
        assert len(outcome) <= 253
        assert all(0 < len(label) <= 63 for label in outcome.split("."))
        assert not any(label.startswith("-") or label.endswith("-") for label in outcome.split("."))


def test_invalid_host_detail_is_bounded() -> None:
    with pytest.raises(Rejected) as info:
        normalize_host("ä" * 5000 + " x")
    assert info.value.reason is Reason.INVALID_HOST
    assert len(info.value.detail) < 400


def test_parent_domain() -> None:
    assert parent_domain("a.b.example") == "b.example"
    assert parent_domain("example") is None


# -- normalize_pattern -------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("Pay.Acme.Test", "pay.acme.test"),
        ("pay.acme.test.", "pay.acme.test"),
        ("*.Acme.Test", "*.acme.test"),
        ("*.bücher.example", "*.xn--bcher-kva.example"),
        (" *.acme.test ", "*.acme.test"),
        ("192.0.2.10", "192.0.2.10"),
        ("2001:DB8::10", "2001:db8::10"),
        ("[2001:db8::10]", "2001:db8::10"),
    ],
)
def test_normalize_pattern(pattern: str, expected: str) -> None:
    assert normalize_pattern(pattern) == expected


@pytest.mark.parametrize(
    "pattern",
    [
        "a.*.b",
        "*",
        "**.acme.test",
        "*acme.test",
        "*.*.acme.test",
        "acme.*",
        "host:443",
        "*.acme.test:443",
        "[::1]:443",
        "*.192.0.2.1",
        "*.[::1]",
        "",
        "a b",
        "a..b",
        "*.",
    ],
)
def test_bad_patterns_are_config_errors(pattern: str) -> None:
    with pytest.raises(ConfigError, match="host pattern"):
        normalize_pattern(pattern)


# -- HostIndex and InMemoryRegistry ------------------------------------------


def tenant(pki: PKI, tenant_id: str, *hosts: str) -> Tenant:
    """A conftest tenant's trust with the given hosts."""
    tenant_pki = pki[tenant_id]
    return Tenant(
        tenant_id,
        hosts,
        tuple(r.cert for r in tenant_pki.roots),
        tuple(i.cert for i in tenant_pki.configured_intermediates),
    )


def test_exact_beats_wildcard(pki: PKI) -> None:
    wild = tenant(pki, "acme", "*.acme.test")
    exact = tenant(pki, "globex", "pay.acme.test")
    index = HostIndex.build([wild, exact])
    assert index.lookup("pay.acme.test") is exact
    assert index.lookup("x.acme.test") is wild
    # order of registration does not matter
    index = HostIndex.build([exact, wild])
    assert index.lookup("pay.acme.test") is exact


def test_wildcard_matches_one_label_only(pki: PKI) -> None:
    wild = tenant(pki, "acme", "*.acme.test")
    index = HostIndex.build([wild])
    assert index.lookup("x.acme.test") is wild
    assert index.lookup("acme.test") is None
    assert index.lookup("a.b.acme.test") is None
    assert index.lookup("xacme.test") is None
    assert index.lookup("test") is None


def test_tenant_hosts_are_normalised(pki: PKI) -> None:
    t = tenant(pki, "acme", "PAY.Acme.Test.", "*.Bücher.Example", "2001:DB8::1")
    assert t.hosts == ("pay.acme.test", "*.xn--bcher-kva.example", "2001:db8::1")
    registry = InMemoryRegistry([t])
    gate = CertGate(registry)
    for raw in ("Pay.Acme.Test:443", "shop.bücher.example", "[2001:db8:0::1]:8443"):
        assert registry.tenant_for_host(normalize_host(raw, allow_unicode=True)) is t
        client = pki["acme"].client()
        assert gate.check(raw, client.chain_ders).reason is None


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("pay.acme.test", "pay.acme.test"),
        ("pay.acme.test", "PAY.ACME.TEST."),
        ("*.acme.test", "*.ACME.test"),
        ("2001:db8::1", "[2001:DB8::1]"),
    ],
)
def test_two_tenants_claiming_one_host(pki: PKI, first: str, second: str) -> None:
    a = tenant(pki, "acme", first)
    b = tenant(pki, "globex", second)
    with pytest.raises(ConfigError, match=r"claimed by tenants 'acme' and 'globex'"):
        HostIndex.build([a, b])
    with pytest.raises(ConfigError, match="claimed"):
        InMemoryRegistry([a, b])


def test_duplicate_tenant_ids(pki: PKI) -> None:
    with pytest.raises(ConfigError, match="duplicate tenant id 'acme'"):
        HostIndex.build([tenant(pki, "acme", "a.test"), tenant(pki, "acme", "b.test")])


def test_registry_put_remove_replace_all(pki: PKI) -> None:
    acme = tenant(pki, "acme", "pay.acme.test")
    globex = tenant(pki, "globex", "api.globex.test")
    registry = InMemoryRegistry([acme])
    assert registry.tenants() == [acme]
    assert registry.tenant_for_host("pay.acme.test") is acme
    assert registry.tenant_by_id("acme") is acme
    assert registry.tenant_by_id("globex") is None

    registry.put(globex)
    assert registry.tenants() == [acme, globex]
    assert registry.tenant_for_host("api.globex.test") is globex

    moved = tenant(pki, "acme", "new.acme.test")
    registry.put(moved)  # same id: replaced, old host gone
    assert registry.tenant_by_id("acme") is moved
    assert registry.tenant_for_host("pay.acme.test") is None
    assert registry.tenant_for_host("new.acme.test") is moved
    assert len(registry.tenants()) == 2

    with pytest.raises(ConfigError, match="claimed"):
        registry.put(tenant(pki, "initech", "new.acme.test"))
    assert registry.tenant_by_id("initech") is None  # failed put changes nothing

    registry.remove("acme")
    assert registry.tenant_by_id("acme") is None
    assert registry.tenant_for_host("new.acme.test") is None
    registry.remove("no-such-tenant")  # ignored
    assert registry.tenants() == [globex]

    initech = tenant(pki, "initech", "initech.test")
    registry.replace_all([initech])
    assert registry.tenants() == [initech]
    assert registry.tenant_for_host("api.globex.test") is None

    with pytest.raises(ConfigError, match="duplicate"):
        registry.replace_all([acme, tenant(pki, "acme", "other.test")])
    assert registry.tenants() == [initech]  # failed replace keeps the old set


def test_registry_change_is_seen_by_the_gate(pki: PKI) -> None:
    registry = InMemoryRegistry([tenant(pki, "acme", "pay.acme.test")])
    gate = CertGate(registry)
    client = pki["acme"].client()
    assert gate.check("pay.acme.test", client.chain_ders).reason is None
    registry.remove("acme")
    assert gate.check("pay.acme.test", client.chain_ders).reason is Reason.UNKNOWN_TENANT


# -- gate host handling and custom resolvers --------------------------------


def tls_facts(host: str | None, path: str, issued: IssuedCert) -> RequestFacts:
    pems = [c.public_bytes(Encoding.PEM).decode() for c in (issued.cert, *issued.issuers)]
    presented = from_scope({"extensions": {"tls": {"client_cert_chain": pems}}})
    return RequestFacts(host=host, path=path, peer="192.0.2.1", headers={}, transport=presented)


@pytest.mark.parametrize("host", [None, "", "a b", "host:abc", "[::1"])
def test_gate_invalid_host(pki: PKI, host: str | None) -> None:
    gate = CertGate(pki.registry())
    decision = gate.decide(tls_facts(host, "/", pki["acme"].client()))
    assert decision.reason is Reason.INVALID_HOST
    assert decision.status == 400
    if host is not None:
        assert gate.check(host, pki["acme"].client().chain_ders).reason is Reason.INVALID_HOST


def path_resolver(facts: RequestFacts) -> str | None:
    """``/t/<tenant>/...`` -> ``<tenant>``."""
    parts = facts.path.split("/")
    if len(parts) >= 3 and parts[0] == "" and parts[1] == "t" and parts[2]:
        return parts[2]
    return None


def test_custom_resolver_routes_by_tenant_id(pki: PKI) -> None:
    gate = CertGate(pki.registry(), tenant_resolver=path_resolver)
    acme_client = pki["acme"].client()
    globex_client = pki["globex"].client()

    # the Host header no longer matters: the path names the tenant
    allowed = gate.decide(tls_facts("api.globex.test", "/t/acme/orders", acme_client))
    assert allowed.reason is None
    assert allowed.identity is not None
    assert allowed.identity.tenant_id == "acme"

    refused = gate.decide(tls_facts("pay.acme.test", "/t/globex/orders", acme_client))
    assert refused.reason is Reason.UNTRUSTED_CHAIN
    assert refused.tenant_id == "globex"
    assert gate.decide(tls_facts(None, "/t/globex/x", globex_client)).reason is None

    unknown = gate.decide(tls_facts("pay.acme.test", "/t/nobody/x", acme_client))
    assert unknown.reason is Reason.UNKNOWN_TENANT
    no_tenant = gate.decide(tls_facts("pay.acme.test", "/orders", acme_client))
    assert no_tenant.reason is Reason.UNKNOWN_TENANT


def test_resolver_may_reject_on_purpose(pki: PKI) -> None:
    def refuse(facts: RequestFacts) -> str | None:
        raise Rejected(Reason.INVALID_HOST, "resolver says no")

    gate = CertGate(pki.registry(), tenant_resolver=refuse)
    decision = gate.decide(tls_facts("pay.acme.test", "/", pki["acme"].client()))
    assert decision.reason is Reason.INVALID_HOST


def test_resolver_crash_fails_closed(pki: PKI) -> None:
    def crash(facts: RequestFacts) -> str | None:
        raise RuntimeError("boom")

    gate = CertGate(pki.registry(), tenant_resolver=crash)
    decision = gate.decide(tls_facts("pay.acme.test", "/", pki["acme"].client()))
    assert decision.reason is Reason.INTERNAL_ERROR  # a bug, never reported as an attack
    assert not decision.allowed
