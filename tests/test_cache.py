"""The verification cache: the LRU itself, and how the gate keys and expires it."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization

from certgate import (
    CertGate,
    ClientIdentity,
    ConfigError,
    InMemoryRegistry,
    Reason,
    RequestFacts,
    Tenant,
)
from certgate.cache import REFUSAL_TTL, ValidationCache
from certgate.devpki import IssuedCert
from certgate.sources.asgi_tls import from_scope
from tests.conftest import PKI, now

ACME = "pay.acme.test"
GLOBEX = "api.globex.test"
INITECH = "initech.test"

GateFactory = Callable[..., CertGate]


class Clock:
    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now


def tls_facts(host: str, issued: IssuedCert, *, leaf_only: bool = False) -> RequestFacts:
    certs = [issued.cert] if leaf_only else [issued.cert, *issued.issuers]
    pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in certs]
    presented = from_scope({"extensions": {"tls": {"client_cert_chain": pems}}})
    return RequestFacts(host=host, path="/", peer="192.0.2.1", headers={}, transport=presented)


# -- ValidationCache on its own ----------------------------------------------


@pytest.fixture(scope="module")
def identities(pki: PKI) -> list[ClientIdentity]:
    out = []
    for n in range(3):
        client = pki["globex"].client(f"cache-{n}")
        out.append(
            ClientIdentity.build(
                "globex", "test", client.cert, client.der, (client.cert, pki["globex"].issuer.cert)
            )
        )
    return out


def test_get_put_hits_and_misses(identities: list[ClientIdentity]) -> None:
    cache: ValidationCache[ClientIdentity] = ValidationCache(10)
    assert cache.get(b"a", 0.0) is None
    assert (cache.hits, cache.misses) == (0, 1)
    cache.put(b"a", identities[0], 100.0)
    assert len(cache) == 1
    assert cache.get(b"a", 50.0) is identities[0]
    assert cache.get(b"a", 99.999) is identities[0]
    assert cache.get(b"b", 50.0) is None
    assert (cache.hits, cache.misses) == (2, 2)


def test_entry_is_never_returned_at_or_after_expiry(identities: list[ClientIdentity]) -> None:
    cache: ValidationCache[ClientIdentity] = ValidationCache(10)
    cache.put(b"a", identities[0], 100.0)
    assert cache.get(b"a", 100.0) is None
    assert len(cache) == 0  # dropped, not just hidden
    cache.put(b"b", identities[1], 100.0)
    assert cache.get(b"b", 1e12) is None
    assert (cache.hits, cache.misses) == (0, 2)


def test_put_again_replaces_entry_and_expiry(identities: list[ClientIdentity]) -> None:
    cache: ValidationCache[ClientIdentity] = ValidationCache(10)
    cache.put(b"a", identities[0], 100.0)
    cache.put(b"a", identities[1], 50.0)
    assert len(cache) == 1
    assert cache.get(b"a", 49.0) is identities[1]
    assert cache.get(b"a", 60.0) is None


def test_lru_bound_evicts_least_recently_used(identities: list[ClientIdentity]) -> None:
    cache: ValidationCache[ClientIdentity] = ValidationCache(2)
    cache.put(b"a", identities[0], 100.0)
    cache.put(b"b", identities[1], 100.0)
    assert cache.get(b"a", 1.0) is identities[0]  # "a" is now the most recent
    cache.put(b"c", identities[2], 100.0)
    assert len(cache) == 2
    assert cache.get(b"b", 1.0) is None
    assert cache.get(b"a", 1.0) is identities[0]
    assert cache.get(b"c", 1.0) is identities[2]


def test_lru_without_reads_evicts_oldest(identities: list[ClientIdentity]) -> None:
    cache: ValidationCache[ClientIdentity] = ValidationCache(1)
    cache.put(b"a", identities[0], 100.0)
    cache.put(b"b", identities[1], 100.0)
    assert len(cache) == 1
    assert cache.get(b"a", 1.0) is None
    assert cache.get(b"b", 1.0) is identities[1]


def test_clear(identities: list[ClientIdentity]) -> None:
    cache: ValidationCache[ClientIdentity] = ValidationCache(10)
    cache.put(b"a", identities[0], 100.0)
    cache.put(b"b", identities[1], 100.0)
    cache.clear()
    assert len(cache) == 0
    assert cache.get(b"a", 1.0) is None


def test_size_zero_stores_nothing(identities: list[ClientIdentity]) -> None:
    cache: ValidationCache[ClientIdentity] = ValidationCache(0)
    cache.put(b"a", identities[0], 100.0)
    assert len(cache) == 0
    assert cache.get(b"a", 1.0) is None


def test_negative_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="cache_size"):
        ValidationCache(-1)


# -- the gate's use of the cache ---------------------------------------------


def test_second_request_is_a_cache_hit(pki: PKI, make_gate: GateFactory) -> None:
    gate = make_gate()
    facts = tls_facts(ACME, pki["acme"].client())
    first = gate.decide(facts)
    second = gate.decide(facts)
    assert first.reason is None
    assert second.reason is None
    assert second.identity is first.identity
    assert (gate.cache.hits, gate.cache.misses, len(gate.cache)) == (1, 1, 1)


def test_trust_id_follows_the_trust(pki: PKI) -> None:
    acme = pki["acme"]
    assert acme.tenant().trust_id == acme.tenant().trust_id
    other_root = Tenant("acme", acme.hosts, (pki["globex"].roots[0].cert,))
    assert other_root.trust_id != acme.tenant().trust_id
    with_inter = Tenant("acme", acme.hosts, (acme.roots[0].cert,), (acme.issuer.cert,))
    assert with_inter.trust_id != acme.tenant().trust_id
    other_id = Tenant("acme2", (), (acme.roots[0].cert,))
    assert other_id.trust_id != acme.tenant().trust_id
    other_hosts = Tenant("acme", ("elsewhere.test",), (acme.roots[0].cert,))
    assert other_hosts.trust_id == acme.tenant().trust_id  # hosts are not trust


def test_changed_root_rejects_previously_cached_certificate(pki: PKI) -> None:
    registry = pki.registry()
    gate = CertGate(registry)
    acme = pki["acme"]
    facts = tls_facts(ACME, acme.client())
    assert gate.decide(facts).reason is None
    assert len(gate.cache) == 1

    registry.put(Tenant("acme", acme.hosts, (pki.rogue.cert,)))  # another root
    refused = gate.decide(facts)
    assert refused.reason is Reason.UNTRUSTED_CHAIN
    assert refused.tenant_id == "acme"
    assert gate.cache.hits == 0

    # the original trust again: same trust_id, so the old entry is valid again
    registry.put(acme.tenant())
    assert gate.decide(facts).reason is None
    assert gate.cache.hits == 1


def test_removed_intermediate_rejects_previously_cached_leaf(pki: PKI) -> None:
    registry = pki.registry()
    gate = CertGate(registry)
    initech = pki["initech"]
    facts = tls_facts(INITECH, initech.client(), leaf_only=True)
    assert gate.decide(facts).reason is None
    registry.put(Tenant("initech", initech.hosts, tuple(r.cert for r in initech.roots)))
    assert gate.decide(facts).reason is Reason.UNTRUSTED_CHAIN


def test_same_chain_for_two_tenants_is_two_keys(pki: PKI, make_gate: GateFactory) -> None:
    gate = make_gate()
    client = pki["acme"].client()
    assert gate.decide(tls_facts(ACME, client)).reason is None
    assert len(gate.cache) == 1
    refused = gate.decide(tls_facts(GLOBEX, client))
    assert refused.reason is Reason.UNTRUSTED_CHAIN
    assert refused.tenant_id == "globex"
    assert gate.cache.hits == 0
    assert len(gate.cache) == 1
    # and still allowed where it belongs
    assert gate.decide(tls_facts(ACME, client)).reason is None
    assert gate.cache.hits == 1


def test_two_tenants_with_the_same_roots_get_their_own_identity(pki: PKI) -> None:
    """The ASP.NET Core bug: one scheme's cached result returned for another."""
    root = pki["acme"].roots[0].cert
    gate = CertGate(
        InMemoryRegistry(
            [
                Tenant("blue", ("blue.test",), (root,), shared_anchors=True),
                Tenant("green", ("green.test",), (root,), shared_anchors=True),
            ]
        )
    )
    client = pki["acme"].client()
    blue = gate.decide(tls_facts("blue.test", client))
    green = gate.decide(tls_facts("green.test", client))
    assert blue.identity is not None
    assert green.identity is not None
    assert blue.identity.tenant_id == "blue"
    assert green.identity.tenant_id == "green"
    assert green.tenant_id == "green"
    assert len(gate.cache) == 2
    assert gate.cache.hits == 0


