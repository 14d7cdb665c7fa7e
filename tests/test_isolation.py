"""Tenant isolation: a client certificate of tenant T is accepted exactly on
T's hosts and refused (``untrusted_chain``) on every other tenant's hosts.

Every (client tenant, host) pair is its own test, once through
:meth:`CertGate.check` (the client sends its full chain) and once through
:meth:`CertGate.decide` with the leaf forwarded by a trusted Cloudflare peer
(Cloudflare forwards the leaf only, so that registry configures every
tenant's issuing intermediate).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pytest

from certgate import CertGate, InMemoryRegistry, Reason, RequestFacts, Tenant
from certgate.devpki import CA, IssuedCert
from tests.conftest import PKI

# Request hosts per tenant, as a client would send them; wildcard hosts are
# represented by a name under the wildcard.
TENANT_HOSTS: dict[str, tuple[str, ...]] = {
    "acme": ("pay.acme.test", "x.acme.test", "PAY.Acme.Test:443"),
    "globex": ("api.globex.test",),
    "initech": ("initech.test", "initech.test."),
    "umbrella": ("umbrella.test", "x.eu.umbrella.test"),
    "hooli": ("hooli.test", "192.0.2.10", "[2001:db8::10]:8443"),
}
UNKNOWN_HOSTS = (
    "acme.test",  # the apex of *.acme.test
    "a.b.acme.test",  # two labels under *.acme.test
    "eu.umbrella.test",
    "evil.test",
    "pay.acme.test.evil.test",
    "192.0.2.11",
)

CELLS = [
    pytest.param(client, owner, host, id=f"{client}-cert-on-{host}")
    for client in TENANT_HOSTS
    for owner, hosts in TENANT_HOSTS.items()
    for host in hosts
]
UNKNOWN_CELLS = [
    pytest.param(client, host, id=f"{client}-cert-on-{host}")
    for client in TENANT_HOSTS
    for host in UNKNOWN_HOSTS
]

CLOUDFLARE_PEER = "10.20.30.40"


@dataclass
class World:
    clients: dict[str, IssuedCert]
    chain_registry: InMemoryRegistry
    """Clients must send their intermediates (acme, umbrella)."""
    leaf_registry: InMemoryRegistry
    """Every issuing intermediate configured: the leaf alone is enough."""


@pytest.fixture(scope="module")
def world(pki: PKI) -> World:
    umbrella_root = CA.root("Umbrella Root CA", organization="Umbrella")
    umbrella_issuing = umbrella_root.intermediate("Umbrella Issuing CA", organization="Umbrella")
    hooli_root = CA.root("Hooli Root CA", organization="Hooli", key_type="ec384")
    umbrella_hosts = ("umbrella.test", "*.eu.umbrella.test")
    hooli_hosts = ("hooli.test", "192.0.2.10", "2001:db8::10")

    chain_registry = pki.registry()
    chain_registry.put(Tenant("umbrella", umbrella_hosts, (umbrella_root.cert,)))
    chain_registry.put(Tenant("hooli", hooli_hosts, (hooli_root.cert,)))

    acme = pki["acme"]
    leaf_registry = pki.registry()
    leaf_registry.put(Tenant("acme", acme.hosts, (acme.roots[0].cert,), (acme.issuer.cert,)))
    leaf_registry.put(
        Tenant("umbrella", umbrella_hosts, (umbrella_root.cert,), (umbrella_issuing.cert,))
    )
    leaf_registry.put(Tenant("hooli", hooli_hosts, (hooli_root.cert,)))

    clients = {
        "acme": acme.client(),
        "globex": pki["globex"].client(),
        "initech": pki["initech"].client(),
        "umbrella": umbrella_issuing.issue("device-of-umbrella"),
        "hooli": hooli_root.issue("device-of-hooli", key_type="ed25519"),
    }
    return World(clients, chain_registry, leaf_registry)


@pytest.fixture(scope="module")
def check_gate(world: World) -> CertGate:
    return CertGate(world.chain_registry)


@pytest.fixture(scope="module")
def cloudflare_gate(world: World) -> CertGate:
    return CertGate(
        world.leaf_registry, trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"]
    )


def cloudflare_facts(host: str, leaf: IssuedCert, peer: str = CLOUDFLARE_PEER) -> RequestFacts:
    return RequestFacts(
        host=host,
        path="/api",
        peer=peer,
        headers={"cf-client-cert-der-base64": [base64.b64encode(leaf.der).decode()]},
        transport=None,
    )


def test_matrix_covers_every_tenant_of_both_registries(world: World) -> None:
    ids = set(TENANT_HOSTS)
    assert {t.id for t in world.chain_registry.tenants()} == ids
    assert {t.id for t in world.leaf_registry.tenants()} == ids
    assert set(world.clients) == ids


@pytest.mark.parametrize(("client", "owner", "host"), CELLS)
def test_check(check_gate: CertGate, world: World, client: str, owner: str, host: str) -> None:
    decision = check_gate.check(host, world.clients[client].chain_ders)
    assert decision.tenant_id == owner
    if client == owner:
        assert decision.reason is None, decision.detail
        assert decision.identity is not None
        assert decision.identity.tenant_id == owner
    else:
        assert decision.reason is Reason.UNTRUSTED_CHAIN
        assert decision.identity is None


@pytest.mark.parametrize(("client", "owner", "host"), CELLS)
def test_decide_cloudflare(
    cloudflare_gate: CertGate, world: World, client: str, owner: str, host: str
) -> None:
    decision = cloudflare_gate.decide(cloudflare_facts(host, world.clients[client]))
    assert decision.tenant_id == owner
    assert decision.source == "cloudflare"
    if client == owner:
        assert decision.reason is None, decision.detail
        assert decision.identity is not None
        assert decision.identity.tenant_id == owner
        assert decision.identity.source == "cloudflare"
    else:
        assert decision.reason is Reason.UNTRUSTED_CHAIN
        assert decision.identity is None


@pytest.mark.parametrize(("client", "host"), UNKNOWN_CELLS)
def test_unknown_host_check(check_gate: CertGate, world: World, client: str, host: str) -> None:
    decision = check_gate.check(host, world.clients[client].chain_ders)
    assert decision.reason is Reason.UNKNOWN_TENANT
    assert decision.tenant_id is None


@pytest.mark.parametrize(("client", "host"), UNKNOWN_CELLS)
def test_unknown_host_decide(
    cloudflare_gate: CertGate, world: World, client: str, host: str
) -> None:
    decision = cloudflare_gate.decide(cloudflare_facts(host, world.clients[client]))
    assert decision.reason is Reason.UNKNOWN_TENANT
    assert decision.tenant_id is None


def test_headers_from_an_untrusted_peer_never_count(
    cloudflare_gate: CertGate, world: World
) -> None:
    facts = cloudflare_facts("pay.acme.test", world.clients["acme"], peer="203.0.113.5")
    assert cloudflare_gate.decide(facts).reason is Reason.NO_CERTIFICATE


def test_cloudflare_leaf_needs_configured_intermediate(pki: PKI) -> None:
    """With the conftest registry acme's intermediate is not configured, and
    Cloudflare forwards the leaf only: refused even on acme's own host."""
    gate = CertGate(pki.registry(), trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])
    decision = gate.decide(cloudflare_facts("pay.acme.test", pki["acme"].client()))
    assert decision.reason is Reason.UNTRUSTED_CHAIN
    assert decision.tenant_id == "acme"
