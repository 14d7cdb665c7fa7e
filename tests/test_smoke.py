"""The shortest path through certgate: one tenant, one good certificate."""

from __future__ import annotations

from tests.conftest import PKI


def test_own_tenant_passes_and_other_tenant_fails(pki: PKI) -> None:
    from certgate import CertGate

    gate = CertGate(pki.registry())
    client = pki["acme"].client()
    allowed = gate.check("pay.acme.test", client.chain_ders)
    assert allowed.allowed
    assert allowed.identity is not None
    assert allowed.identity.tenant_id == "acme"
    refused = gate.check("api.globex.test", client.chain_ders)
    assert refused.reason is not None
    assert refused.reason.value == "untrusted_chain"