def test_not_yet_valid_is_never_remembered(pki: PKI, make_gate: GateFactory) -> None:
    client = pki["acme"].client(not_before=now() + dt.timedelta(hours=1))
    not_before = client.cert.not_valid_before_utc
    clock = Clock(not_before - dt.timedelta(minutes=5))
    gate = make_gate(clock=clock)
    facts = tls_facts(ACME, client)
    assert gate.decide(facts).reason is Reason.NOT_YET_VALID
    assert gate.decide(facts).reason is Reason.NOT_YET_VALID
    assert len(gate.cache) == 0
    assert len(gate.refusals) == 0
    clock.now = not_before
    assert gate.decide(facts).reason is None
    assert len(gate.cache) == 1


def test_tenant_gaining_the_root_is_not_refused_from_a_stale_entry(pki: PKI) -> None:
    registry = pki.registry()
    gate = CertGate(registry)
    facts = tls_facts(GLOBEX, pki.rogue.issue("device-of-a-new-root"))
    assert gate.decide(facts).reason is Reason.UNTRUSTED_CHAIN
    globex = pki["globex"]
    registry.put(Tenant("globex", globex.hosts, (globex.roots[0].cert, pki.rogue.cert)))
    assert gate.decide(facts).reason is None


def test_refusals_are_remembered_briefly_and_separately(pki: PKI, make_gate: GateFactory) -> None:
    clock = Clock(now())
    gate = make_gate(clock=clock, cache_size=8)
    foreign = tls_facts(GLOBEX, pki["acme"].client("foreign"))
    first = gate.decide(foreign)
    assert first.reason is Reason.UNTRUSTED_CHAIN
    assert (len(gate.refusals), gate.refusals.hits) == (1, 0)
    again = gate.decide(foreign)
    assert again.reason is Reason.UNTRUSTED_CHAIN
    assert again.detail == first.detail
    assert gate.refusals.hits == 1
    assert len(gate.cache) == 0  # refusals never take space from successes
    clock.now += dt.timedelta(seconds=REFUSAL_TTL)
    assert gate.decide(foreign).reason is Reason.UNTRUSTED_CHAIN
    assert gate.refusals.hits == 1  # expired entry: verified again


