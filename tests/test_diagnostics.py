"""A refusal says where the path breaks: the missing issuer by name and key
id, an expired tenant CA with its date, a chain ending at a foreign root -
in the log and `certgate check`, never in the response body."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from cryptography import x509
from examples.devenv import DevEnv, make_dev_environment

from certgate.cli import main
from certgate.devpki import CA
from certgate.diagnostics import explain_untrusted
from certgate.gate import CertGate
from certgate.registry import InMemoryRegistry
from certgate.tenant import Tenant
from certgate.testing import with_client_cert

NOW = dt.datetime.now(dt.UTC)


def ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


def key_id(cert: x509.Certificate) -> str:
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return ski.digest.hex()


@pytest.fixture(scope="module")
def pki() -> dict[str, CA]:
    root = CA.root("Acme Root")
    return {
        "root": root,
        "issuing": root.intermediate("Acme Issuing"),
        "old": CA.root("Old Root", not_before=ago(400), not_after=ago(2)),
        "foreign": CA.root("Foreign Root"),
    }


def gate_for(*tenants: Tenant) -> CertGate:
    return CertGate(InMemoryRegistry(tenants))


def test_leaf_without_its_intermediate_names_the_missing_issuer(pki: dict[str, CA]) -> None:
    device = pki["issuing"].issue("sensor-1")
    gate = gate_for(Tenant("acme", ("a.test",), (pki["root"].cert,)))
    decision = gate.check("a.test", [device.der])
    assert decision.reason == "untrusted_chain"
    assert decision.detail.startswith("issuer CN=Acme Issuing")
    assert f"key id {key_id(pki['issuing'].cert)}" in decision.detail
    assert "tenant 'acme'" in decision.detail
    assert gate.check("a.test", device.chain_ders).allowed  # with it: fine


def test_an_expired_tenant_root_is_named_with_its_date(pki: dict[str, CA]) -> None:
    device = pki["old"].issue("d", not_before=ago(300))
    gate = gate_for(Tenant("old", ("o.test",), (pki["old"].cert,), ca_expired="warn"))
    decision = gate.check("o.test", [device.der])
    assert decision.reason == "untrusted_chain"
    expired = pki["old"].cert.not_valid_after_utc
    assert decision.detail.startswith(
        f"the tenant's root CN=Old Root,O=certgate dev expired on {expired:%Y-%m-%d}"
    )


def test_an_expired_tenant_intermediate_is_named(pki: dict[str, CA]) -> None:
    issuing = pki["root"].intermediate("Lapsed Issuing", not_before=ago(300), not_after=ago(1))
    device = issuing.issue("d", not_before=ago(200))
    tenant = Tenant("acme", ("a.test",), (pki["root"].cert,), (issuing.cert,), ca_expired="warn")
    decision = gate_for(tenant).check("a.test", [device.der])
    assert decision.reason == "untrusted_chain"
    assert decision.detail.startswith("the tenant's intermediate CN=Lapsed Issuing")
    assert "expired on" in decision.detail


def test_a_chain_from_another_pki_names_its_root_as_missing(pki: dict[str, CA]) -> None:
    """A client-sent self-signed root is dropped before path building, so
    the break is shown where the verifier saw it: the foreign root missing."""
    issuing = pki["foreign"].intermediate("Foreign Issuing")
    device = issuing.issue("intruder")
    tenant = Tenant("acme", ("a.test",), (pki["root"].cert,))
    decision = gate_for(tenant).check("a.test", [*device.chain_ders, pki["foreign"].der])
    assert decision.reason == "untrusted_chain"
    assert decision.detail.startswith("issuer CN=Foreign Root")
    assert "of CN=Foreign Issuing" in decision.detail


def test_a_signature_failure_keeps_the_verifiers_message(pki: dict[str, CA]) -> None:
    """A look-alike issuer (same name, other key): the key ids (Authority vs
    Subject Key Identifier) show the break; the verifier's message is kept
    after the explanation (review i9-rv3: before, the names alone showed no
    break and only "signature does not match" was said)."""
    impostor = CA.root("Acme Root")  # same subject as the tenant's root, other key
    device = impostor.issue("d")
    tenant = Tenant("acme", ("a.test",), (pki["root"].cert,))
    explanation = explain_untrusted(tenant, device.cert, [], NOW)
    assert explanation is not None
    assert "have another key" in explanation
    decision = gate_for(tenant).check("a.test", [device.der])
    assert decision.reason == "untrusted_chain"
    assert decision.detail.startswith("issuer CN=Acme Root")
    assert "(validation failed" in decision.detail


def test_the_walk_is_bounded(pki: dict[str, CA]) -> None:
    """Client-sent CAs issuing each other in a cycle never loop."""
    a = CA.root("Loop A")
    b = a.intermediate("Loop B")
    # B's issuer is A; A is self-signed but not the tenant's: the walk stops there.
    tenant = Tenant("acme", ("a.test",), (pki["root"].cert,))
    text = explain_untrusted(tenant, b.issue("d").cert, [b.cert, a.cert, b.cert], NOW, max_depth=3)
    assert text is not None
    assert text.startswith("the chain ends at CN=Loop A")


def test_the_explanation_is_logged_never_sent(
    pki: dict[str, CA], caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from certgate.asgi import CertGateMiddleware

    device = pki["issuing"].issue("sensor-2")
    gate = gate_for(Tenant("acme", ("a.test",), (pki["root"].cert,)))
    app = with_client_cert(CertGateMiddleware(Starlette(), gate), [device.cert_pem.decode()])
    with caplog.at_level(logging.INFO, logger="certgate"), TestClient(app) as client:
        response = client.get("/", headers={"Host": "a.test"})
    assert response.status_code == 403
    assert "Acme Issuing" not in response.text
    assert any("issuer CN=Acme Issuing" in r.getMessage() for r in caplog.records)


def test_check_explain_names_the_tenant_the_device_belongs_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env: DevEnv = make_dev_environment(tmp_path)
    code = main(
        [
            "check",
            str(env.path("globex-device.pem")),
            "--host",
            "pay.acme.test",
            "--config",
            str(env.config),
            "--explain",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "valid_for_tenants:   globex" in out
    assert "issuer CN=Globex Root CA" in out