def test_refusal_is_forgotten_when_the_trust_changes(pki: PKI) -> None:
    registry = pki.registry()
    gate = CertGate(registry)
    facts = tls_facts(GLOBEX, pki.rogue.issue("soon-trusted"))
    assert gate.decide(facts).reason is Reason.UNTRUSTED_CHAIN
    globex = pki["globex"]
    registry.put(Tenant("globex", globex.hosts, (globex.roots[0].cert, pki.rogue.cert)))
    assert gate.decide(facts).reason is None


def test_fingerprint_mismatch_is_not_remembered(pki: PKI) -> None:
    gate = CertGate(pki.registry(), trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])
    der = pki["globex"].client("fp").der
    value = base64.b64encode(der).decode()

    def facts(digest: str) -> RequestFacts:
        headers = {"cf-client-cert-der-base64": [value], "cf-client-cert-sha256": [digest]}
        return RequestFacts(host=GLOBEX, path="/", peer="10.0.0.1", headers=headers, transport=None)

    assert gate.decide(facts("0" * 64)).reason is Reason.FINGERPRINT_MISMATCH
    assert gate.decide(facts(hashlib.sha256(der).hexdigest())).reason is None


def test_cache_size_zero_disables_caching(pki: PKI, make_gate: GateFactory) -> None:
    gate = make_gate(cache_size=0)
    facts = tls_facts(ACME, pki["acme"].client())
    first = gate.decide(facts)
    second = gate.decide(facts)
    assert first.reason is None
    assert second.reason is None
    assert first.identity is not None
    assert second.identity is not first.identity
    assert len(gate.cache) == 0
    assert gate.cache.hits == 0
    assert gate.cache.misses == 0  # a disabled cache is not even consulted


def test_cache_entry_is_bound_to_the_source(pki: PKI) -> None:
    """The same leaf through the TLS transport and through a forwarded header
    are separate entries (the key hashes the source name)."""
    client = pki["initech"].client()
    gate = CertGate(pki.registry(), trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])
    header = RequestFacts(
        host=INITECH,
        path="/",
        peer="10.1.2.3",
        headers={"cf-client-cert-der-base64": [base64.b64encode(client.der).decode()]},
        transport=None,
    )
    direct = tls_facts(INITECH, client, leaf_only=True)
    a = gate.decide(header)
    b = gate.decide(direct)
    assert a.identity is not None
    assert b.identity is not None
    assert (a.identity.source, b.identity.source) == ("cloudflare", "asgi_tls")
    assert len(gate.cache) == 2


def test_cache_hit_still_checks_forwarded_fingerprint(pki: PKI) -> None:
    client = pki["initech"].client()
    value = base64.b64encode(client.der).decode()
    gate = CertGate(pki.registry(), trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])

    def facts(digest: str) -> RequestFacts:
        return RequestFacts(
            host=INITECH,
            path="/",
            peer="10.1.2.3",
            headers={"cf-client-cert-der-base64": [value], "cf-client-cert-sha256": [digest]},
            transport=None,
        )

    good = hashlib.sha256(client.der).hexdigest()
    assert gate.decide(facts(good.upper())).reason is None
    assert len(gate.cache) == 1
    assert gate.decide(facts("0" * 64)).reason is Reason.FINGERPRINT_MISMATCH
    assert gate.cache.hits == 1
